"""How long a simulated step takes, and a clock that waits for it without sleeping per step."""

from __future__ import annotations

import asyncio

from dynamo.mocker.args import TimingModel
from dynamo.mocker.scheduler import StepPlan

# Sleeping is only worth it above this much owed time; below it the loop just yields now and then.
_MIN_SLEEP_S = 0.001
# Yield to other tasks (consumers, the gRPC server) at least this often while running unthrottled.
_YIELD_EVERY_S = 0.001


def step_seconds(plan: StepPlan, model: TimingModel, speedup_ratio: float) -> float:
    ms = (model.step_overhead_ms
          + model.prefill_ms_per_token * plan.prefill_tokens
          + model.prefill_attn_ms_per_token_pair * plan.prefill_token_pairs
          + model.decode_ms_per_seq * plan.decode_seqs
          + model.decode_ms_per_context_token * plan.decode_context_tokens)
    return ms / 1000.0 / speedup_ratio


def transfer_seconds(num_tokens: int, bytes_per_token: int, bandwidth_gbps: float, speedup_ratio: float) -> float:
    return num_tokens * bytes_per_token / (bandwidth_gbps * 1e9) / speedup_ratio


class SimClock:
    """Keeps simulated time ahead of or level with real time.

    Each step pushes a deadline forward by its simulated duration; the loop sleeps only when the
    deadline is more than ~1 ms ahead of the real clock. When the host is slower than the simulation,
    the deadline is pulled up to now (no credit piles up), so at a high speedup the loop runs as fast
    as the host allows, yielding every ~1 ms so that consumers receive several tokens per wake-up.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time()
        self._last_yield = self._deadline

    async def advance(self, seconds: float) -> None:
        now = self._loop.time()
        self._deadline = max(self._deadline, now) + seconds
        ahead = self._deadline - now
        if ahead > _MIN_SLEEP_S:
            await asyncio.sleep(ahead)
            self._last_yield = self._loop.time()
        elif now - self._last_yield >= _YIELD_EVERY_S:
            await asyncio.sleep(0)
            self._last_yield = self._loop.time()
