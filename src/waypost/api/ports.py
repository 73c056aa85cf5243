"""What the HTTP API asks of the rest of the agent, as small protocols.

The API reads the catalog itself; everything else it needs from the agent
comes through one of these, so nothing in `api/` imports the agent that wires
it. `agent/runtime.py` hands in the concrete objects:

    LocalAgentOps  the writes this agent owns          agent/local.py LocalAgent
    AgentInfo      /v1/agent/self, /members, /status   agent/runtime.py Agent
    StoreStatus    leader and contact headers, ?consistent reads   the Storage
    LeafSigner     the mesh's leaf certificates        mesh/leaves.py Leaves

A test (or another runtime) can pass anything with these methods.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

from ..catalog.definitions import CheckRegistration, ServiceRegistration
from ..storage import StoreHealth


class LocalAgentOps(Protocol):
    """The services and checks this agent owns: what `/v1/agent/...` writes call."""

    @property
    def name(self) -> str:
        """This agent's node name."""
        ...

    async def register_service(self, reg: ServiceRegistration, replace_checks: bool) -> None: ...

    async def deregister_service(self, service_id: str) -> None: ...

    async def register_check(self, reg: CheckRegistration) -> None: ...

    async def deregister_check(self, check_id: str) -> None: ...

    async def heartbeat(self, check_id: str, status: str, output: str) -> None: ...

    async def service_maintenance(self, service_id: str, enable: bool, reason: str) -> None: ...

    async def node_maintenance(self, enable: bool, reason: str) -> None: ...


class AgentInfo(Protocol):
    """What the agent reports about itself and its peers."""

    @property
    def datacenter(self) -> str:
        """The datacenter this agent serves."""
        ...

    def describe_self(self) -> dict[str, Any]: ...

    def members(self, wan: bool = False) -> list[dict[str, Any]]: ...

    def leader_address(self) -> str: ...

    async def leave(self) -> None:
        """Shut the agent down gracefully, after the answer is sent."""

    async def reload(self) -> None: ...

    async def set_acl_token(self, kind: str, secret: str) -> None:
        """`PUT /v1/agent/token/<kind>`: "default" or "agent", until restart.

        Raises:
            AclDisabled: ACLs are off.
        """


class StoreStatus(Protocol):
    """The store under the catalog, as far as reads need it."""

    def health(self) -> StoreHealth: ...

    async def confirm(self) -> None: ...


class LeafCert(Protocol):
    """A signed leaf certificate, as `/v1/agent/connect/ca/leaf/<service>` shows it."""

    @property
    def service(self) -> str: ...
    @property
    def service_uri(self) -> str: ...
    @property
    def serial_number(self) -> str: ...
    @property
    def cert_pem(self) -> str: ...
    @property
    def private_key_pem(self) -> str: ...
    @property
    def valid_after(self) -> dt.datetime: ...
    @property
    def valid_before(self) -> dt.datetime: ...


class LeafSigner(Protocol):
    """The mesh's certificates: the trust domain, and a leaf per service with its index."""

    @property
    def trust_domain(self) -> str: ...

    def leaf(self, service: str) -> tuple[LeafCert, int]: ...

    async def wait(self, service: str, min_index: int, timeout: float) -> tuple[LeafCert, int]: ...
