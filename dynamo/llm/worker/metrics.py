"""Prometheus metrics of a worker (served on the system port's /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry, model: str, role: str) -> None:
        labels = {"model": model, "role": role}
        names = list(labels)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*names, *extra], registry=registry)

        self.requests = counter("dynamo_worker_requests_total", "Generate requests by final status",
                                ("status",))
        self.output_tokens = counter("dynamo_worker_output_tokens_total", "Tokens generated")
        self.prompt_tokens = counter("dynamo_worker_prompt_tokens_total", "Prompt tokens received")
        self.cached_tokens = counter("dynamo_worker_cached_prompt_tokens_total",
                                     "Prompt tokens served from the prefix cache or a remote prefill")
        self.errors = counter("dynamo_worker_request_errors_total", "Failed requests by kind", ("kind",))
        self.cancellations = counter("dynamo_worker_request_cancellations_total",
                                     "Requests cancelled by the client")
        self.prefills = counter("dynamo_worker_prefills_total",
                                "Decode role: prompts prefilled remotely vs locally", ("location",))
        self.canaries = counter("dynamo_worker_canary_requests_total",
                                "Health canary generations by result", ("result",))
        self.inflight = Gauge("dynamo_worker_inflight_requests", "Generate streams open", names,
                              registry=registry)
        self.ttft = Histogram("dynamo_worker_time_to_first_token_seconds",
                              "Time from request to first token at the worker", names,
                              buckets=_LATENCY_BUCKETS, registry=registry)
        self.kv_usage = Gauge("dynamo_worker_kv_cache_usage_ratio", "Fraction of KV blocks in use", names,
                              registry=registry)
        self.kv_blocks = Gauge("dynamo_worker_kv_cache_blocks", "KV cache capacity in blocks", names,
                               registry=registry)
        self.running = Gauge("dynamo_worker_running_requests", "Requests the engine is running", names,
                             registry=registry)
        self.waiting = Gauge("dynamo_worker_waiting_requests", "Requests waiting in the engine", names,
                             registry=registry)
        self.healthy = Gauge("dynamo_worker_healthy", "1 when the last health check passed", names,
                             registry=registry)
        self.labels = labels

    def bind(self) -> BoundWorkerMetrics:
        return BoundWorkerMetrics(self)


class BoundWorkerMetrics:
    """Children resolved once (label lookups cost microseconds on the hot path)."""

    def __init__(self, m: WorkerMetrics) -> None:
        lv = m.labels
        self.output_tokens = m.output_tokens.labels(**lv)
        self.prompt_tokens = m.prompt_tokens.labels(**lv)
        self.cached_tokens = m.cached_tokens.labels(**lv)
        self.cancellations = m.cancellations.labels(**lv)
        self.inflight = m.inflight.labels(**lv)
        self.ttft = m.ttft.labels(**lv)
        self.kv_usage = m.kv_usage.labels(**lv)
        self.kv_blocks = m.kv_blocks.labels(**lv)
        self.running = m.running.labels(**lv)
        self.waiting = m.waiting.labels(**lv)
        self.healthy = m.healthy.labels(**lv)
        self._m = m

    def request_done(self, status: str) -> None:
        self._m.requests.labels(**self._m.labels, status=status).inc()

    def error(self, kind: str) -> None:
        self._m.errors.labels(**self._m.labels, kind=kind).inc()

    def canary(self, result: str) -> None:
        self._m.canaries.labels(**self._m.labels, result=result).inc()

    def prefill(self, location: str) -> None:
        self._m.prefills.labels(**self._m.labels, location=location).inc()
