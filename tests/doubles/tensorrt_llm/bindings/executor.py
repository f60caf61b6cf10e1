"""TEST DOUBLE of a few ``tensorrt_llm.bindings.executor`` (C++ binding) types, as plain Python.

Only what the double's executor hands to ``executor/result.py``: ``FinishReason``, ``Response`` /
``Result`` (attribute names as the binding's), ``ContextPhaseParams`` and ``RequestPerfMetrics``.
"""

import datetime
import enum
from dataclasses import dataclass, field
from typing import Any, List, Optional


class FinishReason(enum.Enum):
    """Mirror of the C++ ``executor::FinishReason``."""

    NOT_FINISHED = 0
    END_ID = 1
    STOP_WORDS = 2
    LENGTH = 3
    TIMED_OUT = 4
    CANCELLED = 5


@dataclass
class ContextPhaseParams:
    """Mirror of ``executor::ContextPhaseParams`` (``req_id`` is the context server's request id)."""

    first_gen_tokens: List[int]
    req_id: int
    opaque_state: Optional[bytes]
    draft_tokens: Optional[List[int]] = None


@dataclass
class TimingMetrics:
    arrival_time: datetime.timedelta = datetime.timedelta(0)
    first_scheduled_time: datetime.timedelta = datetime.timedelta(0)
    first_token_time: datetime.timedelta = datetime.timedelta(0)
    last_token_time: datetime.timedelta = datetime.timedelta(0)
    kv_cache_size: int = 0
    kv_cache_transfer_start: datetime.timedelta = datetime.timedelta(0)
    kv_cache_transfer_end: datetime.timedelta = datetime.timedelta(0)


@dataclass
class KvCacheMetrics:
    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass
class SpeculativeDecodingMetrics:
    acceptance_rate: float = 0.0
    total_accepted_draft_tokens: int = 0
    total_draft_tokens: int = 0


@dataclass
class RequestPerfMetrics:
    """Mirror of ``executor::RequestPerfMetrics`` (times are steady-clock ``timedelta`` values)."""

    timing_metrics: TimingMetrics = field(default_factory=TimingMetrics)
    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)
    speculative_decoding: SpeculativeDecodingMetrics = field(default_factory=SpeculativeDecodingMetrics)
    first_iter: Optional[int] = None
    last_iter: Optional[int] = None
    iter: Optional[int] = None


@dataclass
class Result:
    """Mirror of ``executor::Result`` (one beam: ``output_token_ids`` / ``finish_reasons`` are per-beam lists)."""

    is_final: bool
    output_token_ids: List[List[int]]
    finish_reasons: List[FinishReason]
    sequence_index: int = 0
    is_sequence_final: bool = False
    decoding_iter: int = 0
    cached_tokens: int = 0
    avg_decoded_tokens_per_iter: Optional[float] = None
    context_phase_params: Optional[ContextPhaseParams] = None
    cum_log_probs: Optional[List[float]] = None
    log_probs: Optional[List[List[Any]]] = None
    context_logits: Any = None
    generation_logits: Any = None
    request_perf_metrics: Optional[RequestPerfMetrics] = None


@dataclass
class Response:
    """Mirror of ``executor::Response``: either a ``result`` or an ``error_msg``."""

    request_id: int
    client_id: int
    result: Optional[Result] = None
    error_msg: Optional[str] = None

    def has_error(self) -> bool:
        return self.error_msg is not None
