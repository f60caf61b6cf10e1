"""Prometheus metrics of the HTTP layer, in a registry of their own (one per app)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from dynamo.frontend.multiprocess import METRICS_DIR_ENV
from dynamo.runtime.discovery import malformed

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# predicted minus reported cached prompt tokens: 0 when the router's index is right
_OVERLAP_ERROR_BUCKETS = (-4096, -1024, -256, -64, -16, -1, 0, 16, 64, 256, 1024, 4096)


class RouterMetrics:
    """The KV router's decisions and how right its predictions were (a RouterObserver)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter("dynamo_frontend_router_decisions", "Requests the KV router placed",
                                 registry=registry)
        self.overlap_blocks = Histogram("dynamo_frontend_router_overlap_blocks",
                                        "Prompt blocks the chosen worker already held, per decision",
                                        buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=registry)
        self.overlap_error = Histogram(
            "dynamo_frontend_router_overlap_error_tokens",
            "Prompt tokens the router predicted cached on the chosen worker minus those the worker "
            "reported cached", buckets=_OVERLAP_ERROR_BUCKETS, registry=registry)

    def decided(self, candidate: Any, considered: int) -> None:
        self.decisions.inc()
        self.overlap_blocks.observe(candidate.overlap_blocks)

    def overlap_error_observed(self, predicted_tokens: int, cached_tokens: int) -> None:
        self.overlap_error.observe(predicted_tokens - cached_tokens)


class RouterStateCollector(Collector):
    """The router's index size and event counts, read when scraped (no bookkeeping on the hot path)."""

    def __init__(self) -> None:
        self.state: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        state = self.state() if self.state is not None else {}
        if state.get("mode") != "kv":
            return
        blocks = GaugeMetricFamily("dynamo_frontend_router_index_blocks",
                                   "Distinct prompt blocks the KV router's index holds", labels=["source"])
        blocks.add_metric(["events"], state.get("blocks", 0))
        yield blocks
        yield GaugeMetricFamily("dynamo_frontend_router_guesses", "Routing decisions whose prompt the KV "
                                "router still counts as held by the chosen worker (within their TTL)",
                                value=state.get("guesses", 0))
        yield GaugeMetricFamily("dynamo_frontend_router_index_workers", "Workers in the KV router's index",
                                value=len(state.get("workers", {})))
        counters = state.get("counters", {})
        events = CounterMetricFamily("dynamo_frontend_router_kv_events", "KV events taken in, by outcome",
                                     labels=["outcome"])
        events.add_metric(["applied"], counters.get("events_applied", 0))
        events.add_metric(["dropped"], counters.get("events_dropped", 0))
        yield events
        yield CounterMetricFamily("dynamo_frontend_router_resyncs", "Workers whose index entries were dropped "
                                  "after a gap in their events or a new subscription", value=counters.get("resyncs", 0))


class IdlePrefillCollector(Collector):
    """Prefill workers that no request can reach, per model (read when scraped)."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, Any]] | None = None

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("dynamo_frontend_idle_prefill_workers",
                                  "Live prefill workers of a model that no worker can continue (see /health)",
                                  labels=["model"])
        for model, idle in (self.source() if self.source is not None else {}).items():
            gauge.add_metric([model], idle.workers)
        yield gauge


class PacingCollector(Collector):
    """How far apart this process hands out a stream's outputs now (read when scraped)."""

    def __init__(self) -> None:
        self.source: Any = None  # the backend's OutputPacing (None: unpaced)

    def collect(self) -> Iterator[Metric]:
        pacing = self.source
        yield GaugeMetricFamily("dynamo_frontend_stream_pacing_seconds",
                                "Least time between two output deliveries (SSE chunks) of one stream in this "
                                "process now: open streams / --stream-chunk-rate (0: unpaced)",
                                value=pacing.interval() if pacing is not None else 0.0)


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "dynamo_frontend_requests", "Requests answered, by model, endpoint and HTTP status "
            "(a stream that failed after it started counts with the error's status)",
            ["model", "endpoint", "status"], registry=r)
        self.inflight = Gauge("dynamo_frontend_inflight_requests",
                              "Generate requests being served now", ["model"], registry=r,
                              multiprocess_mode="livesum")  # --num-workers: the processes' sum
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
        self.router = RouterMetrics(r)
        self.router_state = RouterStateCollector()
        r.register(self.router_state)
        self.idle_prefill = IdlePrefillCollector()
        r.register(self.idle_prefill)
        self.pacing = PacingCollector()
        r.register(self.pacing)
        r.register(malformed.COLLECTOR)  # discovery records this process skipped

    def render(self) -> bytes:
        if os.environ.get(METRICS_DIR_ENV):  # one of --num-workers processes: every process's figures
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self.router_state)  # the answering process's own index
            registry.register(self.idle_prefill)
            registry.register(self.pacing)  # the answering process's
            registry.register(malformed.COLLECTOR)
            return generate_latest(registry)
        return generate_latest(self.registry)
