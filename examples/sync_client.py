"""The blocking API: no event loop anywhere (scripts, Django views, Celery tasks).

python examples/sync_client.py --agent http://127.0.0.1:8500
"""

from __future__ import annotations

import argparse

import waypost

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent", default="http://127.0.0.1:8500")
    args = parser.parse_args()
    with waypost.Discovery(args.agent) as discovery:
        for instance in discovery.instances("payment"):
            print(instance.id, instance.url, instance.tags, instance.meta)
        with waypost.ServiceClient("payment", discovery=discovery, balancer="p2c") as payment:
            print(payment.get("/api/payments").json())
