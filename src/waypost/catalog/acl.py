"""ACL records (policies, roles, tokens) and the in-memory table they live in.

ACL state is catalog state like any other: records in the store under `a/`
keys, written by plans (`aclwrites.py`) through `Catalog.write`, applied to
this table by `State.apply` whoever wrote them (this agent, a replay at
start-up, another agent on the same etcd cluster). So a cluster shares one
set of tokens, a token survives kill -9 like a registration, and the mirror
that carries services carries ACLs.

Keys (codec.py): `a/p/<id>` policies, `a/r/<id>` roles, `a/t/<accessor>` tokens, and
`a/bootstrap` (the record that `PUT /v1/acl/bootstrap` happened). Links
between records are stored as IDs only; names are looked up when a record is
shown, so renaming a policy needs no rewrite of the tokens that use it.

Secrets are looked up by their SHA-256 (`by_secret`), never by the secret
itself, and the caller compares the secret it found in constant time
(`hmac.compare_digest`): a dict keyed by secrets would compare them byte by
byte, leaking how much of a guess was right.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

import msgspec

from ..storage import Entry
from . import codec
from .codec import ACL_PREFIX, BOOTSTRAP_KEY, policy_key, role_key, token_key
from .model import AclRecord, Bootstrap, Policy, Role, Token
from .watch import Topic

__all__ = ["ACL_PREFIX", "BOOTSTRAP_KEY", "AclTable"]

ACL: Final[Topic] = ("acl", "")  # the topic every ACL change moves (blocking ACL lists)

MANAGEMENT_POLICY_ID: Final = "00000000-0000-0000-0000-000000000001"
MANAGEMENT_POLICY_NAME: Final = "global-management"
ANONYMOUS_ACCESSOR: Final = "00000000-0000-0000-0000-000000000002"
ANONYMOUS_SECRET: Final = "anonymous"
MANAGEMENT_RULES: Final = """\
acl = "write"
operator = "write"
keyring = "write"
mesh = "write"
peering = "write"
agent_prefix "" { policy = "write" }
event_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
node_prefix "" { policy = "write" }
query_prefix "" { policy = "write" }
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" { policy = "write" }
"""


def secret_hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def record_hash(record: Policy | Role | Token) -> str:
    """Consul's `Hash`: changes whenever the record's content does."""
    plain = msgspec.structs.replace(record, create_index=0, modify_index=0)
    return base64.b64encode(hashlib.sha256(msgspec.msgpack.encode(plain)).digest()).decode()


class AclTable:
    """Every ACL record, with the indexes the API and the resolver need."""

    def __init__(self) -> None:
        self.policies: dict[str, Policy] = {}
        self.policy_names: dict[str, str] = {}  # name -> ID
        self.roles: dict[str, Role] = {}
        self.role_names: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self.by_secret: dict[bytes, str] = {}  # sha256(secret) -> accessor ID
        self.bootstrap: Bootstrap | None = None
        # Moves on every applied ACL change: resolvers drop what they cached.
        self.generation = 0

    def apply(self, index: int, entry: Entry, touched: set[Topic]) -> None:
        """Apply one `a/` entry (raises msgspec.DecodeError for a corrupt value)."""
        self.generation += 1
        touched.add(ACL)
        self._drop(entry.key)
        if entry.value is None:
            return
        record = codec.decode_acl(entry.key, entry.value)
        record = msgspec.structs.replace(
            record,
            create_index=entry.create_index or index,
            modify_index=entry.modify_index or index,
        )
        self._insert(record)

    def _insert(self, record: AclRecord) -> None:
        if isinstance(record, Policy):
            self.policies[record.id] = record
            self.policy_names[record.name] = record.id
        elif isinstance(record, Role):
            self.roles[record.id] = record
            self.role_names[record.name] = record.id
        elif isinstance(record, Token):
            self.tokens[record.accessor_id] = record
            self.by_secret[secret_hash(record.secret_id)] = record.accessor_id
        else:
            self.bootstrap = record

    def _drop(self, key: str) -> None:
        old = self.lookup(key)
        if isinstance(old, Policy):
            del self.policies[old.id]
            self.policy_names.pop(old.name, None)
        elif isinstance(old, Role):
            del self.roles[old.id]
            self.role_names.pop(old.name, None)
        elif isinstance(old, Token):
            del self.tokens[old.accessor_id]
            self.by_secret.pop(secret_hash(old.secret_id), None)
        elif old is not None:
            self.bootstrap = None

    def lookup(self, key: str) -> AclRecord | None:
        if key == BOOTSTRAP_KEY:
            return self.bootstrap
        kind, ident = key[2], key[4:].replace("%2F", "/").replace("%25", "%")
        if kind == "p":
            return self.policies.get(ident)
        if kind == "r":
            return self.roles.get(ident)
        return self.tokens.get(ident) if kind == "t" else None

    def storage_keys(self) -> list[str]:
        keys = [policy_key(i) for i in self.policies]
        keys += [role_key(i) for i in self.roles]
        keys += [token_key(i) for i in self.tokens]
        return keys + ([BOOTSTRAP_KEY] if self.bootstrap is not None else [])

    def token_by_secret(self, secret: str) -> Token | None:
        """The token with this secret, found by its hash; the caller compares
        the secrets in constant time before trusting it."""
        accessor = self.by_secret.get(secret_hash(secret))
        return self.tokens.get(accessor) if accessor is not None else None

    def statistics(self) -> dict[str, float]:
        return {
            "acl_policies": len(self.policies),
            "acl_roles": len(self.roles),
            "acl_tokens": len(self.tokens),
        }
