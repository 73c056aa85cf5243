"""A real consumer of Consul's discovery: VictoriaMetrics (Debian's
`victoria-metrics`) scraping targets it finds with `consul_sd_configs`, which
selects nodes with `?node-meta=` and follows changes with blocking queries."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from ..agentproc import AgentProcess
from ..servers import free_port
from ..wait import until

VM = shutil.which("victoria-metrics")
pytestmark = pytest.mark.skipif(
    VM is None, reason="victoria-metrics is not installed (scripts/system-deps.sh)"
)


class Exporter:
    """A real HTTP server with a /metrics page naming itself."""

    def __init__(self, name: str) -> None:
        body = f'waypost_sd_test{{exporter="{name}"}} 1\n'.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporters() -> Iterator[dict[str, Exporter]]:
    found = {name: Exporter(name) for name in ("prod-a", "dev-b", "prod-c")}
    yield found
    for exporter in found.values():
        exporter.close()


def register(http: httpx.Client, node: str, env: str, port: int) -> None:
    body = {
        "Node": node,
        "Address": "127.0.0.1",
        "NodeMeta": {"env": env},
        "Service": {"Service": "app", "ID": f"app-{node}", "Port": port, "Tags": ["metrics"]},
    }
    http.put("/v1/catalog/register", json=body).raise_for_status()


def test_victoria_metrics_scrapes_only_the_nodes_its_node_meta_selects(
    tmp_path: Path, exporters: dict[str, Exporter]
) -> None:
    agent = AgentProcess(
        "--dev", "--http", "127.0.0.1:0", "--dns", "off", "--node", "sd-agent"
    ).start()
    vm_port = free_port()
    config = tmp_path / "scrape.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: waypost\n"
        "    consul_sd_configs:\n"
        f"      - server: {agent.http_url.removeprefix('http://')}\n"
        "        services: [app]\n"
        "        node_meta: {env: prod}\n"
    )
    vm = subprocess.Popen(
        [
            VM,
            f"-httpListenAddr=127.0.0.1:{vm_port}",
            f"-storageDataPath={tmp_path / 'vm'}",
            f"-promscrape.config={config}",
            "-promscrape.consulSDCheckInterval=1s",
            "-loggerLevel=ERROR",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with (
            agent.client() as http,
            httpx.Client(base_url=f"http://127.0.0.1:{vm_port}", timeout=10) as vm_http,
        ):
            register(http, "node-a", "prod", exporters["prod-a"].port)
            register(http, "node-b", "dev", exporters["dev-b"].port)

            def scraped() -> set[str]:
                try:
                    r = vm_http.get("/api/v1/targets")
                except httpx.HTTPError:
                    return set()
                active = r.json()["data"]["activeTargets"] if r.status_code == 200 else []
                return {t["labels"]["instance"] for t in active if t["health"] == "up"}

            a, b, c = (f"127.0.0.1:{exporters[n].port}" for n in ("prod-a", "dev-b", "prod-c"))
            assert until(lambda: scraped() == {a} and scraped(), timeout=30) == {a}
            register(http, "node-c", "prod", exporters["prod-c"].port)  # a new prod node: found
            assert until(lambda: scraped() == {a, c} and scraped(), timeout=30) == {a, c}
            labels = next(
                t
                for t in vm_http.get("/api/v1/targets").json()["data"]["activeTargets"]
                if t["labels"]["instance"] == c
            )["discoveredLabels"]
            assert labels["__meta_consul_node"] == "node-c"
            assert labels["__meta_consul_metadata_env"] == "prod"
            assert b not in scraped()
    finally:
        vm.terminate()
        vm.wait(20)
        assert agent.stop() == 0
