"""The request latency histogram (api/metrics.py), read back with prometheus_client's parser."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from waypost.api.metrics import Metrics


def test_latency_buckets_count_each_request_once_at_its_bound() -> None:
    metrics = Metrics(lambda: {})
    for seconds in (0.0001, 0.0005, 0.0007, 1.0, 1.5, 0.2, 700.0):
        metrics.observe("PUT", 200, seconds)
    text = generate_latest(metrics.registry).decode()
    family = next(
        f for f in text_string_to_metric_families(text) if f.name == "waypost_http_request_seconds"
    )
    assert family.type == "histogram"
    values = {
        (s.name, s.labels.get("le", "")): s.value
        for s in family.samples
        if not s.name.endswith("_created")
    }
    bucket = "waypost_http_request_seconds_bucket"
    # A value on a bound is counted in it (Prometheus' le: less than or equal).
    assert values[(bucket, "0.0005")] == 2
    assert values[(bucket, "0.001")] == 3
    assert values[(bucket, "0.5")] == 4
    assert values[(bucket, "1.0")] == 5
    assert values[(bucket, "5.0")] == 6
    assert values[(bucket, "600.0")] == 6
    assert values[(bucket, "+Inf")] == values[("waypost_http_request_seconds_count", "")] == 7
    assert abs(values[("waypost_http_request_seconds_sum", "")] - 702.7013) < 1e-9
