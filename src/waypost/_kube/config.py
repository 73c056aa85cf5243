"""Where the Kubernetes API is and how to authenticate: in-cluster or kubeconfig.

The order client-go uses (`rest.InClusterConfig`, `clientcmd`):

1. An explicit kubeconfig path (`kubeconfig=` / `--kubeconfig`) wins.
2. Inside a pod (`KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT` set, the
   service-account token present): `https://$HOST:$PORT`, the token, `ca.crt`
   and `namespace` under `/var/run/secrets/kubernetes.io/serviceaccount/`.
3. Otherwise `$KUBECONFIG` (a `:`-separated list, merged: the first file to set
   a name wins, as kubectl does), else `~/.kube/config`; the current context
   unless one is named.

Tokens are re-read from their file: service-account tokens are time-bound (1 h
by default) and the kubelet rotates the file, so a token read once at start
stops working. `TokenSource` re-reads it every minute (client-go's period) and
at once after a 401. `exec` credential plugins (cloud logins) are run by
`execauth.py`: their token or client certificate is used until it expires,
and the plugin runs again then or after a 401. CA data given inline
(`certificate-authority-data`) stays in memory (ssl's `cadata`); client
certificates given inline (`client-certificate-data`, or from a plugin) are
written to a private temporary directory, since Python's ssl module loads
certificate chains only from files.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._exceptions import ConfigError
from .._tlsfiles import certificate_blocks
from .execauth import Credential, ExecPlugin, cluster_info, parse_spec

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_PERIOD = 60.0  # client-go's cachingTokenSource re-reads every minute


class TokenSource:
    """A bearer token, from a fixed string or re-read from a file.

    Args:
        token: A fixed token (kubeconfig `token:`).
        path: A token file (in-cluster, or kubeconfig `tokenFile:`).
        period: Seconds after which the file is read again.
        now: Monotonic time source.
    """

    def __init__(
        self,
        token: str | None = None,
        path: str | None = None,
        *,
        period: float = TOKEN_REREAD_PERIOD,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.period = period
        self._now = now
        self._token = token
        self._read_at = float("-inf")
        self.reads = 0

    def get(self) -> str | None:
        """The token to send now (the file is re-read when the period passed)."""
        if self.path is not None and self._now() - self._read_at >= self.period:
            self.refresh()
        return self._token

    def refresh(self) -> None:
        """Read the token file again (after a 401: the token may have rotated).

        Raises:
            ConfigError: The file cannot be read.
        """
        if self.path is None:
            return
        try:
            self._token = Path(self.path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the Kubernetes token file {self.path}: {exc}") from exc
        self._read_at = self._now()
        self.reads += 1


@dataclass
class KubeConfig:
    """How to reach one API server.

    Attributes:
        server: Base URL, `https://host:port`.
        namespace: The default namespace (the pod's, or the context's).
        token: The bearer token source, if any.
        ca_file: CA bundle to verify the server with.
        ca_data: The same given inline, PEM (neither: the system's CAs).
        insecure: Skip TLS verification (kubeconfig `insecure-skip-tls-verify`).
        client_cert: (certificate file, key file) for client-certificate auth.
        exec_plugin: The kubeconfig's exec credential plugin, if any: its token
            or client certificate replaces `token` and `client_cert`.
        source: Where this came from, for messages.
    """

    server: str
    namespace: str = "default"
    token: TokenSource | None = None
    ca_file: str | None = None
    ca_data: bytes | None = None
    insecure: bool = False
    client_cert: tuple[str, str] | None = None
    exec_plugin: ExecPlugin | None = None
    source: str = ""
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)
    _exec_cred: Credential | None = field(default=None, repr=False)
    cert_generation: int = 0  # moves when a plugin's new certificate replaced the old

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for this server (built once).

        Raises:
            ConfigError: The CA or client certificate does not load.
        """
        if self._ssl is None:
            try:
                ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self._cadata())
                if self.client_cert is not None:
                    ctx.load_cert_chain(*self.client_cert)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{self.source}: cannot load its TLS files: {exc}") from exc
            if self.insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ssl = ctx
        return self._ssl

    def _cadata(self) -> str | None:
        """`ca_data`'s certificate blocks, as ssl's `cadata` takes PEM: ASCII
        text. What is around the blocks is dropped, as OpenSSL skips it in a
        file: a bundle with `# Issuer: CN=Főtanúsítvány` comments loads."""
        if self.ca_data is None:
            return None
        blocks = certificate_blocks(self.ca_data)
        if not blocks:
            raise ConfigError(
                f"{self.source}: certificate-authority-data holds no PEM certificate "
                "(no BEGIN CERTIFICATE block)"
            )
        if any(block.startswith(b"-----BEGIN TRUSTED") for block in blocks):
            # ssl's cadata reads no trust settings (nor does client-go, which
            # takes CERTIFICATE blocks only): refused rather than half-loaded.
            raise ConfigError(
                f"{self.source}: certificate-authority-data holds a TRUSTED CERTIFICATE "
                "block; give it as a plain CERTIFICATE (`openssl x509 -in ca.pem`)"
            )
        try:
            return b"\n".join(blocks).decode("ascii")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{self.source}: certificate-authority-data has a certificate block "
                "that is not PEM (not ASCII)"
            ) from exc

    def auth_due(self) -> bool:
        """True if the next `auth_headers()` runs a plugin (async callers use a thread)."""
        return self.exec_plugin is not None and self.exec_plugin.due()

    def auth_headers(self) -> dict[str, str]:
        """The headers that authenticate the next request (and the client
        certificate an exec plugin returned, loaded into the TLS context).

        Raises:
            ExecPluginError: The exec plugin failed.
        """
        token = self.token.get() if self.token is not None else None
        if self.exec_plugin is not None:
            cred = self.exec_plugin.get()
            if cred is not self._exec_cred:
                self._use_exec_cert(cred)
                self._exec_cred = cred
            token = cred.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def refresh_credentials(self) -> bool:
        """After a 401: run the plugin again next time, or re-read the token
        file; True if there is something new to retry with."""
        if self.exec_plugin is not None:
            self.exec_plugin.invalidate()
            return True
        if self.token is None or self.token.path is None:
            return False
        try:
            self.token.refresh()
        except ConfigError:
            return False
        return True

    def _use_exec_cert(self, cred: Credential) -> None:
        """A new client certificate from the plugin, for every new connection.
        Connections already open keep theirs, and kube-apiserver checks a client
        certificate on every request, so the API clients drop their connections
        when `cert_generation` moves (client-go closes them too)."""
        if cred.cert_pem is None or cred.key_pem is None:
            return
        old = self.client_cert if self._exec_cred is not None else None
        self.client_cert = (
            _private_file("exec-client-certificate", cred.cert_pem),
            _private_file("exec-client-key", cred.key_pem),
        )
        if self._ssl is not None:
            self._ssl.load_cert_chain(*self.client_cert)
        self.cert_generation += 1
        for path in old or ():
            Path(path).unlink(missing_ok=True)

    def identity(self) -> tuple[str, str]:
        """What makes two configs the same connection (for sharing watches)."""
        return (self.server, self.source)


def load_config(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path | None = None,
) -> KubeConfig:
    """Find the API server: explicit kubeconfig, in-cluster, $KUBECONFIG, ~/.kube/config.

    Args:
        kubeconfig: A kubeconfig file to use (skips the in-cluster check).
        context: The context to use instead of the current one.
        environ: Environment (tests pass their own).
        service_account_dir: Where the pod's service-account files are
            (default `SERVICE_ACCOUNT_DIR`).

    Raises:
        ConfigError: Nothing usable was found, or a file is malformed.
    """
    env = os.environ if environ is None else environ
    service_account_dir = service_account_dir or SERVICE_ACCOUNT_DIR
    if kubeconfig:
        return from_kubeconfig([kubeconfig], context)
    if env.get("KUBERNETES_SERVICE_HOST") and (service_account_dir / "token").exists():
        return in_cluster(env, service_account_dir)
    paths = [p for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if not paths:
        default = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
        if not default.exists():
            raise ConfigError(
                "no Kubernetes configuration: not in a pod (KUBERNETES_SERVICE_HOST unset or "
                f"no token in {service_account_dir}), $KUBECONFIG unset and {default} missing"
            )
        paths = [str(default)]
    return from_kubeconfig(paths, context)


def in_cluster(env: Mapping[str, str], sa_dir: Path | None = None) -> KubeConfig:
    """The pod's own configuration (client-go's `rest.InClusterConfig`).

    Raises:
        ConfigError: A variable or file is missing.
    """
    sa_dir = sa_dir or SERVICE_ACCOUNT_DIR
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise ConfigError(
            "in a pod, KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set"
        )
    host = f"[{host}]" if ":" in host else host
    namespace_file = sa_dir / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
    ca = sa_dir / "ca.crt"
    token = TokenSource(path=str(sa_dir / "token"))
    token.refresh()  # fail now, clearly, if it cannot be read
    return KubeConfig(
        server=f"https://{host}:{port}",
        namespace=namespace or "default",
        token=token,
        ca_file=str(ca) if ca.exists() else None,
        source="in-cluster",
    )


def from_kubeconfig(paths: list[str], context: str | None = None) -> KubeConfig:
    """Read kubeconfig files (merged, first wins) and resolve one context.

    Raises:
        ConfigError: A file is unreadable or not a kubeconfig, or the context,
            cluster or user it names does not exist.
    """
    merged: dict[str, dict[str, Any]] = {"clusters": {}, "contexts": {}, "users": {}}
    current = ""
    for path in paths:
        doc = _read_yaml(path)
        current = current or str(doc.get("current-context") or "")
        for section in merged:
            for entry in doc.get(section) or []:
                if isinstance(entry, dict) and "name" in entry:
                    merged[section].setdefault(str(entry["name"]), {**entry, "_file": path})
    name = context or current
    where = ", ".join(paths)
    if not name:
        raise ConfigError(f"kubeconfig {where} has no current-context; name one with context=")
    ctx = _lookup(merged, "contexts", name, where).get("context") or {}
    cluster_entry = _lookup(merged, "clusters", str(ctx.get("cluster", "")), where)
    cluster = cluster_entry.get("cluster") or {}
    user_name = str(ctx.get("user", ""))
    user_entry = _lookup(merged, "users", user_name, where) if user_name else {}
    server = str(cluster.get("server") or "")
    if not server.startswith(("https://", "http://")):
        raise ConfigError(f"kubeconfig {where}: cluster of context {name!r} has no server URL")
    user, user_file = user_entry.get("user") or {}, user_entry.get("_file", "")
    ca_data = _data(cluster, "certificate-authority", where)
    ca_file = None if ca_data else _path(cluster, "certificate-authority", cluster_entry["_file"])
    plugin = None
    if user.get("exec"):
        spec = parse_spec(
            user["exec"],
            lambda path: _relative(path, user_file),
            f"kubeconfig {user_file} user {user_name!r}",
        )
        ca_pem = ca_data or _read_ca(ca_file)
        info = cluster_info(cluster, ca_pem) if spec.provide_cluster_info else None
        plugin = ExecPlugin(spec, info)
    return KubeConfig(
        server=server.rstrip("/"),
        namespace=str(ctx.get("namespace") or "default"),
        token=_token(user, user_file),
        ca_file=ca_file,
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        client_cert=_client_cert(user, user_file, where),
        exec_plugin=plugin,
        source=f"kubeconfig {where} context {name}",
    )


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError(
            "reading a kubeconfig needs PyYAML: pip install 'waypost[kubernetes]'"
        ) from exc
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read kubeconfig {path}: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"kubeconfig {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path} is not a mapping (apiVersion: v1, kind: Config)")
    return doc


def _lookup(merged: dict[str, dict[str, Any]], section: str, name: str, where: str) -> Any:
    entry = merged[section].get(name)
    if entry is None:
        known = ", ".join(sorted(merged[section])) or "none"
        raise ConfigError(f"kubeconfig {where} has no {section[:-1]} {name!r} (known: {known})")
    return entry


def _relative(path: str, kubeconfig_file: str) -> str:
    """Paths in a kubeconfig are relative to the file that holds them."""
    return str(Path(kubeconfig_file).parent / path) if kubeconfig_file else path


def _data(section: dict[str, Any], key: str, where: str) -> bytes | None:
    """`<key>-data`, decoded (base64, as kubectl writes it).

    Raises:
        ConfigError: It is not base64.
    """
    raw = section.get(f"{key}-data")
    if not raw:
        return None
    text = "".join(str(raw).split())  # line breaks (a folded YAML value) are not data
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error
        raise ConfigError(f"kubeconfig {where}: {key}-data is not base64: {exc}") from exc


def _path(section: dict[str, Any], key: str, kubeconfig_file: str) -> str | None:
    return _relative(str(section[key]), kubeconfig_file) if section.get(key) else None


def _file_or_data(
    section: dict[str, Any], key: str, kubeconfig_file: str, where: str
) -> str | None:
    """`<key>-data` written to a private file (what ssl loads certificate
    chains from), else `<key>` as a path."""
    data = _data(section, key, where)
    if data is not None:
        return _private_file(key, data)
    return _path(section, key, kubeconfig_file)


def _read_ca(path: str | None) -> bytes | None:
    """The CA bundle's bytes, for an exec plugin's cluster info."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the Kubernetes CA file {path}: {exc}") from exc


def _token(user: dict[str, Any], kubeconfig_file: str) -> TokenSource | None:
    if user.get("tokenFile"):
        source = TokenSource(path=_relative(str(user["tokenFile"]), kubeconfig_file))
        source.refresh()
        return source
    if user.get("token"):
        return TokenSource(token=str(user["token"]))
    return None


def _client_cert(user: dict[str, Any], kubeconfig_file: str, where: str) -> tuple[str, str] | None:
    cert = _file_or_data(user, "client-certificate", kubeconfig_file, where)
    key = _file_or_data(user, "client-key", kubeconfig_file, where)
    return (cert, key) if cert and key else None


_PRIVATE_DIR: str | None = None


def _private_file(name: str, data: bytes) -> str:
    global _PRIVATE_DIR
    if _PRIVATE_DIR is None:
        _PRIVATE_DIR = tempfile.mkdtemp(prefix="waypost-kube-")  # mode 0700
    fd, path = tempfile.mkstemp(prefix=name + "-", dir=_PRIVATE_DIR)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path
