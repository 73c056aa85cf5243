"""kubeconfig `exec` credential plugins, as client-go runs them (EKS, GKE, AKS logins).

    users:
    - name: eks
      user:
        exec:
          apiVersion: client.authentication.k8s.io/v1   # or v1beta1
          command: aws                                  # PATH, or relative to the kubeconfig
          args: [eks, get-token, --cluster-name, prod]
          env: [{name: AWS_PROFILE, value: prod}]
          interactiveMode: Never                        # required in v1
          provideClusterInfo: true
          installHint: "install the AWS CLI"

The plugin runs with this process's environment plus `env` and
`KUBERNETES_EXEC_INFO`, an ExecCredential whose `spec` says `interactive: false`
and, with `provideClusterInfo`, carries the cluster (server, CA data as
base64, `tls-server-name`, `insecure-skip-tls-verify`, `proxy-url`,
`disable-compression`, and the cluster's `client.authentication.k8s.io/exec`
extension as `config`). It prints an ExecCredential of the same apiVersion
whose `status` holds a `token`, or `clientCertificateData` and
`clientKeyData` (PEM), or both, and optionally `expirationTimestamp`.

What is returned is cached until `expirationTimestamp` passes (client-go:
no expiry means until a 401), and the plugin runs again then, or at once
after a 401 (`invalidate()`). Concurrent callers share one run (a lock).

Never interactive: waypost's client and `k8s-sync` run as services, where a
plugin prompting on a terminal would hang discovery; the plugin's stdin is
/dev/null, so `interactiveMode: Always` is refused when the kubeconfig is
read, and `IfAvailable` runs as `Never` does. The plugin's stderr is kept for
the error message. A plugin that does not finish within `timeout` (60 s) is
killed: client-go waits forever, but a hung login must not hang a watch.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._exceptions import ConfigError, ExecPluginError

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
INTERACTIVE_MODES = ("Never", "IfAvailable", "Always")
CLUSTER_EXTENSION = "client.authentication.k8s.io/exec"
TIMEOUT = 60.0


@dataclass(frozen=True)
class Credential:
    """What one run of the plugin returned."""

    token: str | None
    cert_pem: bytes | None
    key_pem: bytes | None
    expires: float | None  # Unix time; None: until a 401


@dataclass(frozen=True)
class ExecSpec:
    """The `exec` section of a kubeconfig user, checked."""

    api_version: str
    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    install_hint: str
    provide_cluster_info: bool
    interactive_mode: str
    where: str  # "kubeconfig PATH user NAME", for messages


def parse_spec(raw: Any, relative: Callable[[str], str], where: str) -> ExecSpec:
    """Check a user's `exec` section.

    Args:
        raw: The section, as read from the kubeconfig.
        relative: A path as the kubeconfig that names it means it (config.py's
            rule for every path in a kubeconfig).
        where: "kubeconfig PATH user NAME", for messages.

    Raises:
        ConfigError: A field is missing or invalid (what client-go refuses too).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: exec must be a mapping")
    version = str(raw.get("apiVersion") or "")
    if version not in API_VERSIONS:
        known = " or ".join(API_VERSIONS)
        raise ConfigError(f"{where}: exec apiVersion {version!r} is not supported (use {known})")
    command = str(raw.get("command") or "")
    if not command:
        raise ConfigError(f"{where}: exec has no command")
    if os.sep in command:  # as clientcmd: a path is the kubeconfig's, a bare name is on PATH
        command = relative(command)
    return ExecSpec(
        api_version=version,
        command=command,
        args=tuple(str(a) for a in raw.get("args") or ()),
        env=_env(raw.get("env") or [], where),
        install_hint=str(raw.get("installHint") or ""),
        provide_cluster_info=bool(raw.get("provideClusterInfo", False)),
        interactive_mode=_interactive_mode(raw, version, where),
        where=where,
    )


def _interactive_mode(raw: dict[str, Any], version: str, where: str) -> str:
    mode = raw.get("interactiveMode")
    if mode is None:
        if version.endswith("/v1"):
            raise ConfigError(f"{where}: exec interactiveMode must be set for {version}")
        return "IfAvailable"  # v1beta1's default
    if mode not in INTERACTIVE_MODES:
        raise ConfigError(
            f"{where}: exec interactiveMode {mode!r} is not one of {', '.join(INTERACTIVE_MODES)}"
        )
    if mode == "Always":
        raise ConfigError(
            f"{where}: exec interactiveMode Always needs a terminal, and waypost runs plugins "
            "without one (a service must not wait for a prompt); use a plugin mode that "
            "needs no input (Never or IfAvailable)"
        )
    return str(mode)


def _env(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: exec env must be a list of {{name, value}}")
    found = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry.get("name") or "value" not in entry:
            raise ConfigError(f"{where}: exec env entry {entry!r} needs a name and a value")
        found.append((str(entry["name"]), str(entry["value"])))
    return tuple(found)


def cluster_info(cluster: Mapping[str, Any], ca_pem: bytes | None) -> dict[str, Any]:
    """The `spec.cluster` of KUBERNETES_EXEC_INFO, from a kubeconfig cluster."""
    info: dict[str, Any] = {"server": str(cluster.get("server") or "")}
    for key in ("tls-server-name", "proxy-url"):
        if cluster.get(key):
            info[key] = str(cluster[key])
    for key in ("insecure-skip-tls-verify", "disable-compression"):
        if cluster.get(key):
            info[key] = True
    if ca_pem:
        info["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    for ext in cluster.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == CLUSTER_EXTENSION:
            info["config"] = ext.get("extension")
    return info


class ExecPlugin:
    """Runs one plugin and caches its credential until it expires or is refused.

    Args:
        spec: The checked `exec` section.
        cluster: `spec.cluster` to pass when `provideClusterInfo` (else ignored).
        timeout: Seconds a run may take.
        now: Wall-clock time (expiry timestamps are wall-clock).
    """

    def __init__(
        self,
        spec: ExecSpec,
        cluster: dict[str, Any] | None = None,
        *,
        timeout: float = TIMEOUT,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.cluster = cluster if spec.provide_cluster_info else None
        self.timeout = timeout
        self._now = now
        self._lock = threading.Lock()
        self._cached: Credential | None = None
        self.runs = 0

    def due(self) -> bool:
        """True if the next `get()` runs the plugin (nothing cached, or expired)."""
        cached = self._cached
        return cached is None or (cached.expires is not None and self._now() >= cached.expires)

    def get(self) -> Credential:
        """The current credential, running the plugin if it is due.

        Raises:
            ExecPluginError: The plugin is missing, failed, or printed garbage.
        """
        with self._lock:
            if self.due():
                self._cached = self._run()
            assert self._cached is not None
            return self._cached

    def invalidate(self) -> None:
        """The API server refused the credential (401): run the plugin next time."""
        with self._lock:
            self._cached = None

    def _run(self) -> Credential:
        self.runs += 1
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        info = {"apiVersion": self.spec.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **dict(self.spec.env), "KUBERNETES_EXEC_INFO": json.dumps(info)}
        try:
            done = subprocess.run(
                [self.spec.command, *self.spec.args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            hint = f" ({self.spec.install_hint.strip()})" if self.spec.install_hint else ""
            raise self._error(f"command {self.spec.command!r} not found{hint}") from exc
        except PermissionError as exc:
            raise self._error(f"command {self.spec.command!r} is not executable") from exc
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"{self.spec.command} did not finish in {self.timeout:g}s") from exc
        if done.returncode != 0:
            stderr = done.stderr.decode(errors="replace").strip()[-500:]
            raise self._error(f"{self.spec.command} exited with {done.returncode}: {stderr}")
        return self._parse(done.stdout)

    def _parse(self, stdout: bytes) -> Credential:
        try:
            doc = json.loads(stdout)
        except ValueError as exc:
            shown = stdout[:120].decode(errors="replace")
            raise self._error(f"printed something that is not JSON: {shown!r}") from exc
        if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
            raise self._error("printed JSON that is not an ExecCredential")
        if doc.get("apiVersion") != self.spec.api_version:
            raise self._error(
                f"answered apiVersion {doc.get('apiVersion')!r}, asked {self.spec.api_version!r}"
            )
        status = doc.get("status")
        if not isinstance(status, dict):
            raise self._error("printed an ExecCredential without status")
        return Credential(
            token=str(status["token"]) if status.get("token") else None,
            **self._cert(status),
            expires=self._expiry(status.get("expirationTimestamp")),
        )

    def _cert(self, status: dict[str, Any]) -> dict[str, bytes | None]:
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key):
            raise self._error("returned clientCertificateData without clientKeyData, or back")
        if not cert and not status.get("token"):
            raise self._error("returned neither a token nor a client certificate")
        return {
            "cert_pem": str(cert).encode() if cert else None,
            "key_pem": str(key).encode() if key else None,
        }

    def _expiry(self, raw: Any) -> float | None:
        if not raw:
            return None
        try:
            when = datetime.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError as exc:
            raise self._error(f"expirationTimestamp {raw!r} is not an RFC 3339 time") from exc
        if when.tzinfo is None:
            raise self._error(f"expirationTimestamp {raw!r} has no time zone")
        return when.timestamp()

    def _error(self, what: str) -> ExecPluginError:
        return ExecPluginError(f"{self.spec.where}: exec credential plugin {what}")
