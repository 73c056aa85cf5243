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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--agent", default=os.environ.get("WAYPOST_AGENT", "http://127.0.0.1:8500"))
    parser.add_argument("--advertise", default=os.environ.get("ADVERTISE_ADDRESS"))
    args = parser.parse_args()
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
