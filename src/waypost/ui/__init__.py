"""The web UI: one static page that reads the agent's own API with blocking queries."""

from __future__ import annotations

from importlib.resources import files

from ..api.http import Request, Response, Router


def mount(router: Router) -> None:
    """Serve the page at /ui/ (and redirect / to it); it needs nothing but the API."""
    page = files(__package__).joinpath("index.html").read_bytes()

    async def index(req: Request, _: str) -> Response:
        return Response(200, page, [(b"content-type", b"text/html; charset=utf-8")])

    async def root(req: Request, _: str) -> Response:
        return Response(302, b"", [(b"location", b"/ui/")])

    router.add("GET HEAD", "/ui/", index)
    router.add("GET HEAD", "/", root)
