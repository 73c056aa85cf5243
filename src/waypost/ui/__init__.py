"""The web UI: plain ES modules served by the agent, reading its API with blocking queries.

No build step and no library: the files under `static/` are what the browser
runs (docs/architecture.md says why). Every path under `/ui/` that is not a
file is the page itself, so a deep link (`/ui/services/payment`) survives a
reload; the page's router reads the path.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from typing import Final

from ..api.http import Request, Response, Router

ASSET_PREFIX: Final = "assets/"
TYPES: Final = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".html": b"text/html; charset=utf-8",
    ".svg": b"image/svg+xml",
}
# The page loads nothing from elsewhere and runs no inline script: a service
# name or check output that smuggles markup cannot run as code.
SECURITY_HEADERS: Final = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class _Asset:
    __slots__ = ("body", "etag", "type")

    def __init__(self, body: bytes, content_type: bytes) -> None:
        self.body = body
        self.type = content_type
        self.etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'

    def response(self, req: Request) -> Response:
        headers = [
            (b"content-type", self.type),
            (b"cache-control", b"no-cache"),  # revalidate: an upgraded agent serves new files
            (b"etag", self.etag),
            *SECURITY_HEADERS,
        ]
        if _header(req, b"if-none-match") == self.etag:
            return Response(304, b"", headers)
        return Response(200, self.body, headers)


def load_assets() -> dict[str, _Asset]:
    """Every file under static/, by its path there ("index.html", "assets/app.js")."""
    root = files(__package__).joinpath("static")
    found: dict[str, _Asset] = {}
    pending = [("", root)]
    while pending:
        prefix, folder = pending.pop()
        for item in folder.iterdir():
            name = prefix + item.name
            if item.is_dir():
                pending.append((name + "/", item))
            elif (kind := TYPES.get("." + item.name.rpartition(".")[2])) is not None:
                found[name] = _Asset(item.read_bytes(), kind)
    return found


def mount(router: Router) -> None:
    """Serve the page at /ui/ and below; redirect / and /ui to /ui/."""
    assets = load_assets()
    page = assets["index.html"]

    async def ui(req: Request, rest: str) -> Response:
        if rest.startswith(ASSET_PREFIX):
            asset = assets.get(rest)
            if asset is None:
                return Response(404, f"no such file: /ui/{rest}".encode(), [])
            return asset.response(req)
        return page.response(req)

    async def to_ui(req: Request, _: str) -> Response:
        return Response(301, b"", [(b"location", b"/ui/")])

    router.add("GET HEAD", "/ui/", ui)
    router.add("GET HEAD", "/ui", to_ui)
    router.add("GET HEAD", "/", to_ui)


def _header(req: Request, name: bytes) -> bytes:
    for key, value in req.headers:
        if key == name:
            return value
    return b""
