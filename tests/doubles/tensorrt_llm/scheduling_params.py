"""TEST DOUBLE of ``tensorrt_llm/scheduling_params.py`` (accepted by ``generate_async``, not simulated)."""

from dataclasses import dataclass
from typing import Optional


@dataclass(slots=True, kw_only=True)
class SchedulingParams:
    """Schedule parameters (attention-DP placement); the double accepts and ignores them."""

    attention_dp_rank: Optional[int] = None
    attention_dp_relax: Optional[bool] = None
