"""The xDS encoder's cache (mesh/encoding.py): bounded by bytes, least recently used first."""

from __future__ import annotations

import json

from envoy.config.cluster.v3 import cluster_pb2  # type: ignore[import-untyped]  # noqa: F401

from waypost.mesh import resources as r
from waypost.mesh.encoding import Built, Encoder


def cluster(n: int) -> tuple[str, r.JSON]:
    """A Cluster of about 2 KB (its name carries the bulk)."""
    resource = {"@type": r.CLUSTER, "name": f"c{n}-" + "x" * 2000}
    return json.dumps(resource, sort_keys=True), resource


def test_the_cache_holds_at_most_its_budget_and_keeps_the_newest() -> None:
    """Many distinct resources (each ~4 KB encoded: text and message) through a
    400 KB cache: it stays within the budget, and what came last (what is in
    use) stays encoded; a cache cleared whole when full would keep only what
    came after the last clear."""
    budget = 400_000
    encoder = Encoder(budget)
    made = [cluster(n) for n in range(150)]  # ~600 KB: over the budget by half
    first = [encoder.message(text, resource) for text, resource in made]
    assert encoder._by_text.bytes <= budget
    assert len(encoder._by_text) <= budget // 4000  # the messages' bytes count too
    newest = made[-80:]  # ~320 KB: fits
    kept = [
        encoder.message(text, res) is msg
        for (text, res), msg in zip(newest, first[-80:], strict=True)
    ]
    assert all(kept)
    text, resource = made[0]
    assert encoder.message(text, resource) is not first[0]  # the oldest went first


def test_what_every_push_asks_for_stays_and_a_digest_is_the_contents() -> None:
    """What every push asks for stays encoded however long ago it came: a
    push (`Built.response`, which asks for digests, then messages) or a digest
    alone refreshes an entry, so the oldest untouched one goes instead. A
    digest is the content's: the same after eviction, and from another encoder."""
    encoder = Encoder(400_000)
    made = [cluster(n) for n in range(150)]  # ~600 KB: over the budget by half
    digests = [encoder.digest(text) for text, _ in made[:3]]
    first = [encoder.message(text, resource) for text, resource in made[:3]]
    pushed = made[0][1]
    for n, (text, resource) in enumerate(made[3:]):
        encoder.message(text, resource)
        if n % 10 == 0:
            Built({r.CLUSTER: {pushed["name"]: pushed}}, encoder).response(
                r.CLUSTER, [pushed["name"]]
            )
            encoder.digest(made[1][0])  # only its version, as for a resource not resent
    assert encoder.message(*made[0]) is first[0]
    assert encoder.message(*made[1]) is first[1]
    assert encoder.message(*made[2]) is not first[2]  # untouched: evicted, encoded again
    assert [encoder.digest(text) for text, _ in made[:3]] == digests
    assert [Encoder().digest(text) for text, _ in made[:3]] == digests
    assert len(set(digests)) == 3
