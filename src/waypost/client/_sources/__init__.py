"""Discovery sources: where instance lists come from, behind one interface.

A source answers "which instances of service X are healthy" and, when it can,
blocks until that answer changes (`Source.blocking`). Sources are picked by URL
scheme, with their implementation imported only when used:

    http://host:port / https://...   Consul HTTP API (waypost agent or Consul)
    dns://host:port                  DNS SRV, falling back to A
    static://10.0.0.5:3000,...       a fixed list (tests, local development)
    k8s://?namespace=NS&port=NAME    Kubernetes EndpointSlices (list + watch)
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ._base import Answer, Source

_SCHEMES = {
    "http": "waypost.client._sources._agent:AgentSource",
    "https": "waypost.client._sources._agent:AgentSource",
    "dns": "waypost.client._sources._dns:DnsSource",
    "static": "waypost.client._sources._static:StaticSource",
    "k8s": "waypost.client._sources._k8s:K8sSource",
}


def source_from_url(url: str) -> Source:
    """Build the source a URL names.

    Args:
        url: `http://host:port`, `dns://host:port`, `static://h:p,h:p` or `k8s://`.

    Raises:
        ValueError: The scheme is not one of http, https, dns, static, k8s.
        ConfigError: `k8s://` finds no usable Kubernetes configuration.
    """
    scheme = urlsplit(url).scheme
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ValueError(
            f"discovery URL {url!r} has no known scheme; use http://, dns://, static:// or k8s://"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    source: Source = cls.from_url(url)
    return source


__all__ = ["Answer", "Source", "source_from_url"]
