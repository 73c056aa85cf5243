"""Instructions per xDS encoder operation, counted by callgrind (load-proof).

The encoder (src/waypost/mesh/encoding.py) is asked, at every push, for the
digest of every resource of every node and for the encoded message of every
resource sent. This counts, for each tree given, the instructions of:

- `digest`: `Encoder.digest` of a resource already encoded (a hit),
- `message`: `Encoder.message` of a resource already encoded (a hit),
- `built`: one node's whole push of 1,000 clusters (`Built(...).response`:
  canonical texts, digests, version, messages, the serialized response),

as the difference between a run of ROUNDS and a run of 0 rounds (the same
imports and warm-up), divided by the operations. Usage:

    .venv/bin/python bench/mesh/encoder_instructions.py --tree /path/to/old --tree .
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
COUNT = 1000  # distinct resources


def work(kind: str, rounds: int) -> None:
    """The measured process: encode COUNT clusters, then `rounds` rounds of `kind`."""
    from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped]  # noqa: F401

    from waypost.mesh.encoding import Built, Encoder

    made = []
    for n in range(COUNT):
        res = {"@type": CLUSTER, "name": f"c{n}", "connectTimeout": "5s", "type": "EDS"}
        made.append((json.dumps(res, sort_keys=True), res))
    encoder = Encoder()
    for text, res in made:
        encoder.message(text, res)
    snap = {CLUSTER: {res["name"]: res for _, res in made}}
    names = [res["name"] for _, res in made]
    for _ in range(rounds):
        if kind == "built":
            Built(snap, encoder).response(CLUSTER, names)
        else:
            for text, res in made:
                if kind == "digest":
                    encoder.digest(text)
                else:
                    encoder.message(text, res)


def count(tree: Path, kind: str, rounds: int) -> int:
    out = f"{tempfile.mkdtemp()}/callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable]
    cmd += [__file__, "--work", kind, str(rounds)]
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONHASHSEED": "0"}  # same dicts
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    assert found is not None, done.stderr
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--work", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.work:
        return work(args.work[0], int(args.work[1]))
    for kind, rounds, per in (("digest", args.rounds, COUNT), ("message", args.rounds, COUNT)):
        for tree in args.tree:
            ops = (count(tree, kind, rounds) - count(tree, kind, 0)) / (rounds * per)
            print(f"{kind:8} {tree}: {ops:,.0f} instructions per operation", flush=True)
    for tree in args.tree:
        rounds = max(1, args.rounds // 5)
        ops = (count(tree, "built", rounds) - count(tree, "built", 0)) / rounds
        print(f"built    {tree}: {ops:,.0f} instructions per push of {COUNT}", flush=True)
    return None


if __name__ == "__main__":
    main()
