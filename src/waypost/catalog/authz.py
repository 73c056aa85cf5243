"""From a token's secret to what it may do: the resolver and the authorizer.

An `Authorizer` answers "may this token <read|write> <resource> <name>?" as
Consul does: the exact rule for the name, else the longest prefix rule that
matches it, decides; with no rule, the agent's default policy does (allow or
deny). A management token (the `global-management` policy) may do anything,
including on resources added after this was written.

The `Resolver` turns a secret into an authorizer: found by the secret's hash,
compared in constant time, refused when unknown or expired (AclNotFound, a
403 as in Consul). Authorizers are cached per secret until any ACL record
changes (the table's generation moves), so the hot path costs two dict
lookups; decisions are cached per authorizer too, in a bounded dict.
The DNS interface resolves the agent's default token the same way.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable, Iterable
from typing import Final

from .._exceptions import AclNotFound, PermissionDenied
from . import aclrules
from .acl import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID, AclTable
from .aclrules import DENY, LEVEL_NAMES, UNNAMED, WRITE, Rules
from .model import NodeIdentity, ServiceIdentity, Token

Perm = tuple[str, str, int]  # (resource, name, level): ("service", "web", WRITE)
_DECISIONS_LIMIT: Final = 4096  # names come from callers: never let them grow this without end


class Authorizer:
    __slots__ = (
        "_decisions",
        "_prefixes",
        "accessor",
        "default_allow",
        "generation",
        "key",
        "manage",
        "rules",
    )

    def __init__(
        self, accessor: str, rules: Rules, default_allow: bool, manage: bool = False
    ) -> None:
        self.accessor = accessor
        self.rules = rules
        self.default_allow = default_allow
        self.manage = manage
        self.key = accessor  # what answer caches key a filtered answer by
        # The ACL generation it was built at (Resolver.resolve): what an answer
        # it filtered is valid for. A request admitted before an ACL change
        # (a parked blocking query) still holds the old one when it is answered.
        self.generation = -1
        # Prefix rules longest first: the first that matches is the longest.
        self._prefixes = {
            resource: sorted(table.items(), key=lambda item: -len(item[0]))
            for resource, table in rules.prefix.items()
        }
        self._decisions: dict[tuple[str, str, int], bool] = {}

    def allowed(self, resource: str, name: str, level: int) -> bool:
        if self.manage:
            return True
        key = (resource, name, level)
        decision = self._decisions.get(key)
        if decision is None:
            decision = self._decide(resource, name, level)
            if len(self._decisions) >= _DECISIONS_LIMIT:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def _decide(self, resource: str, name: str, level: int) -> bool:
        rule = self._rule(resource, name)
        if rule is None:
            return self.default_allow
        return rule == WRITE or (rule != DENY and level <= rule)

    def _rule(self, resource: str, name: str) -> int | None:
        if resource in UNNAMED:
            return self.rules.unnamed.get(resource)
        exact = self.rules.exact.get(resource)
        if exact is not None and name in exact:
            return exact[name]
        for prefix, level in self._prefixes.get(resource, ()):
            if name.startswith(prefix):
                return level
        return None

    def require(self, resource: str, name: str, level: int) -> None:
        """Raise PermissionDenied naming the permission, as Consul words it."""
        if not self.allowed(resource, name, level):
            raise PermissionDenied(denied_message(self.accessor, resource, name, level))

    def require_all(self, perms: Iterable[Perm]) -> None:
        """`require` each, in order: the first missing one is named."""
        for resource, name, level in perms:
            self.require(resource, name, level)


def denied_message(accessor: str, resource: str, name: str, level: int) -> str:
    permission = f"{'intentions' if resource == 'intention' else resource}:{LEVEL_NAMES[level]}"
    on = "" if resource in UNNAMED else f' on "{name}"'
    return (
        f"Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}'{on}"
    )


class Resolver:
    """Secrets to authorizers, for one agent (its datacenter and default policy).

    Args:
        table: The ACL records (the catalog state's `acl` table).
        datacenter: Policies and identities limited to other datacenters do not apply.
        default_allow: What a request no rule matches gets.
        clock: Unix time, for token expiry.
    """

    def __init__(
        self,
        table: AclTable,
        datacenter: str,
        default_allow: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.datacenter = datacenter
        self.default_allow = default_allow
        self.clock = clock
        # Keyed by the secret itself, as Consul's token cache is: only secrets of
        # tokens that exist get in (an unknown one raises before), so it holds at
        # most one entry per token; a hit costs no SHA-256. The lookup that lets
        # one in goes by the secret's hash and compares in constant time (_find).
        self._cache: dict[str, tuple[Authorizer, float]] = {}
        self._generation = -1
        self._parsed: dict[tuple[str, int], Rules] = {}

    def resolve(self, secret: str) -> Authorizer:
        """The authorizer of the token with this secret ("" is the anonymous token).

        Raises:
            AclNotFound: no token has this secret, or it has expired.
        """
        if self._generation != self.table.generation:
            self._cache.clear()
            self._generation = self.table.generation
        hit = self._cache.get(secret)
        if hit is None:
            token = self._find(secret)
            hit = (self.authorizer(token), token.expiration_time)
            hit[0].generation = self._generation
            self._cache[secret] = hit
        if hit[1] and self.clock() >= hit[1]:
            raise AclNotFound()
        return hit[0]

    def _find(self, secret: str) -> Token:
        if not secret:
            token = self.table.tokens.get(ANONYMOUS_ACCESSOR)
            if token is None:  # not written yet (a fresh store): deny by default policy only
                return Token(accessor_id=ANONYMOUS_ACCESSOR, secret_id="anonymous")
            return token
        token = self.table.token_by_secret(secret)
        if token is None or not hmac.compare_digest(
            token.secret_id.encode("utf-8", "surrogatepass"),
            secret.encode("utf-8", "surrogatepass"),
        ):
            raise AclNotFound()
        return token

    def authorizer(self, token: Token) -> Authorizer:
        """What a token may do: its policies, its roles' policies, and the
        rules of its service and node identities, merged."""
        rules = Rules()
        manage = False
        policy_ids = list(token.policies)
        services = list(token.service_identities)
        nodes = list(token.node_identities)
        for role_id in token.roles:
            role = self.table.roles.get(role_id)
            if role is not None:
                policy_ids += role.policies
                services += role.service_identities
                nodes += role.node_identities
        for policy_id in policy_ids:
            manage = self._add_policy(rules, policy_id) or manage
        for service in services:
            self._add_service_identity(rules, service)
        for node in nodes:
            self._add_node_identity(rules, node)
        return Authorizer(token.accessor_id, rules, self.default_allow, manage)

    def _add_policy(self, rules: Rules, policy_id: str) -> bool:
        """Merge one policy; True when it is the management policy."""
        policy = self.table.policies.get(policy_id)
        if policy is None or (policy.datacenters and self.datacenter not in policy.datacenters):
            return False
        if policy.id == MANAGEMENT_POLICY_ID:
            return True
        key = (policy.id, policy.modify_index)
        parsed = self._parsed.get(key)
        if parsed is None:
            try:
                parsed = aclrules.parse(policy.rules)
            except Exception:  # validated when written; a stored one that fails grants nothing
                parsed = Rules()
            if len(self._parsed) >= _DECISIONS_LIMIT:
                self._parsed.clear()
            self._parsed[key] = parsed
        rules.merge(parsed)
        return False

    def _add_service_identity(self, rules: Rules, identity: ServiceIdentity) -> None:
        if identity.datacenters and self.datacenter not in identity.datacenters:
            return
        name = identity.service_name
        for service in (name, f"{name}-sidecar-proxy"):
            rules.add("service", service, WRITE, prefix=False)
            rules.add(aclrules.INTENTION, service, aclrules.READ, prefix=False)
        rules.add("service", "", aclrules.READ, prefix=True)
        rules.add("node", "", aclrules.READ, prefix=True)

    def _add_node_identity(self, rules: Rules, identity: NodeIdentity) -> None:
        if identity.datacenter != self.datacenter:
            return
        rules.add("node", identity.node_name, WRITE, prefix=False)
        rules.add("service", "", aclrules.READ, prefix=True)
