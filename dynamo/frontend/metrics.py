"""Prometheus metrics of the HTTP layer, in a registry of their own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dynamo_frontend_requests", "Requests answered, by model, endpoint and HTTP status "
            "(a stream that failed after it started counts with the error's status)",
            ["model", "endpoint", "status"], registry=r)
        self.inflight = Gauge("dynamo_frontend_inflight_requests",
                              "Generate requests being served now", ["model"], registry=r)
        self.ttft = Histogram("dynamo_frontend_time_to_first_token_seconds",
                              "From request received to first token produced", ["model"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("dynamo_frontend_inter_token_latency_seconds",
                             "Gap between streamed outputs divided by the tokens they carried "
                             "(one observation per output)", ["model"], buckets=_ITL_BUCKETS,
                             registry=r)
        self.input_tokens = Counter("dynamo_frontend_input_tokens", "Prompt tokens", ["model"],
                                    registry=r)
        self.output_tokens = Counter("dynamo_frontend_output_tokens",
                                     "Completion tokens returned to clients", ["model"], registry=r)
        self.duration = Histogram("dynamo_frontend_request_duration_seconds",
                                  "From request received to last byte sent", ["model", "endpoint"],
                                  buckets=_LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
