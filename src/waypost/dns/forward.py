"""Forwarding names outside our domains to the configured recursors.

Only with `--recursor`: without one the agent answers REFUSED and is never an
open resolver. Forwarding is bounded twice: each recursor gets `timeout`
seconds and the whole attempt `deadline` seconds, and at most `max_inflight`
forwards run at once (beyond that: REFUSED at once, so a flood of outside
names cannot pile up tasks). The first recursor that answers wins; a
truncated UDP answer is retried over TCP when the client came over TCP.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message

from .._address import split_address
from .._exceptions import ConfigError
from . import wire

log = logging.getLogger("waypost.dns")

TIMEOUT: Final = 2.0
DEADLINE: Final = 4.0
MAX_INFLIGHT: Final = 256


class Forwarder:
    def __init__(
        self, recursors: list[str], timeout: float = TIMEOUT, deadline: float = DEADLINE
    ) -> None:
        self.recursors = [_parse_recursor(r) for r in recursors]
        self.timeout = timeout
        self.deadline = deadline
        self.inflight = 0
        self.forwarded = 0
        self.failed = 0

    def __bool__(self) -> bool:
        return bool(self.recursors)

    def busy(self) -> bool:
        return self.inflight >= MAX_INFLIGHT

    async def forward(self, data: bytes, tcp: bool, limit: int) -> bytes:
        """The recursors' answer to `data`, with its ID; SERVFAIL if none answers in time."""
        self.inflight += 1
        try:
            return await asyncio.wait_for(self._ask_all(data, tcp, limit), self.deadline)
        except (TimeoutError, dns.exception.DNSException, OSError, ValueError) as exc:
            log.debug("recursors failed: %s", exc)
            self.failed += 1
            return wire.error_response(data, wire.SERVFAIL, _question_of(data))
        finally:
            self.inflight -= 1

    async def _ask_all(self, data: bytes, tcp: bool, limit: int) -> bytes:
        query = dns.message.from_wire(data)
        last: Exception = TimeoutError("no recursor")
        for host, port in self.recursors:
            try:
                response = await self._ask(query, host, port, tcp)
            except (TimeoutError, dns.exception.DNSException, OSError) as exc:
                last = exc
                continue
            self.forwarded += 1
            return _fit(response, query.id, limit)
        raise last

    async def _ask(
        self, query: dns.message.Message, host: str, port: int, tcp: bool
    ) -> dns.message.Message:
        response = await dns.asyncquery.udp(query, host, timeout=self.timeout, port=port)
        if tcp and response.flags & dns.flags.TC:
            response = await dns.asyncquery.tcp(query, host, timeout=self.timeout, port=port)
        return response


def _fit(response: dns.message.Message, qid: int, limit: int) -> bytes:
    """Encode the recursor's answer for our client; too big for the client's UDP size: TC."""
    response.id = qid
    data: bytes = response.to_wire()
    if len(data) <= limit:
        return data
    response.flags |= dns.flags.TC
    response.answer, response.authority, response.additional = [], [], []
    truncated: bytes = response.to_wire()
    return truncated


def _question_of(data: bytes) -> wire.Query | None:
    try:
        return wire.parse_query(data)
    except wire.DnsError:
        return None


def _parse_recursor(text: str) -> tuple[str, int]:
    if ":" not in text.strip("[]") or text.endswith("]"):
        text = f"{text}:53"  # a bare address means port 53
    host, port = split_address(text, "--recursor")
    if wire.address_rdata(host) is None:
        raise ConfigError(f"--recursor {text!r}: expected an IP address, e.g. 127.0.0.1:53")
    return host, port
