"""The KV router's settings (light: the frontend's flags import them before anything heavy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CostWeights:
    overlap_weight: float = 1.0  # --kv-overlap-score-weight
    temperature: float = 0.0  # --router-temperature
    busy_threshold: float | None = None  # --kv-busy-threshold (fraction of the worker's KV blocks)


@dataclass(frozen=True)
class KvRouterSettings:
    weights: CostWeights = field(default_factory=CostWeights)
    kv_events: bool = True  # False: approximate mode, the index learns from decisions only
    approximate_ttl: float = 120.0  # seconds a decision's blocks count as held, without events
    predicted_ttl: float = 5.0  # with events: until the engine's own events arrive
    seed: int | None = None  # tie-breaks and temperature draws (tests fix it)


class RouterObserver(Protocol):
    """What the KV router reports (the frontend's metrics implement it)."""

    def decided(self, candidate: Any, considered: int) -> None: ...

    def overlap_error_observed(self, predicted_tokens: int, cached_tokens: int) -> None: ...
