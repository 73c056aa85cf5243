"""Headless Services through DNS as pods resolve them: a real dnsmasq serving
cluster-DNS-shaped records, a resolv.conf with a pod's search domains, and the
`dns://` source without a host."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import waypost
from waypost.client._sources import source_from_url
from waypost.client._sources._dns import DnsSource

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
ZONE = "default.svc.cluster.local"


def _free_loopback_53() -> str:
    """A loopback address whose port 53 is free (resolv.conf cannot name a port)."""
    for _ in range(50):
        address = f"127.53.{random.randint(1, 254)}.{random.randint(1, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((address, 53))
            except OSError:
                continue
        return address
    pytest.skip("no loopback address with a free port 53")


@pytest.fixture
def cluster_dns(tmp_path: Path) -> Iterator[Path]:
    """dnsmasq with a headless Service's records, answering NXDOMAIN for unknown
    names as CoreDNS and its upstream would (`--local`); the resolv.conf of a pod in `default`."""
    if not Path(DNSMASQ).exists():
        pytest.skip("dnsmasq is not installed (scripts/system-deps.sh installs it)")
    address = _free_loopback_53()
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "".join(f"127.0.10.{n} payment-headless.{ZONE}\n" for n in (1, 2, 3))
        + f"fd00::10:1 payment-headless.{ZONE}\n"
        + "".join(f"127.0.10.{n} payment-{n}.payment-headless.{ZONE}\n" for n in (1, 2, 3))
        + "127.0.20.1 payment-headless.other.svc.cluster.local\n"
    )
    srv = [
        f"--srv-host=_http._tcp.payment-headless.{ZONE},payment-{n}.payment-headless.{ZONE},8080,0,50"
        for n in (1, 2, 3)
    ]
    proc = subprocess.Popen(
        [
            DNSMASQ,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            f"--addn-hosts={hosts}",
            f"--listen-address={address}",
            "--bind-interfaces",
            "--port=53",
            "--user=root",
            "--local=/cluster.local/",
            "--local=/#/",
            *srv,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        f"nameserver {address}\nsearch {ZONE} svc.cluster.local cluster.local\noptions ndots:5\n"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["dig", f"@{address}", "+short", f"payment-headless.{ZONE}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip():
            break
        time.sleep(0.1)
    yield resolv
    proc.terminate()
    proc.wait(5)


def test_a_and_aaaa_records_of_a_headless_service_via_search_domains(cluster_dns: Path) -> None:
    with waypost.Discovery(DnsSource(None, default_port=3000, resolv_conf=str(cluster_dns))) as d:
        found = d.instances("payment-headless")  # relative: the search list finds it
    assert sorted(i.address for i in found) == [
        "127.0.10.1",
        "127.0.10.2",
        "127.0.10.3",
        "fd00::10:1",
    ]
    assert {i.port for i in found} == {3000}


async def test_srv_records_name_the_port(cluster_dns: Path) -> None:
    source = DnsSource(None, port_name="http", resolv_conf=str(cluster_dns))
    async with waypost.AsyncDiscovery(source) as d:
        found = await d.instances("payment-headless")
    assert sorted((i.address, i.port) for i in found) == [
        (f"127.0.10.{n}", 8080) for n in (1, 2, 3)
    ]


async def test_other_namespace_by_name(cluster_dns: Path) -> None:
    async with waypost.AsyncDiscovery(DnsSource(None, resolv_conf=str(cluster_dns))) as d:
        found = await d.instances("payment-headless.other")
        missing = await d.instances("nothing-here")
    assert [i.address for i in found] == ["127.0.20.1"]
    assert missing == []


def test_url_without_a_host_means_the_system_resolver() -> None:
    source = source_from_url("dns://?port=http")
    assert isinstance(source, DnsSource)
    assert source.kubernetes_names and source.port_name == "http" and source.url == "dns://"
    assert source._names("payment", None) == ("_http._tcp.payment", "payment")
    consul = source_from_url("dns://127.0.0.1:8600?port=80")
    assert isinstance(consul, DnsSource) and not consul.kubernetes_names
    assert consul._names("payment", None) == (
        "_payment._tcp.service.consul.",
        "payment.service.consul.",
    )
    with pytest.raises(ValueError, match="must be a number"):
        source_from_url("dns://127.0.0.1:8600?port=http")
