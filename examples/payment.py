"""A payment service instance: registers itself and answers /api/payments.

    python examples/payment.py --port 3001 --agent http://127.0.0.1:8500

Registration is tied to the app's lifespan (registered once uvicorn is ready,
deregistered as soon as shutdown starts); `/health` is answered for the
agent's HTTP check.
"""

from __future__ import annotations

import argparse
import os

import uvicorn

import waypost
from waypost.client import with_registration


async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
    if scope["type"] != "http":
        return
    body = f'{{"instance": "{os.environ.get("INSTANCE", "payment")}", "status": "paid"}}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--agent", default=os.environ.get("WAYPOST_AGENT", "http://127.0.0.1:8500"))
    parser.add_argument("--advertise", default=os.environ.get("ADVERTISE_ADDRESS"))
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="do not register (on Kubernetes, waypost k8s-sync registers the pods)",
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.no_register:  # every path answers 200, /health included
        uvicorn.run(app, host=args.host, port=args.port)
        return
    registration = waypost.Registration(
        "payment",
        port=args.port,
        address=args.advertise,  # None: detected from the route to the agent
        agent=args.agent,
        check=waypost.HttpCheck("/health", interval="2s", deregister_after="1m"),
        meta={"version": "1"},
    )
    uvicorn.run(with_registration(app, registration), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
