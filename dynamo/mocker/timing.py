"""How long a simulated step takes, and a clock that waits for it without sleeping per step.

The step cost (TimingModel in args.py, milliseconds at speedup 1):

    step = step_overhead_ms + prefill_ms_per_token * max(0, T - memory_bound_tokens)
         + prefill_attn_ms_per_token_pair * P + decode_ms_per_seq * D + decode_ms_per_context_token * K

T tokens computed (prompt tokens + decoding sequences), P causal query-key pairs of the prefill
chunks, D decoding sequences reading K KV tokens in all. A step batches every running decode and as
many waiting prompts as --max-num-batched-tokens allows (scheduler.py), so concentrating requests on
one worker lengthens all of its steps: through T for prefills, through K for decodes.

Calibration of the defaults: Llama-3-8B (32 layers, hidden 4096, 32 query / 8 KV heads of 128, 16-bit,
TP1) on one H100-SXM with vLLM's kernels. Source: Vidur (Agrawal et al., MLSys 2024),
github.com/microsoft/vidur at 7d47513, data/profiling/compute/, per-operator GPU times (median ms
per layer) measured with vLLM's kernels:
  [Lh] h100/meta-llama/Llama-2-7b-hf/mlp.csv      every non-attention op of a layer vs num_tokens, H100
  [La] a100/meta-llama/Llama-2-7b-hf/mlp.csv      the same on A100-80GB
  [L3] a100/meta-llama/Meta-Llama-3-8B/mlp.csv    the same for Llama-3-8B on A100-80GB
  [A3] a100/meta-llama/Meta-Llama-3-8B/attention.csv   Llama-3-8B attention (FlashInfer) on A100-80GB
Vidur has no Llama-3-8B profile for H100, and its attention CSVs are Git LFS objects ([A3] was read
from a copy of the file in github.com/sw5sh/cs378-assignment3 at 7ac2fe9), so Llama-3-8B on H100 =
Llama-3-8B on A100 x the H100/A100 ratio measured for Llama-2-7B's ops, [Lh]/[La]: 0.611 for
n <= 64 tokens (reading the weights: bandwidth bound) and 0.328 for n >= 2048 (tensor-core bound).

Linear layers (32 x the per-layer ops + embedding, per step): [L3](n) * [Lh](n) / [La](n), e.g.
  n = 1:    9.699 * 5.602 / 9.283   = 5.85 ms        n = 4096: 273.81 * 83.59 / 258.62 = 88.50 ms
  mean over n <= 64: 6.35 ms (the weights read once); least squares over 1024 <= n <= 4096:
  3.46 + 0.021394 n ms; the two meet at n = (6.35 - 3.46) / 0.021394 = 135   -> memory_bound_tokens
Attention, least squares (relative error) over 24 decode and 30 prefill points of [A3], per layer:
  decode  0.00852 + 1.264e-4 per sequence + 2.574e-6 per KV token   (bs 1..400, kv 64..16128; <= 30%)
  prefill 5.61e-5 per token + 9.63e-8 per causal pair     (chunks 576..9216, kv 0..15552; <= 26%;
          with the chunk's n^2 counted whole instead of n(n+1)/2 the fit is twice as bad, 49%)
  then x 32 layers x 0.611 for decode (bandwidth bound) and x 0.328 for prefill (assumed: vLLM's
  FlashAttention-3 on Hopper reaches about the GEMMs' fraction of peak):
  decode  0.00852*32*0.611 = 0.167 ms a step, 1.264e-4*32*0.611 = 0.00247 ms a sequence,
          2.574e-6*32*0.611 = 5.03e-5 ms a KV token (= 128 KiB per token at 2.6 TB/s, 78% of 3.35 TB/s)
  prefill 5.61e-5*32*0.328 = 0.00059 ms a token, 9.63e-8*32*0.328 = 1.01e-6 ms a causal pair
Defaults: step_overhead_ms 6.35 + 0.17 = 6.52; prefill_ms_per_token 0.021394 + 0.00059 = 0.0220;
memory_bound_tokens 135; prefill_attn_ms_per_token_pair 1.01e-6; decode_ms_per_seq 0.0025;
decode_ms_per_context_token 5.03e-5. Against 35 profile steps (linear + attention; the points are in
tests/unit/test_mocker_timing.py) the model is within 13%. Not in the profile, so not in the model: the LM head (1 GB of weights, ~0.4 ms
a step), sampling and the engine's CPU work between steps.
What it gives: a decode step of 1 sequence with 100 tokens of context 6.53 ms, of 16 with 4,000
each 9.78 ms (their KV, 64,000 x 128 KiB = 8.4 GB, is read on top of the 16 GB of weights); a lone
4,000-token prompt 99.6 ms; two of them and 192 tokens of a third (one 8,192-token step) 200 ms.
"""

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


def causal_prefill_pairs(plan: StepPlan) -> int:
    """Query-key pairs the step's prefill chunks attend over: a chunk of n tokens after k computed
    ones, n*k + n*(n+1)/2 (causal). Reads each sequence's num_computed as the scheduler left it, so
    call it before Scheduler.complete(). (StepPlan.prefill_token_pairs counts a chunk's own n^2 whole.)"""
    if not plan.prefill_tokens:
        return 0
    pairs = 0
    for seq, n in plan.items:
        if n == 1 and len(seq.tokens) > seq.prompt_len:  # a decode (StepPlan.add's rule)
            continue
        pairs += n * seq.num_computed + n * (n + 1) // 2
    return pairs


def step_ms(plan: StepPlan, model: TimingModel) -> float:
    """Simulated duration of the step in milliseconds at speedup 1 (the formula above)."""
    tokens = plan.prefill_tokens + plan.decode_seqs
    return (model.step_overhead_ms
            + model.prefill_ms_per_token * max(0.0, tokens - model.memory_bound_tokens)
            + model.prefill_attn_ms_per_token_pair * causal_prefill_pairs(plan)
            + model.decode_ms_per_seq * plan.decode_seqs
            + model.decode_ms_per_context_token * plan.decode_context_tokens)


def step_seconds(plan: StepPlan, model: TimingModel, speedup_ratio: float) -> float:
    return step_ms(plan, model) / 1000.0 / speedup_ratio


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
