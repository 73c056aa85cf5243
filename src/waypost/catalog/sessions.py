"""Sessions (Consul's locks' owners) and user events: records and in-memory tables.

A session is stored as `x/<id>`; `State.apply` hands those entries here.
Which agent invalidates a session (its TTL ran out, a check of it went
critical, its node went away) is the agent's business (`agent/sessions.py`);
the table only answers "which sessions depend on this node", and records the
renewals the agent's timers follow.

Events are stored as `e/<slot>`: a ring of `EVENT_SLOTS` keys, the newest
event overwriting the oldest, so the store never grows with events and every
agent of a cluster receives them through its mirror (Consul's agents keep the
last 256 they received over gossip).
"""

from __future__ import annotations

from typing import Final

import msgspec

from ..storage import Entry
from .watch import Topic

SESSION_PREFIX: Final = "x/"
EVENT_PREFIX: Final = "e/"
EVENT_SLOTS: Final = 256
SESSIONS: Final[Topic] = ("sessions", "")
EVENTS: Final[Topic] = ("events", "")


class Session(msgspec.Struct, frozen=True, omit_defaults=True):
    """A session as stored. Durations in seconds; `renewals` moves on every renew."""

    id: str
    node: str
    name: str = ""
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[str, ...] = ()
    lock_delay: float = 15.0
    behavior: str = "release"
    ttl: float = 0.0
    renewals: int = 0
    create_index: int = 0
    modify_index: int = 0

    def checks(self) -> tuple[str, ...]:
        return self.node_checks + self.service_checks


class Event(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    name: str
    ltime: int
    payload: bytes | None = None
    node_filter: str = ""
    service_filter: str = ""
    tag_filter: str = ""


_ENCODER: Final = msgspec.msgpack.Encoder()
_SESSION: Final = msgspec.msgpack.Decoder(Session)
_EVENT: Final = msgspec.msgpack.Decoder(Event)


def session_key(session_id: str) -> str:
    return SESSION_PREFIX + session_id


def session_topic(session_id: str) -> Topic:
    return ("session", session_id)


def session_node_topic(node: str) -> Topic:
    return ("session-node", node)


def encode_session(session: Session) -> Entry:
    plain = msgspec.structs.replace(session, create_index=0, modify_index=0)
    return Entry(session_key(session.id), _ENCODER.encode(plain))


def event_key(ltime: int) -> str:
    return f"{EVENT_PREFIX}{ltime % EVENT_SLOTS:03d}"


def encode_event(event: Event) -> Entry:
    return Entry(event_key(event.ltime), _ENCODER.encode(event))


class SessionTable:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_node: dict[str, dict[str, Session]] = {}

    def apply(self, index: int, entry: Entry, touched: set[Topic]) -> Session | None:
        """Apply one `x/` entry; returns the session it removed, if any."""
        session_id = entry.key[len(SESSION_PREFIX) :]
        old = self.sessions.pop(session_id, None)
        if old is not None:
            _drop(self.by_node, old.node, session_id)
            touched.add(session_node_topic(old.node))
        if entry.value is not None:
            session = _SESSION.decode(entry.value)
            created = entry.create_index or (old.create_index if old is not None else index)
            session = msgspec.structs.replace(
                session, create_index=created, modify_index=entry.modify_index or index
            )
            self.sessions[session_id] = session
            self.by_node.setdefault(session.node, {})[session_id] = session
            touched.add(session_node_topic(session.node))
        touched.update((SESSIONS, session_topic(session_id)))
        return old if entry.value is None else None

    # -- reads (named queries) ---------------------------------------------

    def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    def all(self) -> list[Session]:
        return sorted(self.sessions.values(), key=lambda s: (s.create_index, s.id))

    def on_node(self, node: str) -> list[Session]:
        return sorted(self.by_node.get(node, {}).values(), key=lambda s: (s.create_index, s.id))

    def statistics(self) -> dict[str, float]:
        return {"sessions": len(self.sessions)}


class EventRing:
    def __init__(self) -> None:
        self.slots: dict[str, Event] = {}
        self.slot_index: dict[str, int] = {}  # slot -> modify index (fire's condition)
        self.last_ltime = 0

    def apply(self, index: int, entry: Entry, touched: set[Topic]) -> None:
        if entry.value is None:
            self.slots.pop(entry.key, None)
            self.slot_index.pop(entry.key, None)
        else:
            event = _EVENT.decode(entry.value)
            self.slots[entry.key] = event
            self.slot_index[entry.key] = entry.modify_index or index
            self.last_ltime = max(self.last_ltime, event.ltime)
        touched.add(EVENTS)

    def events(self) -> list[Event]:
        """The ring's events, oldest first."""
        return sorted(self.slots.values(), key=lambda e: e.ltime)


def _drop(table: dict[str, dict[str, Session]], node: str, session_id: str) -> None:
    bucket = table.get(node)
    if bucket is not None:
        bucket.pop(session_id, None)
        if not bucket:
            del table[node]
