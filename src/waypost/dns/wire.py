"""DNS wire format: the query parser of the hot path, record encoders, rcodes.

Queries are parsed here by hand, not by dnspython: a cache hit must cost a
few microseconds, and `dns.message.from_wire` alone costs ~20 µs (measured in
bench/dns/microbench.py). The parser reads only what answering needs: the
header, the one question (name lower-cased for the cache key) and the EDNS
OPT record; everything else in the packet is walked over and ignored.

Records are encoded once per cache fill, each into a self-contained chunk of
bytes: answers take their owner name as a pointer to the question (offset 12),
other names are written whole. A response is then a join of chunks, which is
what lets the cache shuffle and truncate without re-encoding anything.
dnspython is used where it is cheap and off the hot path: encoding names
(escaping, length checks) and forwarding to recursors.

All errors a query can meet are `DnsError`s; `rcode_of()` is the one place
that turns an exception into a response code.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Final, NamedTuple

import dns.exception
import dns.name

# Response codes (RFC 1035, 6891).
NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
NOTIMP: Final = 4
REFUSED: Final = 5
BADVERS: Final = 16

# Record types and classes.
A: Final = 1
NS: Final = 2
CNAME: Final = 5
SOA: Final = 6
PTR: Final = 12
TXT: Final = 16
AAAA: Final = 28
SRV: Final = 33
OPT: Final = 41
ANY: Final = 255
IN: Final = 1

# Header flag bits.
QR: Final = 0x8000
AA: Final = 0x0400
TC: Final = 0x0200
RD: Final = 0x0100
RA: Final = 0x0080

MAX_UDP: Final = 4096  # largest UDP answer we send, whatever the client offers
MIN_UDP: Final = 512
MAX_TCP: Final = 65535
OUR_EDNS_SIZE: Final = 4096
POINTER_TO_QUESTION: Final = b"\xc0\x0c"

_HEADER = struct.Struct("!HHHHHH")
_PLAIN = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")
_RR = struct.Struct("!HHIH")
_SRV = struct.Struct("!HHH")
_SOA = struct.Struct("!IIIII")


class DnsError(Exception):
    """A query that cannot be answered normally; `rcode_of` maps it to a code."""


class FormatError(DnsError):
    """The packet is not a well-formed query (FORMERR)."""


class NotImplementedOpcode(DnsError):
    """An opcode other than QUERY (NOTIMP)."""


class BadVersion(DnsError):
    """An EDNS version we do not speak (BADVERS)."""


class Refused(DnsError):
    """A name outside our domains with no recursor, or a class we do not serve."""


class Silence(DnsError):
    """A packet that deserves no answer at all (too short, or itself a response)."""


_RCODES: Final[dict[type[DnsError], int]] = {
    FormatError: FORMERR,
    NotImplementedOpcode: NOTIMP,
    BadVersion: BADVERS,
    Refused: REFUSED,
}


def rcode_of(exc: BaseException) -> int:
    """The response code for an error: known DNS errors by table, anything else SERVFAIL."""
    return _RCODES.get(type(exc), SERVFAIL) if isinstance(exc, DnsError) else SERVFAIL


class Edns(NamedTuple):
    payload: int
    version: int
    do: bool


class Query(NamedTuple):
    id: int
    flags: int
    qname: bytes  # wire form, lower-cased
    labels: tuple[bytes, ...]  # lower-cased
    qend: int  # offset just past the question
    qtype: int
    qclass: int
    edns: Edns | None

    def udp_limit(self) -> int:
        if self.edns is None:
            return MIN_UDP
        return max(MIN_UDP, min(self.edns.payload, MAX_UDP))


def parse_query(data: bytes) -> Query:
    """Parse a query packet.

    Raises:
        Silence: shorter than a header, or a response (QR set).
        NotImplementedOpcode, FormatError, BadVersion: as named.
    """
    if len(data) < 12:
        raise Silence
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise Silence
    if (flags >> 11) & 0xF:
        raise NotImplementedOpcode
    if qdcount != 1:
        raise FormatError
    labels, pos = _read_question_name(data, 12)
    if pos + 4 > len(data):
        raise FormatError
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    qend = pos + 4
    edns = _find_edns(data, qend, ancount + nscount, arcount)
    qname = data[12:pos].lower()
    return Query(qid, flags, qname, tuple(lab.lower() for lab in labels), qend, qtype, qclass, edns)


def _read_question_name(data: bytes, pos: int) -> tuple[list[bytes], int]:
    labels: list[bytes] = []
    start = pos
    while True:
        if pos >= len(data):
            raise FormatError
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:  # compression or extended label types: never in a question
            raise FormatError
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length
        if pos - start > 255:
            raise FormatError
    if pos > len(data):
        raise FormatError
    return labels, pos


def _skip_name(data: bytes, pos: int) -> int:
    for _ in range(128):
        if pos >= len(data):
            raise FormatError
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise FormatError
        pos += 1 + length
    raise FormatError


def _find_edns(data: bytes, pos: int, skip: int, arcount: int) -> Edns | None:
    """Walk the answer and authority records, then find the OPT among the additional ones."""
    edns: Edns | None = None
    for n in range(skip + arcount):
        owner = pos
        pos = _skip_name(data, pos)
        if pos + 10 > len(data):
            raise FormatError
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
        pos += 10 + rdlen
        if pos > len(data):
            raise FormatError
        if rtype == OPT and n >= skip:
            if edns is not None or data[owner] != 0:
                raise FormatError  # two OPTs, or an OPT not owned by the root
            edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000))
    if edns is not None and edns.version != 0:
        raise BadVersion
    return edns


# -- encoding ---------------------------------------------------------------


def name_wire(text: str) -> bytes:
    """An absolute name in uncompressed wire form. Raises ValueError if it cannot be one.

    Plain host names are encoded here (dnspython's from_text costs ~10 µs a name);
    anything needing escapes or IDNA goes to dnspython."""
    labels = text.rstrip(".").split(".")
    if _PLAIN.fullmatch(text) and all(0 < len(label) < 64 for label in labels) and len(text) < 254:
        return b"".join(bytes([len(label)]) + label.encode() for label in labels) + b"\x00"
    try:
        wire = dns.name.from_text(text).to_wire()
    except dns.exception.DNSException as exc:
        raise ValueError(f"not a DNS name: {text!r}") from exc
    if wire is None:  # only with a compression table, which we do not pass
        raise ValueError(f"not a DNS name: {text!r}")
    return wire


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR.pack(rtype, IN, ttl, len(rdata)) + rdata


def address_rdata(address: str) -> tuple[int, bytes] | None:
    """(A, 4 bytes) or (AAAA, 16 bytes) for an IP address; None for a host name."""
    try:
        return A, socket.inet_pton(socket.AF_INET, address)
    except OSError:
        pass
    try:
        return AAAA, socket.inet_pton(socket.AF_INET6, address.strip("[]"))
    except OSError:
        return None


def srv_rdata(priority: int, weight: int, port: int, target: bytes) -> bytes:
    return _SRV.pack(priority, max(0, min(weight, 0xFFFF)), port & 0xFFFF) + target


def txt_rdata(text: str) -> bytes:
    raw = text.encode()
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return b"".join(bytes([len(c)]) + c for c in chunks)


def soa_rdata(domain: bytes, serial: int, minimum: int = 0) -> bytes:
    return (
        b"\x02ns"
        + domain
        + b"\x0ahostmaster"
        + domain
        + _SOA.pack(serial & 0xFFFFFFFF, 3600, 600, 86400, minimum)
    )


def opt_rr() -> bytes:
    """Our OPT record: root owner, our UDP size, version 0, no options."""
    return b"\x00" + _RR.pack(OPT, OUR_EDNS_SIZE, 0, 0)


def header(flags: int, qd: int, an: int, ns: int, ar: int) -> bytes:
    """The 10 header bytes after the ID."""
    return struct.pack("!HHHHH", flags, qd, an, ns, ar)


def error_response(data: bytes, rcode: int, query: Query | None) -> bytes:
    """A short answer carrying only a code: echoes the ID, RD, the question if
    it was readable, and an OPT when the query had one (BADVERS needs it)."""
    qid = data[:2]
    rd = (data[2] << 8) & RD
    opcode = ((data[2] >> 3) & 0xF) << 11
    flags = QR | opcode | rd | (rcode & 0xF)
    question = data[12 : query.qend] if query is not None else b""
    opt = b""
    if rcode > 0xF or (query is not None and query.edns is not None):
        opt = b"\x00" + _RR.pack(OPT, OUR_EDNS_SIZE, (rcode >> 4) << 24, 0)
    return qid + header(flags, 1 if question else 0, 0, 0, 1 if opt else 0) + question + opt
