"""kubeconfig `exec` credential plugins: a real plugin process, the fake API server.

The plugin is a small script (`plugin()`), run exactly as a cloud login helper
is (aws eks get-token, gke-gcloud-auth-plugin, kubelogin): it records what it
was given (argv, KUBERNETES_EXEC_INFO, stdin) and prints the ExecCredential
the test put in its `answer` file, or exits with an error.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import waypost
from waypost._exceptions import ConfigError, ExecPluginError, KubernetesError
from waypost._kube import config as kubeconfig_module
from waypost._kube.api import SyncApiClient
from waypost._kube.config import load_config

from .fakeapi import FakeKubeApi
from .objects import endpoint_slice, ep

V1 = "client.authentication.k8s.io/v1"
V1BETA1 = "client.authentication.k8s.io/v1beta1"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"

PLUGIN = """#!{python}
import json, os, pathlib, sys
d = pathlib.Path(os.environ["PLUGIN_DIR"])
with open(d / "runs", "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": sys.stdin.read(),
                        "info": json.loads(os.environ["KUBERNETES_EXEC_INFO"])}}) + "\\n")
if (d / "sleep").exists():
    import time; time.sleep(float((d / "sleep").read_text()))
if (d / "exit").exists():
    print("login failed: no session", file=sys.stderr)
    sys.exit(int((d / "exit").read_text()))
sys.stdout.write((d / "answer").read_text())
"""


def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "login-helper"
    path.parent.mkdir()
    path.write_text(PLUGIN.format(python=sys.executable))
    path.chmod(0o755)
    return path


def answer(tmp_path: Path, version: str = V1, **status: Any) -> None:
    doc = {"apiVersion": version, "kind": "ExecCredential", "status": status}
    (tmp_path / "answer").write_text(json.dumps(doc))


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "runs"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kubeconfig(kube: FakeKubeApi, tmp_path: Path, **exec_fields: Any) -> Path:
    """A kubeconfig whose user logs in through the plugin (relative command path)."""
    exec_section = {
        "apiVersion": V1,
        "command": "./bin/login-helper",
        "args": ["get-token", "--cluster", "fake"],
        "env": [{"name": "PLUGIN_DIR", "value": str(tmp_path)}],
        "interactiveMode": "Never",
        "provideClusterInfo": True,
        **exec_fields,
    }
    cluster = {
        "server": kube.url,
        "certificate-authority": str(kube.dir / "ca.crt"),
        "extensions": [
            {"name": "client.authentication.k8s.io/exec", "extension": {"region": "eu-west-1"}}
        ],
    }
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": cluster}],
        "users": [{"name": "cloud", "user": {"exec": exec_section}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "cloud"}}],
        "current-context": "fake",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    plugin(tmp_path)
    return path


def rfc3339(seconds_from_now: float) -> str:
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds_from_now)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("version", [V1, V1BETA1])
async def test_the_k8s_source_logs_in_with_the_plugins_token(
    kube: FakeKubeApi, tmp_path: Path, version: str
) -> None:
    kube.tokens = {"from-plugin"}
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    answer(tmp_path, version, token="from-plugin")
    config = kubeconfig(kube, tmp_path, apiVersion=version)
    async with waypost.AsyncDiscovery(f"k8s://?kubeconfig={config}", share=False) as discovery:
        found = await discovery.instances("payment")
    assert [i.address for i in found] == ["10.0.0.1"]
    (run,) = runs(tmp_path)  # one run: the watch reused the cached token
    assert run["argv"] == ["get-token", "--cluster", "fake"]
    assert run["stdin"] == ""  # never interactive
    info = run["info"]
    assert (info["apiVersion"], info["kind"], info["spec"]["interactive"]) == (
        version,
        "ExecCredential",
        False,
    )
    cluster = info["spec"]["cluster"]
    assert cluster["server"] == kube.url
    ca = base64.b64decode(cluster["certificate-authority-data"])
    assert ca == (kube.dir / "ca.crt").read_bytes()
    assert cluster["config"] == {"region": "eu-west-1"}


async def test_a_slow_plugin_runs_off_the_event_loop(kube: FakeKubeApi, tmp_path: Path) -> None:
    """A cloud login can take a second: the loop must go on meanwhile."""
    kube.tokens = {"slow"}
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    answer(tmp_path, token="slow")
    (tmp_path / "sleep").write_text("0.6")
    config = kubeconfig(kube, tmp_path)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    async with waypost.AsyncDiscovery(f"k8s://?kubeconfig={config}", share=False) as discovery:
        assert len(await discovery.instances("payment")) == 1
    ticker.cancel()
    assert ticks >= 10, ticks  # blocked, the loop would have ticked about once


def test_without_provide_cluster_info_the_plugin_gets_no_cluster(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    kube.tokens = {"t"}
    answer(tmp_path, token="t")
    client = SyncApiClient(load_config(str(kubeconfig(kube, tmp_path, provideClusterInfo=False))))
    client.request("GET", SLICES)
    client.close()
    assert "cluster" not in runs(tmp_path)[0]["info"]["spec"]


def test_an_expired_credential_runs_the_plugin_again(kube: FakeKubeApi, tmp_path: Path) -> None:
    kube.tokens = {"first"}
    answer(tmp_path, token="first", expirationTimestamp=rfc3339(60))
    config = load_config(str(kubeconfig(kube, tmp_path)))
    client = SyncApiClient(config)
    client.request("GET", SLICES)
    client.request("GET", SLICES)
    assert len(runs(tmp_path)) == 1  # cached until it expires
    assert config.exec_plugin is not None
    config.exec_plugin._now = lambda: time.time() + 61  # the minute has passed
    # the server still takes the old token: only the expiry can make the plugin run
    kube.tokens = {"first", "second"}
    answer(tmp_path, token="second", expirationTimestamp=rfc3339(3600))
    client.request("GET", SLICES)
    client.close()
    assert len(runs(tmp_path)) == 2


def test_a_401_runs_the_plugin_again_and_retries(kube: FakeKubeApi, tmp_path: Path) -> None:
    kube.tokens = {"first"}
    answer(tmp_path, token="first")  # no expiry: valid until refused
    client = SyncApiClient(load_config(str(kubeconfig(kube, tmp_path))))
    client.request("GET", SLICES)
    kube.tokens = {"second"}  # revoked on the server side
    answer(tmp_path, token="second")
    client.request("GET", SLICES)  # 401, plugin again, retried: no error
    client.close()
    assert len(runs(tmp_path)) == 2


async def test_a_client_certificate_from_the_plugin_and_its_rotation(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    kube.tokens, kube.cert_users = {"unused"}, {"alice"}
    kube.put(endpoint_slice("pay-1", "payment", [ep("10.0.0.1")]))
    cert, key = kube.client_cert("alice")
    answer(
        tmp_path,
        clientCertificateData=cert.decode(),
        clientKeyData=key.decode(),
        expirationTimestamp=rfc3339(60),
    )
    config = load_config(str(kubeconfig(kube, tmp_path)))
    client = SyncApiClient(config)
    assert client.request("GET", SLICES)["items"]
    # rotation: the server now accepts only bob, whose certificate the plugin returns
    # next; the open keep-alive connection still presents alice's, so it must go
    kube.cert_users = {"bob"}
    cert, key = kube.client_cert("bob")
    answer(tmp_path, clientCertificateData=cert.decode(), clientKeyData=key.decode())
    assert config.exec_plugin is not None
    config.exec_plugin._now = lambda: time.time() + 61
    assert client.request("GET", SLICES)["items"]
    client.close()
    assert len(runs(tmp_path)) == 2


def test_without_a_credential_the_server_refuses(kube: FakeKubeApi, tmp_path: Path) -> None:
    """The control for the certificate test: the fake really checks who calls."""
    kube.tokens, kube.cert_users = {"other"}, {"alice"}
    cert, key = kube.client_cert("mallory")
    answer(tmp_path, clientCertificateData=cert.decode(), clientKeyData=key.decode())
    client = SyncApiClient(load_config(str(kubeconfig(kube, tmp_path))))
    with pytest.raises(KubernetesError) as caught:
        client.request("GET", SLICES)
    client.close()
    assert caught.value.code == 401


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ({"command": "no-such-login-helper", "installHint": "install it with: pip install x"},
         "command 'no-such-login-helper' not found (install it with: pip install x)"),
        ({"exit": "3"}, "exited with 3: login failed: no session"),
        ({"raw": "Token: abc\n"}, "printed something that is not JSON: 'Token: abc\\n'"),
        ({"raw": json.dumps({"kind": "Secret"})}, "printed JSON that is not an ExecCredential"),
        ({"doc": {"apiVersion": V1BETA1, "kind": "ExecCredential", "status": {"token": "t"}}},
         f"answered apiVersion '{V1BETA1}', asked '{V1}'"),
        ({"doc": {"apiVersion": V1, "kind": "ExecCredential", "status": {}}},
         "returned neither a token nor a client certificate"),
        ({"doc": {"apiVersion": V1, "kind": "ExecCredential",
                  "status": {"clientCertificateData": "PEM"}}},
         "returned clientCertificateData without clientKeyData"),
        ({"doc": {"apiVersion": V1, "kind": "ExecCredential",
                  "status": {"token": "t", "expirationTimestamp": "tomorrow"}}},
         "expirationTimestamp 'tomorrow' is not an RFC 3339 time"),
    ],
)  # fmt: skip
def test_a_missing_or_broken_plugin_is_a_clear_error(
    kube: FakeKubeApi, tmp_path: Path, setup: dict[str, Any], message: str
) -> None:
    fields = (
        {"command": setup["command"], "installHint": setup["installHint"]}
        if "command" in setup
        else {}
    )
    config = load_config(str(kubeconfig(kube, tmp_path, **fields)))
    if "exit" in setup:
        (tmp_path / "exit").write_text(setup["exit"])
    (tmp_path / "answer").write_text(setup.get("raw") or json.dumps(setup.get("doc")))
    client = SyncApiClient(config)
    with pytest.raises(ExecPluginError) as caught:
        client.request("GET", SLICES)
    client.close()
    assert message in str(caught.value)
    assert "user 'cloud'" in str(caught.value)  # names the kubeconfig user
    assert caught.value.code == 0  # a reflector backs off and runs it again


async def test_the_k8s_source_reports_a_failing_plugin_as_unavailable(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    config = kubeconfig(kube, tmp_path)
    (tmp_path / "exit").write_text("1")
    async with waypost.AsyncDiscovery(f"k8s://?kubeconfig={config}", share=False) as discovery:
        with pytest.raises(waypost.RegistryUnavailable, match="login failed: no session"):
            await discovery.instances("payment")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1"}, "is not supported"),
        ({"command": ""}, "exec has no command"),
        ({"interactiveMode": None}, "interactiveMode must be set"),
        ({"interactiveMode": "Sometimes"}, "is not one of Never, IfAvailable, Always"),
        ({"interactiveMode": "Always"}, "needs a terminal"),
        ({"env": [{"name": "X"}]}, "needs a name and a value"),
    ],
)
def test_an_invalid_exec_section_is_refused_when_read(
    kube: FakeKubeApi, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    path = kubeconfig(kube, tmp_path, **fields)
    doc = json.loads(path.read_text())
    section = doc["users"][0]["user"]["exec"]
    for key, value in fields.items():
        if value is None:
            del section[key]
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=message):
        load_config(str(path))


def test_v1beta1_may_leave_interactive_mode_out(kube: FakeKubeApi, tmp_path: Path) -> None:
    path = kubeconfig(kube, tmp_path, apiVersion=V1BETA1)
    doc = json.loads(path.read_text())
    del doc["users"][0]["user"]["exec"]["interactiveMode"]
    path.write_text(json.dumps(doc))
    config = load_config(str(path))
    assert config.exec_plugin is not None
    assert config.exec_plugin.spec.interactive_mode == "IfAvailable"


def inline_ca(path: Path, data: str) -> None:
    """The kubeconfig's cluster with `certificate-authority-data` instead of a file."""
    doc = json.loads(path.read_text())
    cluster = doc["clusters"][0]["cluster"]
    del cluster["certificate-authority"]
    cluster["certificate-authority-data"] = data
    path.write_text(json.dumps(doc))


def test_inline_ca_data_verifies_from_memory_and_reaches_the_plugin(
    kube: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`certificate-authority-data` (base64 PEM, line breaks allowed) verifies
    the API server from memory, no temporary file, and the plugin's cluster
    info carries the same bytes."""

    def no_file(name: str, data: bytes) -> str:
        raise AssertionError(f"{name} was written to a temporary file")

    monkeypatch.setattr(kubeconfig_module, "_private_file", no_file)
    kube.tokens = {"t"}
    answer(tmp_path, token="t")
    path = kubeconfig(kube, tmp_path)
    ca = (kube.dir / "ca.crt").read_bytes()
    encoded = base64.b64encode(ca).decode()
    inline_ca(path, "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64)))
    config = load_config(str(path))
    assert config.ca_file is None and config.ca_data == ca
    client = SyncApiClient(config)
    client.request("GET", SLICES)  # verified with the inline CA
    client.close()
    sent = runs(tmp_path)[0]["info"]["spec"]["cluster"]["certificate-authority-data"]
    assert base64.b64decode(sent) == ca


def test_inline_ca_data_with_non_ascii_text_around_the_blocks_loads(
    kube: FakeKubeApi, tmp_path: Path
) -> None:
    """A bundle as `openssl` or a distribution writes it, with comments in any
    language around the PEM blocks: the blocks verify the server."""
    kube.tokens = {"t"}
    answer(tmp_path, token="t")
    path = kubeconfig(kube, tmp_path, provideClusterInfo=False)
    ca = (kube.dir / "ca.crt").read_bytes()
    commented = "# Issuer: CN=Főtanúsítvány\n".encode() + ca + "# vége\n".encode()
    inline_ca(path, base64.b64encode(commented).decode())
    client = SyncApiClient(load_config(str(path)))
    client.request("GET", SLICES)  # verified with the inline CA
    client.close()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not base64!", "certificate-authority-data is not base64"),
        ("bm90IFBFTQ==", "certificate-authority-data holds no PEM certificate"),
        (
            base64.b64encode(
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
            ).decode(),
            "cannot load",
        ),
        (
            base64.b64encode(
                b"-----BEGIN TRUSTED CERTIFICATE-----\nMIIB\n-----END TRUSTED CERTIFICATE-----\n"
            ).decode(),
            "holds a TRUSTED CERTIFICATE block",
        ),
    ],
)
def test_malformed_inline_ca_data_is_a_clear_error(
    kube: FakeKubeApi, tmp_path: Path, data: str, message: str
) -> None:
    path = kubeconfig(kube, tmp_path, provideClusterInfo=False)
    inline_ca(path, data)
    with pytest.raises(ConfigError, match=message):
        load_config(str(path)).ssl_context()
