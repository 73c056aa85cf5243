"""What `waypost` imports before it runs a command: only what that command needs.

Every command pays its imports before doing anything, so a client command
(`services`, `--help`) must not load the agent's runtime (uvicorn, the API,
storage), the mesh's gRPC or the Kubernetes code; only `waypost agent`,
`connect`/`gateway` and `k8s-sync` do, inside their own functions. Checked on
`sys.modules` in a fresh interpreter, not on the clock, so it is load-proof.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import sys

from waypost import _tls

# Loaded only by the commands that run them: the agent (its runtime, the web
# server, the API, storage, the health checker, DNS, the UI), the mesh (gRPC,
# the Envoy bootstrap), Kubernetes, the client library (only the demo), and
# httpx (loaded when a command first sends a request, not to parse its flags).
HEAVY = (
    "waypost.agent.runtime",
    "waypost.api",
    "waypost.storage",
    "waypost.health",
    "waypost.dns",
    "waypost.ui",
    "waypost.mesh",
    "waypost.kubernetes",
    "waypost._kube",
    "waypost.client",
    "uvicorn",
    "grpc",
    "prometheus_client",
    "httpx",
)

# Build the parser and parse a command line (what every command does first),
# run `then`, and list what got imported.
PROBE = """
import json, sys
from waypost.cli.main import build_parser
build_parser().parse_args(sys.argv[2:])
exec(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


def imported(*argv: str, then: str = "") -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, then, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_a_client_command_imports_no_agent_mesh_kubernetes_or_client_code() -> None:
    assert heavy(imported("services", "-http-addr", "127.0.0.1:1")) == []


def test_the_agent_loads_its_runtime_but_not_the_client_library_or_httpx() -> None:
    # The suite starts dozens of agents, each `python -m waypost.cli.main agent`.
    loaded = imported("agent", "--dev", then="import waypost.agent.runtime")
    assert "uvicorn" in loaded  # the probe did import the runtime
    assert [m for m in heavy(loaded) if m.startswith(("waypost.client", "httpx"))] == []


def test_a_plain_http_agent_client_loads_no_ca_bundle_and_trusts_no_one() -> None:
    # httpx's default context reads certifi's bundle (~75 ms per command);
    # a client of an http:// agent never uses TLS, so it gets an empty one
    # that still verifies (CERT_REQUIRED, hostname checked): it trusts nothing.
    context = _tls.client_options("http://127.0.0.1:8501")["verify"]
    assert isinstance(context, ssl.SSLContext)
    assert context.cert_store_stats()["x509_ca"] == 0
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
