"""`waypost agent`: flags, config file, the same checks for both, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..agentproc import AgentProcess


def waypost(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "waypost.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http", "nonsense"], "--http 'nonsense': expected ADDRESS:PORT"),
        (["--http", "127.0.0.1:99999"], "expected ADDRESS:PORT"),
        (["--store", "mongodb://x"], "unknown store URL"),
        (["--config-file", "/no/such/file.toml"], "cannot read config file"),
        (["--node", "a b"], "--node 'a b': a node name is letters, digits and dashes"),
        (["--advertise", "notanip"], "--advertise 'notanip': expected an IP address"),
        (["--advertise", "0.0.0.0"], "others cannot reach 0.0.0.0"),
        (["--domain", ""], "--domain '': expected a DNS domain"),
        (["--datacenter", "East 1"], "--datacenter 'East 1': a datacenter is lowercase"),
        (["--dns-node-ttl", "5x"], "--dns-node-ttl '5x': expected a duration"),
        (["--dns-service-ttl", "web=-1s"], "a TTL cannot be negative"),
        (["--recursor", "resolver"], "'resolver' is not IP[:PORT]"),
        (["--check-update-interval=-1s"], "--check-update-interval '-1s': cannot be negative"),
        (["--check-update-interval", "soon"], "'soon': expected a duration, e.g. 5m or 0s"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
        (["--grpc-tls", "127.0.0.1:0"], "--grpc-tls needs --tls-cert-file and --tls-key-file"),
        (["--grpc-tls", "nowhere"], "--grpc-tls 'nowhere': expected ADDRESS:PORT"),
    ],
)
def test_bad_flags_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = waypost("agent", "--dev", "--dns", "off", "--grpc", "off", *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http = ", "is not valid TOML"),
        ('htpp = "127.0.0.1:1"', "unknown setting 'htpp' in FILE (did you mean 'http'?)"),
        ('colour = "blue"', "unknown setting 'colour' in FILE (settings: http, dns,"),
        ("dev = 3", "setting 'dev' in FILE: Expected `bool`, got `int`"),
        ('log_level = "loud"', "setting 'log_level' in FILE: 'loud': expected one of trace, debug"),
        ('node = "a b"', "setting 'node' in FILE: 'a b': a node name is letters"),
        ('advertise = "notanip"', "setting 'advertise' in FILE: 'notanip': expected an IP address"),
        ('domain = ""', "setting 'domain' in FILE: '': expected a DNS domain"),
        ('http = "nonsense"', "setting 'http' in FILE: 'nonsense': expected ADDRESS:PORT"),
        ("http_read_timeout = 0", "setting 'http_read_timeout' in FILE: 0.0: must be more than 0"),
        ('[dns_service_ttl]\nweb = "soon"', "setting 'dns_service_ttl' in FILE:"),
        ('recursors = ["x"]', "'x' is not IP[:PORT]"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    """Config files get the same checks as flags, and messages that name the setting."""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = waypost("agent", "--grpc", "off", "--config-file", str(path))
    assert result.returncode == 2, result.stderr
    assert message.replace("FILE", str(path)) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    from waypost import __version__

    result = waypost("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"waypost {__version__}")


def test_port_in_use_is_a_clear_error(agent: AgentProcess) -> None:
    result = waypost(
        "agent", "--dev", "--dns", "off", "--grpc", "off", "--http", f"127.0.0.1:{agent.http_port}"
    )
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'dev = true\nnode = "from-file"\ndatacenter = "east"\ndns = "off"\nhttp = "127.0.0.1:1"\n'
    )
    agent = AgentProcess(
        "--config-file", str(path), "--http", "127.0.0.1:0", "--dns", "off"
    ).start()
    try:
        with agent.client() as http:
            config = http.get("/v1/agent/self").json()["Config"]
        assert (config["NodeName"], config["Datacenter"]) == ("from-file", "east")
        assert len(config["NodeID"]) == 36  # a UUID, as Consul gives
    finally:
        assert agent.stop() == 0


def test_banner_never_prints_store_credentials() -> None:
    from waypost.agent import AgentConfig

    config = AgentConfig(store="etcds://admin:s3cret@127.0.0.11:2379,127.0.0.12:2379?ca=/ca.pem")
    assert "s3cret" not in config.display_store()
    assert config.display_store() == "etcds://***@127.0.0.11:2379,127.0.0.12:2379?ca=/ca.pem"


@pytest.mark.parametrize(
    ("listener", "case"),
    [
        ("--https", "a key from another pair"),
        ("--grpc-tls", "a key from another pair"),
        ("--grpc-tls", "a certificate that is garbage"),
        ("--https", "a CA file cut short"),  # uvicorn's own load named no file (exit 1)
    ],
)
def test_tls_files_that_do_not_load_fail_the_start_naming_the_file(
    tmp_path: Path, listener: str, case: str
) -> None:
    """Both TLS listeners check their files with one function (waypost/_tlsfiles.py)."""
    import trustme

    ca = trustme.CA()
    cert, key = tmp_path / "agent.pem", tmp_path / "agent-key.pem"
    ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(cert))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes() + trustme.CA().cert_pem.bytes()[:300])
    ca.issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
    if case == "a key from another pair":
        reason = f"{key} is not the key of the certificate in {cert}"
    elif case == "a CA file cut short":
        cert.write_bytes(ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.bytes())
        key.write_bytes(cert.read_bytes())
        reason = f"{ca_file} holds an incomplete PEM block"
    else:
        cert.write_text("garbage\n")
        key.write_text("garbage\n")
        reason = f"{cert} holds no PEM certificate"
    result = waypost(
        *("agent", "--dev", "--dns", "off", "--grpc", "off", listener, "127.0.0.1:0"),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *(("--tls-ca-file", str(ca_file)) if case == "a CA file cut short" else ()),
    )
    assert result.returncode == 2, result.stderr
    assert f"waypost: error: {listener}: {reason}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
