"""The package layering, checked on the source: every import of every module.

    cli -> agent -> {api, dns, ui, health, mesh} -> catalog -> storage
    cli -> kubernetes                                   client: on its own

A package may import only the packages below it (`ui` may also use the API's
small http layer, `waypost.api.http`, to serve its page). `client` is a
library of its own: it imports none of the agent's packages, and only `cli`
(the demo) and the `waypost` facade import it. `kubernetes` (`waypost
k8s-sync`) is a process of its own beside the agent that talks to it only
over HTTP, as a third-party writer: it imports no other package (the
Kubernetes API code it shares with the client's `k8s://` source is the private
package `_kube`), and only `cli` imports it. Nobody but `cli` imports
`waypost.agent`, and only the `waypost.agent` package itself imports
`agent/runtime.py`, the one place that wires the others together. Top-level
private modules (`_exceptions`, `_duration`, `_clock`, `_address`...) may be
imported by anyone and import no package. No two packages import each other,
directly or around a loop.

Imports are read with `ast`, so those inside functions and under
`if TYPE_CHECKING:` count too, relative imports are resolved, and
`importlib.import_module("waypost....")` with a literal name counts as well.
A new package must be added to the table below before anything may import it.
"""

from __future__ import annotations

import ast
import pickle
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "waypost"

# mesh (the xDS server, the CA's leaves, Envoy's resources) is an adapter like
# api and dns: it reads the catalog, writes through its plans, and the agent wires it.
LAYERS = (
    ("cli",),
    ("agent",),
    ("api", "dns", "ui", "health", "mesh"),
    ("catalog",),
    ("storage",),
)
RANK = {pkg: len(LAYERS) - n for n, layer in enumerate(LAYERS) for pkg in layer}
SIDEWAYS = {"ui": {"waypost.api.http"}}  # modules a package may use across its own layer
FACADE = "waypost"  # the package's __init__: the public names and __version__
FACADE_USERS = {"cli", "agent"}  # __version__
CLIENT = "client"
CLIENT_USERS = {"cli", FACADE}  # the demo runs client apps; the facade re-exports the client
# Packages outside the layers: they import only the private modules, and only these import them.
STANDALONE = {
    CLIENT: CLIENT_USERS,
    # k8s-sync reaches the agent over its HTTP API (a third-party writer): no agent package
    "kubernetes": {"cli"},
}
RUNTIME = "waypost.agent.runtime"
RUNTIME_USERS = {"waypost.agent"}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.target}"


def parse(source: str) -> ast.Module:
    """`ast.parse`, redone in a fresh interpreter if this one trips CPython 3.11's
    spurious "AST constructor recursion depth mismatch" SystemError
    (python/cpython#106905, fixed in 3.11.9; seen once in CI after the threaded tests)."""
    try:
        return ast.parse(source)
    except SystemError:
        code = "import ast, pickle, sys; sys.stdout.buffer.write(pickle.dumps(ast.parse(sys.stdin.read())))"
        done = subprocess.run(
            [sys.executable, "-c", code], input=source.encode(), capture_output=True, check=True
        )
        tree: ast.Module = pickle.loads(done.stdout)
        return tree


def find_modules(root: Path) -> dict[str, Path]:
    """Every module under `root`, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(
    name: str, source: str, known: Iterable[str], path: str = "", package: bool = False
) -> list[Import]:
    """The waypost modules that module `name` imports, wherever the import is."""
    known = set(known)
    here = name.split(".") if package else name.split(".")[:-1]
    found = []
    for node in ast.walk(parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                for a in node.names
            ]
        elif _is_import_module_call(node):
            targets = [node.args[0].value]  # type: ignore[attr-defined]
        for target in targets:
            if target == "waypost" or target.startswith("waypost."):
                found.append(Import(name, _known_prefix(target, known), path, node.lineno))  # type: ignore[attr-defined]
    return found


def _is_import_module_call(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or not node.args:
        return False
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    first = node.args[0]
    return (
        called == "import_module"
        and isinstance(first, ast.Constant)
        and isinstance(first.value, str)
    )


def _known_prefix(target: str, known: set[str]) -> str:
    parts = target.split(".")
    while len(parts) > 1 and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def component(module: str) -> str:
    """`waypost.api.consul` -> `api`; `waypost._clock` -> `_clock`; `waypost` -> `waypost`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def is_private(comp: str) -> bool:
    return comp.startswith("_")


def violation(imp: Import) -> str | None:
    """Why `imp` breaks the layering, or None."""
    src, dst = component(imp.importer), component(imp.target)
    if is_private(src):
        return None if is_private(dst) else f"a top-level private module imports no package ({dst})"
    if is_private(dst) or src == dst:
        return None
    if imp.target == RUNTIME and imp.importer not in RUNTIME_USERS:
        return "only the waypost.agent package imports the runtime: take what you need as arguments"
    if dst == FACADE:
        return None if src in FACADE_USERS else f"only {sorted(FACADE_USERS)} import the facade"
    if src == FACADE:
        return None if dst == CLIENT else "the facade re-exports the client only"
    if src in STANDALONE or dst in STANDALONE:
        return _standalone_rule(src, dst)
    if dst == "agent" and src != "cli":
        return "only cli imports waypost.agent: the runtime hands the others what they need"
    for name in (src, dst):
        if name not in RANK:
            return f"package {name!r} is not in tests/test_layering.py's LAYERS: add it"
    if RANK[dst] < RANK[src] or imp.target in SIDEWAYS.get(src, ()):
        return None
    below = sorted(p for p, r in RANK.items() if r < RANK[src]) or ["no package"]
    return f"{src} may import only {', '.join(below)} (and the private modules), not {dst}"


def _standalone_rule(src: str, dst: str) -> str | None:
    if src == CLIENT:
        return f"the client library imports none of the agent's packages ({dst})"
    if src in STANDALONE:
        return f"{src} imports no other package, only the private modules ({dst})"
    users = STANDALONE[dst]
    return None if src in users else f"only {sorted(users)} import {dst}"


def package_cycles(imports: Iterable[Import]) -> list[list[Import]]:
    """Each set of packages that import each other, as the imports that close the loop."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        src, dst = component(imp.importer), component(imp.target)
        if src != dst:
            edges.setdefault((src, dst), imp)
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    return [
        [edges[(a, b)] for a in group for b in group if (a, b) in edges]
        for group in _strongly_connected(graph)
        if len(group) > 1
    ]


def _strongly_connected(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Tarjan's algorithm; the graph is a dozen packages, so recursion is fine."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    yield from groups


def all_imports() -> list[Import]:
    modules = find_modules(ROOT)
    found = []
    for name, path in modules.items():
        rel = str(path.relative_to(ROOT.parents[1]))
        found += imports_of(name, path.read_text(), modules, rel, path.name == "__init__.py")
    return found


def broken(imports: Iterable[Import]) -> list[str]:
    return [f"{imp}: {why}" for imp in imports if (why := violation(imp)) is not None]


# -- the checks -------------------------------------------------------------


def test_every_import_respects_the_layers() -> None:
    imports = all_imports()
    assert len({imp.importer for imp in imports}) > 40, "the scan found too few modules"
    problems = broken(imports)
    assert not problems, "layering broken:\n  " + "\n  ".join(problems)


def test_no_import_cycles_between_packages() -> None:
    loops = package_cycles(all_imports())
    assert not loops, "packages import each other:\n" + "\n".join(
        "  " + "; ".join(str(imp) for imp in loop) for loop in loops
    )


def test_only_the_agent_package_imports_the_runtime() -> None:
    imports = [imp for imp in all_imports() if imp.target == RUNTIME]
    assert {imp.importer for imp in imports} == RUNTIME_USERS, [str(imp) for imp in imports]


# -- the checker itself: each rule, broken on purpose ------------------------

KNOWN = {
    "waypost",
    "waypost._clock",
    "waypost._exceptions",
    "waypost._kube",
    "waypost._kube.api",
    "waypost.agent",
    "waypost.agent.config",
    "waypost.agent.runtime",
    "waypost.api",
    "waypost.api.http",
    "waypost.api.consul",
    "waypost.catalog",
    "waypost.client",
    "waypost.kubernetes",
    "waypost.dns",
    "waypost.dns.forward",
    "waypost.ui",
}


def check(name: str, source: str, package: bool = False) -> list[str]:
    return broken(imports_of(name, source, KNOWN, name.replace(".", "/") + ".py", package))


def test_checker_sees_imports_in_functions_and_under_type_checking() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from ..agent.runtime import Agent\n"
        "def f():\n"
        "    from ..agent import config\n"
    )
    problems = check("waypost.dns.forward", source)
    assert len(problems) == 2, problems
    assert problems[0].startswith("waypost/dns/forward.py:3: waypost.dns.forward imports ")
    assert "waypost.agent.runtime" in problems[0]
    assert "dns may not import" not in problems[0]  # the runtime rule names itself
    assert "waypost/dns/forward.py:5" in problems[1] and "waypost.agent.config" in problems[1]


def test_checker_rules() -> None:
    assert check("waypost.api.consul", "from ..dns import forward") != []  # same layer
    assert check("waypost.api.consul", "from ..catalog import Check") == []  # below
    assert check("waypost.catalog", "from ..api import http", package=True) != []  # above
    assert check("waypost.ui", "from ..api.http import Router", package=True) == []  # sideways
    assert check("waypost.ui", "from ..api.consul import ConsulApi", package=True) != []
    assert check("waypost.client", "from ..catalog import Node", package=True) != []
    assert check("waypost.api.consul", "from ..client import Instance") != []
    assert check("waypost.kubernetes.sync", "from ..catalog import Node") != []
    assert check("waypost.kubernetes.sync", "from .._kube.api import ApiClient") == []
    assert check("waypost.client.x", "from ..kubernetes import sync") != []
    assert check("waypost.agent", "from ..kubernetes import sync", package=True) != []
    assert check("waypost.cli.main", "from ..kubernetes import sync") == []
    assert check("waypost._clock", "import waypost.catalog") != []
    assert check("waypost._clock", "from ._exceptions import X") == []
    assert check("waypost.dns.forward", "from .. import _clock") == []
    assert check(
        "waypost.dns.forward", "import importlib\nimportlib.import_module('waypost.agent')"
    )
    assert check("waypost.proxy.sidecar", "from ..catalog import Node") != []  # not in the table
    assert check("waypost.agent", "from .runtime import Agent", package=True) == []


def test_checker_finds_a_cycle() -> None:
    imports = imports_of("waypost.api.consul", "from ..ui import mount", KNOWN)
    imports += imports_of("waypost.ui", "from ..api.http import Router", KNOWN, package=True)
    loops = package_cycles(imports)
    assert len(loops) == 1 and {component(i.importer) for i in loops[0]} == {"api", "ui"}


# The state's tables are the catalog's business: everyone else asks it named
# questions (State.node(), .instances(), .services_on(), .agents()...).
def table_reads(root: Path) -> list[str]:
    """`<x>.state.<table>` anywhere outside catalog/: the reads that must be named queries."""
    tables = {"nodes", "services", "checks", "by_name", "node_services", "node_checks"}
    tables |= {"service_checks", "live", "topic_index"}
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "catalog":
            continue
        for node in ast.walk(parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in tables and _is_state(node.value):
                found.append(f"{path.relative_to(root)}:{node.lineno}: .state.{node.attr}")
    return found


def _is_state(node: ast.expr) -> bool:
    """`x.state` or a local named `state` (an alias of it)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "state"
    return isinstance(node, ast.Name) and node.id == "state"


def test_reads_outside_the_catalog_use_named_queries() -> None:
    assert table_reads(ROOT) == []
