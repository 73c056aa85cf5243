"""The commands that talk to a running agent: tables out, registrations in.

    services            every service with its instances by health
    members             the agents' nodes
    register FILE|...   an instance (and its check), like `consul services register`
    deregister ID|FILE  like `consul services deregister`
    watch SERVICE       a live table of one service's instances, redrawn on every change
    events [SERVICE]    what happened (registrations, check transitions, reaps), --follow for more

Each prints to `out` and returns the exit code; errors are raised as
WaypostError for `main` to print.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from .._exceptions import ConfigError
from .._logfmt import quote
from ..catalog.model import status_rank
from .client import AgentClient, AgentError, segment

WATCH_WAIT = "5m"
RETRY_DELAY = 2.0


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: TextIO) -> None:
    cells = [list(headers)] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def worst(checks: list[dict[str, Any]]) -> str:
    """An instance's status: its worst check's (passing when it has none)."""
    return max((c["Status"] for c in checks), key=status_rank, default="passing")


def services(agent: AgentClient, out: TextIO) -> int:
    names = agent.get("/v1/catalog/services")
    if not set(names) - {"consul"}:  # an agent lists itself as `consul`, as Consul's servers do
        out.write(
            "no services registered" + (" (only the agents' own `consul`)" if names else "") + "\n"
        )
        return 0
    rows = []
    for name, tags in names.items():
        statuses = [worst(e["Checks"]) for e in agent.get(f"/v1/health/service/{segment(name)}")]
        rows.append(
            (
                name,
                len(statuses),
                statuses.count("passing"),
                statuses.count("warning"),
                len(statuses) - statuses.count("passing") - statuses.count("warning"),
                ",".join(tags),
            )
        )
    print_table(("SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL", "TAGS"), rows, out)
    return 0


def members(agent: AgentClient, out: TextIO) -> int:
    rows = [
        (
            m["Name"],
            m["Addr"],
            {1: "alive", 4: "failed"}.get(m["Status"], "left"),
            m["Tags"].get("dc", ""),
        )
        for m in agent.get("/v1/agent/members")
    ]
    print_table(("NODE", "ADDRESS", "STATUS", "DC"), rows, out)
    return 0


# -- register / deregister ------------------------------------------------------


def registrations_from_file(path: str) -> list[dict[str, Any]]:
    """A JSON file as `consul services register` takes it: `{"service": {...}}`,
    `{"services": [...]}`, or one bare registration.

    Raises:
        ConfigError: unreadable, not JSON, or no registration in it.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        folded = {k.lower(): v for k, v in data.items()}
        if "services" in folded and isinstance(folded["services"], list):
            data = folded["services"]
        elif "service" in folded and isinstance(folded["service"], dict):
            data = [folded["service"]]
        else:
            data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data) or not data:
        raise ConfigError(f'{path}: expected {{"service": {{...}}}} or {{"services": [...]}}')
    return data


def registration_from_flags(
    name: str,
    port: int,
    service_id: str | None = None,
    address: str | None = None,
    tags: Sequence[str] = (),
    meta: Sequence[str] = (),
    check_http: str | None = None,
    check_ttl: str | None = None,
    check_interval: str = "10s",
    deregister_after: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Name": name,
        "ID": service_id or name,
        "Port": port,
        "Tags": list(tags),
    }
    if address:
        body["Address"] = address
    if meta:
        body["Meta"] = dict(_key_value(item, "--meta") for item in meta)
    if check_http and check_ttl:
        raise ConfigError("--check-http and --check-ttl: give one check, not both")
    check: dict[str, Any] = {}
    if check_http:
        check = {"HTTP": check_http, "Interval": check_interval}
    elif check_ttl:
        check = {"TTL": check_ttl}
    if check and deregister_after:
        check["DeregisterCriticalServiceAfter"] = deregister_after
    if check:
        body["Check"] = check
    return body


def _key_value(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
    return key, value


def register(agent: AgentClient, bodies: list[dict[str, Any]], out: TextIO) -> int:
    for body in bodies:
        agent.put("/v1/agent/service/register", body)
        folded = {k.lower(): v for k, v in body.items()}
        out.write(f"Registered service: {folded.get('id') or folded.get('name')}\n")
    return 0


def deregister(agent: AgentClient, ids: list[str], out: TextIO) -> int:
    for service_id in ids:
        agent.put(f"/v1/agent/service/deregister/{segment(service_id)}")
        out.write(f"Deregistered service: {service_id}\n")
    return 0


def ids_from_file(path: str) -> list[str]:
    """The service IDs a registration file names (the ID defaults to the name)."""
    folded = [{k.lower(): v for k, v in b.items()} for b in registrations_from_file(path)]
    return [str(b.get("id") or b.get("name")) for b in folded]


# -- watch -------------------------------------------------------------------------


def instance_rows(entries: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for entry in entries:
        service, node, checks = entry["Service"], entry["Node"], entry["Checks"]
        address = service.get("Address") or node.get("Address", "")
        status = worst(checks)
        failing = [c for c in checks if c["Status"] == status and status != "passing"]
        output = " ".join((failing[0].get("Output") or "").split())[:60] if failing else ""
        names = " ".join(f"{c['Name'] or c['CheckID']}:{c['Status']}" for c in checks)
        rows.append(
            (
                service["ID"],
                node.get("Node", ""),
                f"{address}:{service['Port']}",
                status,
                names,
                output,
            )
        )
    return rows


def watch(agent: AgentClient, service: str, out: TextIO, count: int = 0) -> int:
    """Redraw `service`'s table on every change (a blocking query per round).

    Survives agent restarts: an index that goes backwards starts over, and a
    lost connection is retried every few seconds, saying so. `count` > 0 stops
    after that many tables (for tests and scripts).
    """
    index, drawn = 0, 0
    clear = out.isatty()
    path = f"/v1/health/service/{segment(service)}"
    while count <= 0 or drawn < count:
        try:
            entries, new_index = agent.get_indexed(path, timeout=400, index=index, wait=WATCH_WAIT)
        except AgentError as exc:
            out.write(f"{time.strftime('%H:%M:%S')} {exc}; retrying in {RETRY_DELAY:.0f}s\n")
            out.flush()
            time.sleep(RETRY_DELAY)
            index = 0
            continue
        if new_index == index:
            continue  # the wait ran out with nothing new
        index = new_index  # lower than before: the agent restarted; show what it has now
        _draw(service, entries, out, clear)
        drawn += 1
    return 0


def _draw(service: str, entries: list[dict[str, Any]], out: TextIO, clear: bool) -> None:
    if clear:
        out.write("\x1b[H\x1b[2J")
    statuses = [worst(e["Checks"]) for e in entries]
    summary = ", ".join(
        f"{statuses.count(s)} {s}" for s in ("passing", "warning", "critical") if s in statuses
    )
    out.write(
        f"{time.strftime('%H:%M:%S')}  {service}: {len(entries)} instance(s)"
        + (f" ({summary})" if summary else "")
        + "\n"
    )
    if entries:
        print_table(
            ("ID", "NODE", "ADDRESS", "STATUS", "CHECKS", "OUTPUT"), instance_rows(entries), out
        )
    else:
        out.write(f"no instances of {service!r} registered\n")
    out.write("\n")
    out.flush()


# -- events --------------------------------------------------------------------------

EVENTS_PATH = "/v1/internal/ui/timeline"


def events(agent: AgentClient, service: str | None, follow: bool, out: TextIO) -> int:
    """Print the agent's recorded transitions, oldest first; with `follow`, keep
    printing new ones as they happen (blocking queries, like `tail -f`), across
    agent restarts (an index lower than before: the timeline started over)."""
    path = EVENTS_PATH + (f"/{segment(service)}" if service else "")
    after = index = seen = 0
    while True:
        try:
            rows, new_index = agent.get_indexed(
                path, timeout=400, after=after, index=index, wait=WATCH_WAIT
            )
        except AgentError as exc:
            if "404" in str(exc) or "does not answer like" in str(exc):
                raise AgentError(f"{exc} (this agent keeps no events: it predates them)") from exc
            if not follow:
                raise
            out.write(f"{exc}; retrying in {RETRY_DELAY:.0f}s\n")
            out.flush()
            time.sleep(RETRY_DELAY)
            index = 0  # answer at once when it is back, to see whether it restarted
            continue
        if new_index < seen:
            out.write("--- the agent restarted: its events start over ---\n")
            after = index = seen = 0
            continue
        for row in rows:
            out.write(format_event(row) + "\n")
            after = max(after, int(row.get("Seq", 0)))
        out.flush()
        if not follow:
            if not rows and after == 0:
                out.write("no events recorded" + (f" for {service}" if service else "") + "\n")
            return 0
        index = seen = new_index


def format_event(row: dict[str, Any]) -> str:
    """`TIME  KIND  SERVICE/ID node=N [check=C] FROM -> TO [output="..."]`, one line."""
    before, after = row.get("From") or "", row.get("To") or row.get("Status") or ""
    change = f"{before} -> {after}" if before else after
    check = f" check={row['CheckID']}" if row.get("CheckID") else ""
    output = " ".join(str(row.get("Output") or "").split())
    instance = f"{row.get('Service', '')}/{row.get('ServiceID', '')}"
    return (
        f"{row.get('Time', '')}  {row.get('Kind', ''):<12} {instance} node={row.get('Node', '')}"
        f"{check} {change}" + (f" output={quote(output)}" if output else "")
    )
