"""How long a simulated step takes, and a clock that waits for it without sleeping per step."""

from __future__ import annotations

import asyncio

from dynamo.mocker.args import TimingModel
from dynamo.mocker.scheduler import StepPlan

# Sleeping is only worth it above this much owed time; below it the loop just yields now and then.
_MIN_SLEEP_S = 0.001
# While running unthrottled, yield to other tasks (consumers, the gRPC server) after this much wall
# time and at least this many steps, so every wake-up carries several tokens per stream even for a
# large batch: that is what keeps per-message costs (gRPC ~40 us a message) off the token rate.
_YIELD_EVERY_S = 0.002
_YIELD_MIN_STEPS = 4
# How far the simulation may lag real time and still catch up (absorbs sleep overshoot); beyond it the
# lag is forgotten, so a host slower than the simulation never causes a burst later.
_MAX_LAG_S = 0.002


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
    the deadline is pulled up to at most ~2 ms behind now (no credit piles up), so at a high speedup
    the loop runs as fast as the host allows, yielding every ~2 ms (and >= 4 steps) so that
    consumers receive several tokens per wake-up.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time()
        self._last_yield = self._deadline
        self._steps_since_yield = 0

    async def advance(self, seconds: float) -> None:
        now = self._loop.time()
        self._deadline = max(self._deadline, now - _MAX_LAG_S) + seconds
        ahead = self._deadline - now
        self._steps_since_yield += 1
        if ahead > _MIN_SLEEP_S:
            await asyncio.sleep(ahead)
        elif now - self._last_yield >= _YIELD_EVERY_S and self._steps_since_yield >= _YIELD_MIN_STEPS:
            await asyncio.sleep(0)
        else:
            return
        self._last_yield = self._loop.time()
        self._steps_since_yield = 0
