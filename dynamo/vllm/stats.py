"""Keep the latest scheduler numbers vLLM reports, through its stat-logger hook."""

from __future__ import annotations

from typing import Any

from vllm.config import VllmConfig
from vllm.v1.metrics.loggers import StatLoggerBase

from dynamo.llm.protocol import EngineStats


class LatestStats(StatLoggerBase):
    """A vLLM stat logger that logs nothing: it keeps the last SchedulerStats as EngineStats.

    vLLM calls `record` from AsyncLLM's output loop (our event loop) after each engine step.
    """

    def __init__(self, vllm_config: VllmConfig, engine_index: int = 0) -> None:
        self._vllm_config = vllm_config
        self.latest = EngineStats()

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        if scheduler_stats is None:
            return
        total = self._vllm_config.cache_config.num_gpu_blocks or 0
        usage = float(scheduler_stats.kv_cache_usage)
        self.latest = EngineStats(
            running_requests=scheduler_stats.num_running_reqs,
            waiting_requests=scheduler_stats.num_waiting_reqs
            + getattr(scheduler_stats, "num_skipped_waiting_reqs", 0),
            kv_usage=usage,
            kv_total_blocks=total,
            kv_active_blocks=round(usage * total),
        )

    def log_engine_initialized(self) -> None:
        pass


class StatsSink:
    """Hands vLLM a factory for the LatestStats logger and keeps the instance it makes."""

    def __init__(self) -> None:
        self.logger: LatestStats | None = None

    def factory(self, vllm_config: VllmConfig, engine_index: int = 0) -> LatestStats:
        self.logger = LatestStats(vllm_config, engine_index)
        return self.logger

    def latest(self) -> EngineStats:
        return self.logger.latest if self.logger is not None else EngineStats()
