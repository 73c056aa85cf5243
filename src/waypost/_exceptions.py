"""The one exception hierarchy of waypost.

    WaypostError
    ├── ConfigError             a flag or config file that cannot be used
    ├── ValidationError         a request that is malformed or invalid (HTTP 400)
    ├── NotFoundError           an unknown service, check or node ID (HTTP 404)
    ├── RefusedError            a well-formed request the state refuses (HTTP 500, as
    │                           Consul answers "invalid session", "No path to datacenter")
    ├── AccessDenied            ACLs refused the request (HTTP 403)
    │   ├── PermissionDenied    the token lacks a permission the request needs
    │   └── AclNotFound         the token sent is unknown or expired
    ├── AclDisabled             an ACL endpoint on an agent without ACLs (HTTP 401)
    ├── TooManyConnections      a client holds too many connections (HTTP 429)
    ├── StorageError            the store could not make a write durable (HTTP 500)
    │   ├── Conflict            a write's conditions no longer held; nothing was written
    │   └── StoreUnavailable    the store cannot be reached at all (HTTP 503)
    │       ├── StoreBusy       too many writes are queued; this one was not queued
    │       └── OutcomeUnknown  the write was sent but its outcome is unknown
    ├── KubernetesError         the Kubernetes API refused a request or cannot be reached
    │   ├── ResourceGone        410: a resourceVersion or continue token is too old (relist)
    │   └── ExecPluginError     a kubeconfig exec credential plugin failed or printed garbage
    ├── AgentWriteError         k8s-sync: the agent refused a write or cannot be reached
    └── ClientError             raised by the client library
        ├── RegistryUnavailable the registry cannot be reached and nothing is cached
        ├── NoHealthyInstances  a service has no instance a request may go to
        ├── CircuitOpen         every candidate instance has its breaker open
        ├── RetryBudgetExhausted a retry was wanted but the budget is spent
        └── RegistrationError   the agent refused or lost a registration

Every message names the thing that is wrong and, where it helps, what to do.
"""

from __future__ import annotations


class WaypostError(Exception):
    """Base class of every error waypost raises on purpose."""


class ConfigError(WaypostError):
    """A command-line flag or configuration file value that cannot be used."""


class ValidationError(WaypostError):
    """A request that is malformed or asks for something invalid."""


class NotFoundError(WaypostError):
    """An ID that names nothing the catalog holds."""


class RefusedError(WaypostError):
    """A well-formed request that the state refuses, where Consul's servers
    answer 500 with the reason (clients such as Patroni match on its text)."""


class AccessDenied(WaypostError):
    """ACLs refused the request; the message says what was missing."""


class PermissionDenied(AccessDenied):
    """The request's token lacks a permission (Consul's "Permission denied: ...")."""


class AclNotFound(AccessDenied):
    """The token sent is unknown to the ACL system, or has expired."""

    def __init__(self, message: str = "ACL not found") -> None:
        super().__init__(message)


class AclDisabled(WaypostError):
    """An ACL endpoint was called on an agent that runs without ACLs."""

    def __init__(self, message: str = "ACL support disabled") -> None:
        super().__init__(message)


class TooManyConnections(WaypostError):
    """A client already holds as many connections as one client may."""


class StorageError(WaypostError):
    """The storage backend failed; the write was not applied."""


class Conflict(StorageError):
    """A commit's conditions did not hold: a key it read has changed since.

    Nothing of the commit was written. By the time it is raised the backend
    has applied the change that conflicted, so the caller can re-read the
    state and try again (the catalog's write loop does).
    """


class StoreUnavailable(StorageError):
    """The storage backend cannot be reached; writes are refused, reads go on stale."""


class StoreBusy(StoreUnavailable):
    """Too many commits are waiting; this one was refused before it was queued."""


class OutcomeUnknown(StoreUnavailable):
    """The write reached the store but its answer was lost: it may or may not
    have been applied. It is never retried blindly; the caller must re-read."""


class KubernetesError(WaypostError):
    """The Kubernetes API answered with an error, or could not be reached.

    `code` is the HTTP status (0 when no answer came), `reason` the Status
    object's reason (`Forbidden`, `TooManyRequests`...), `retry_after` the
    server's Retry-After in seconds, if it sent one.
    """

    def __init__(
        self, message: str, *, code: int = 0, reason: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


class ResourceGone(KubernetesError):
    """410 Gone: the watch's resourceVersion (or a list's continue token) is
    older than the history the API server keeps; the caller must list again."""


class ExecPluginError(KubernetesError):
    """A kubeconfig `exec` credential plugin (aws, gke-gcloud-auth-plugin,
    kubelogin...) is missing, failed, or printed something that is not an
    ExecCredential. Raised when a request needs credentials, so the reflector
    backs off and runs the plugin again, as for an API server that is down."""


class AgentWriteError(WaypostError):
    """`waypost k8s-sync` could not write to (or read from) the agent's HTTP API.

    `code` is the HTTP status (0: no answer); a 4xx will not succeed as it is.
    """

    def __init__(self, message: str, *, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


class ClientError(WaypostError):
    """Base class of the client library's errors."""

    def __init__(self, message: str, *, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class RegistryUnavailable(ClientError):
    """The registry cannot be reached and no cached answer exists."""


class NoHealthyInstances(ClientError):
    """A service has no instance that a request may be sent to."""


class CircuitOpen(ClientError):
    """Every candidate instance of a service has its circuit breaker open."""


class RetryBudgetExhausted(ClientError):
    """A retry was wanted but would exceed the retry budget."""


class RegistrationError(ClientError):
    """The agent refused a registration, or lost it and refused it again."""
