"""The DNS source: SRV records (`_<svc>._tcp.service.<domain>`), else A records.

SRV answers carry ports and weights; Consul-style servers put the targets' A
records in the additional section, so one query usually suffices. Without
SRV (a plain DNS server, or a name with only A records) the source falls back
to `<svc>.service.<domain>` A/AAAA records and a default port.

Records are returned in RFC 2782 order: ascending priority, and inside one
priority a weighted random permutation (zero-weight records first, then each
next record chosen with probability proportional to its weight). NXDOMAIN and
NODATA mean "no healthy instance" (an empty list), not an error; timeouts and
SERVFAIL mean the registry is unreachable.

`dns://127.0.0.1:8600?domain=consul&port=80`: `port` is the default port for the
A fallback.

**Without a host** (`dns://`, `dns://?port=http`) the source resolves names the
way a pod does: the system resolver (`/etc/resolv.conf`: its nameservers,
`search` domains and `ndots`), names relative to the search list. So inside
Kubernetes `instances("payment-headless")` reads the A/AAAA records of
`payment-headless.<ns>.svc.cluster.local` (a headless Service: every ready pod
IP), and with `port=<name>` the SRV records `_<name>._tcp.payment-headless...`
(port and pod target). `port=<number>` is the port for A/AAAA answers. With
`domain=` as well, Consul-style names are used through the system resolver.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from ..._exceptions import RegistryUnavailable
from .._instance import Instance
from ._base import Answer

T = TypeVar("T")
_EMPTY = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)


def rfc2782_order(records: Sequence[tuple[int, int, T]], rng: random.Random) -> list[T]:
    """Order `(priority, weight, item)` records as RFC 2782 says a client should.

    Args:
        records: The records to order.
        rng: Random source for the weighted choice.
    """
    ordered: list[T] = []
    for priority in sorted({p for p, _, _ in records}):
        group = [(w, item) for p, w, item in records if p == priority]
        group.sort(key=lambda wi: wi[0] != 0)  # zero weights first
        while group:
            total = sum(w for w, _ in group)
            threshold = rng.uniform(0, total) if total else 0.0
            running = 0
            for k, (weight, item) in enumerate(group):
                running += weight
                if running >= threshold:
                    ordered.append(item)
                    del group[k]
                    break
    return ordered


class DnsSource:
    """Reads instances from DNS.

    Args:
        host: DNS server address; None: the system resolver, names as a pod
            resolves them (search domains), Kubernetes-style unless `domain` is given.
        port: DNS server port.
        domain: The registry's domain (`consul`).
        default_port: Port for instances found through A records only.
        timeout: Seconds for one lookup, retries included.
        rng: Random source for RFC 2782 ordering.
        port_name: Kubernetes naming: SRV `_<port_name>._tcp.<service>`.
        resolv_conf: The system resolver's configuration file.
    """

    blocking = False

    def __init__(
        self,
        host: str | None,
        port: int = 53,
        *,
        domain: str | None = None,
        default_port: int = 80,
        timeout: float = 2.0,
        rng: random.Random | None = None,
        port_name: str | None = None,
        resolv_conf: str = "/etc/resolv.conf",
    ) -> None:
        self.kubernetes_names = host is None and domain is None
        self.url = f"dns://{host}:{port}" if host is not None else "dns://"
        self.domain = (domain or "consul").strip(".")
        self.default_port = default_port
        self.port_name = port_name
        self.rng = rng or random.Random()
        if host is None:
            self._async = dns.asyncresolver.Resolver(filename=resolv_conf)
            self._sync = dns.resolver.Resolver(filename=resolv_conf)
        else:
            self._async = dns.asyncresolver.Resolver(configure=False)
            self._sync = dns.resolver.Resolver(configure=False)
        for resolver in (self._async, self._sync):
            if host is not None:
                resolver.nameservers = [host]
                resolver.port = port
            resolver.use_search_by_default = host is None
            resolver.lifetime = timeout
            resolver.timeout = timeout / 2

    @classmethod
    def from_url(cls, url: str) -> DnsSource:
        """Parse `dns://host:port?domain=consul&port=80`, or `dns://?port=NAME` (system resolver).

        Raises:
            ValueError: `port=` is not a number where a port name cannot be used.
        """
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        port = query.get("port", "80")
        named = not port.isdigit()
        if named and (parts.hostname or "domain" in query):
            raise ValueError(
                f"discovery URL {url!r}: port={port!r} must be a number (a port name "
                "selects Kubernetes SRV records, which need dns:// without a host or domain)"
            )
        return cls(
            parts.hostname,
            parts.port or 53,
            domain=query.get("domain"),
            default_port=80 if named else int(port),
            port_name=port if named else None,
        )

    def _names(self, service: str, tag: str | None) -> tuple[str, str]:
        if self.kubernetes_names:  # relative: the resolver's search list applies
            srv = f"_{self.port_name}._tcp.{service}" if self.port_name else ""
            return srv, service
        if tag:
            d = self.domain
            return f"_{service}._{tag}.service.{d}.", f"{tag}.{service}.service.{d}."
        return f"_{service}._tcp.service.{self.domain}.", f"{service}.service.{self.domain}."

    async def fetch(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        srv_name, a_name = self._names(service, tag)
        if srv_name:
            try:
                srv = await self._async.resolve(srv_name, "SRV")
                return Answer(0, await self._from_srv(service, srv))
            except _EMPTY:
                pass
            except dns.exception.DNSException as exc:
                raise self._unreachable(service, exc) from exc
        found = await self._lookup_a(service, a_name)
        if self.kubernetes_names:
            found += await self._lookup_a(service, a_name, "AAAA")
        return Answer(0, self._from_a(service, found))

    def fetch_sync(
        self, service: str, *, index: int = 0, wait: float = 0.0, tag: str | None = None
    ) -> Answer:
        srv_name, a_name = self._names(service, tag)
        if srv_name:
            try:
                srv = self._sync.resolve(srv_name, "SRV")
                return Answer(0, self._from_srv_sync(service, srv))
            except _EMPTY:
                pass
            except dns.exception.DNSException as exc:
                raise self._unreachable(service, exc) from exc
        found: list[Any] = []
        for rdtype in ("A", "AAAA") if self.kubernetes_names else ("A",):
            try:
                found += list(self._sync.resolve(a_name, rdtype))
            except _EMPTY:
                pass
            except dns.exception.DNSException as exc:
                raise self._unreachable(service, exc) from exc
        return Answer(0, self._from_a(service, found))

    async def _lookup_a(self, service: str, name: str, rdtype: str = "A") -> list[Any]:
        try:
            return list(await self._async.resolve(name, rdtype))
        except _EMPTY:
            return []
        except dns.exception.DNSException as exc:
            raise self._unreachable(service, exc) from exc

    async def _from_srv(self, service: str, answer: dns.resolver.Answer) -> tuple[Instance, ...]:
        glue = _glue(answer)
        records: list[tuple[int, int, tuple[str, int, int]]] = []
        for rr in answer:
            target = rr.target.to_text()
            addresses = glue.get(target.lower())
            if addresses is None:
                addresses = [r.address for r in await self._lookup_a(service, target)]
            records.extend((rr.priority, rr.weight, (a, rr.port, rr.weight)) for a in addresses)
        return self._instances(service, records)

    def _from_srv_sync(self, service: str, answer: dns.resolver.Answer) -> tuple[Instance, ...]:
        glue = _glue(answer)
        records: list[tuple[int, int, tuple[str, int, int]]] = []
        for rr in answer:
            target = rr.target.to_text()
            addresses = glue.get(target.lower())
            if addresses is None:
                try:
                    addresses = [r.address for r in self._sync.resolve(target, "A")]
                except _EMPTY:
                    addresses = []
            records.extend((rr.priority, rr.weight, (a, rr.port, rr.weight)) for a in addresses)
        return self._instances(service, records)

    def _instances(
        self, service: str, records: list[tuple[int, int, tuple[str, int, int]]]
    ) -> tuple[Instance, ...]:
        return tuple(
            Instance(f"{service}-{addr}-{port}", addr, port, weight=max(1, w), service=service)
            for addr, port, w in rfc2782_order(records, self.rng)
        )

    def _from_a(self, service: str, rdatas: list[Any]) -> tuple[Instance, ...]:
        port = self.default_port
        return tuple(
            Instance(f"{service}-{r.address}-{port}", r.address, port, service=service)
            for r in rdatas
        )

    def _unreachable(self, service: str, exc: Exception) -> RegistryUnavailable:
        return RegistryUnavailable(
            f"DNS server {self.url} failed for service {service!r} ({type(exc).__name__}: {exc})",
            service=service,
        )

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None


def _glue(answer: dns.resolver.Answer) -> dict[str, list[str]]:
    """Addresses by owner name from the additional section."""
    glue: dict[str, list[str]] = {}
    if answer.response is None:
        return glue
    for rrset in answer.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(rrset.name.to_text().lower(), []).extend(r.address for r in rrset)
    return glue
