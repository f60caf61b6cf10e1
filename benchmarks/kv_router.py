"""KV-aware routing vs round-robin vs least-loaded, on a shared-prefix workload over mocker workers.

    .venv/bin/python -m benchmarks.kv_router [--workers 4] [--prefixes 8] [--rates 3,5] [--requests 120]
                                            [--speedup-ratio 0.25] [--repeat 1]

The workload (seeded, the same for every policy): `--prefixes` shared prefixes of 2-6k tokens and
per request a 100-500-token suffix, one prefix picked uniformly per request; open-loop Poisson
arrivals at each of `--rates` requests/s; streaming completions of `--max-tokens` tokens
(ignore_eos) with token-id prompts. Mocker workers (`--speedup-ratio` < 1 slows their simulated H100
so that queueing matters on this machine) each hold KV for about 2.5 prefixes, so where a request
lands decides whether its prefix is cached. For each rate, each policy gets a fresh frontend
(`--router-mode`) and emptied worker caches (ClearKvBlocks), then the same requests.

Prints per rate and policy: TTFT p50/p90, output tok/s, ITL p50 (the median over requests of their
mean gap between streamed chunks), the prefix-cache hit ratio the workers reported (cached / prompt
tokens), and the frontend's CPU per request; then the goals against round-robin: TTFT p90 >= 3x
lower, throughput >= 1.2x, ITL p50 no more than 5% worse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psutil

from benchmarks._common import ensure_tiny_model, percentile, run_main, track
from dynamo.llm.proto import worker_pb2 as pb
from tests.support.processes import FrontendProcess, WorkerProcess

POLICIES = ("kv", "round-robin", "least-loaded")
MODEL = "tiny"


@dataclass
class Sample:
    ttft: float
    itl: float  # mean gap between content chunks after the first
    tokens: int
    prompt: int
    cached: int
    end: float


def workload(a: argparse.Namespace) -> list[list[int]]:
    rng = random.Random(a.seed)
    vocab = 1000
    prefixes = [[rng.randrange(3, vocab) for _ in range(rng.randint(2000, 6000))] for _ in range(a.prefixes)]
    return [rng.choice(prefixes) + [rng.randrange(3, vocab) for _ in range(rng.randint(100, 500))]
            for _ in range(a.requests)]


async def one(client: httpx.AsyncClient, prompt: list[int], max_tokens: int, t0: float) -> Sample:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    chunks: list[float] = []
    usage: dict = {}
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                chunks.append(time.perf_counter())
    gaps = [b - a for a, b in zip(chunks, chunks[1:])]
    details = usage.get("prompt_tokens_details") or {}
    return Sample(ttft=(chunks[0] - start) if chunks else math.nan, itl=statistics.mean(gaps) if gaps else math.nan,
                  tokens=int(usage.get("completion_tokens") or 0), prompt=int(usage.get("prompt_tokens") or 0),
                  cached=int(details.get("cached_tokens") or 0), end=time.perf_counter() - t0)


async def drive(url: str, prompts: list[list[int]], rate: float, a: argparse.Namespace) -> tuple[list[Sample], float]:
    rng = random.Random(a.seed + 1)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=a.timeout, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = []
        due = 0.0
        for prompt in prompts:
            due += rng.expovariate(rate)
            delay = t0 + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(client, prompt, a.max_tokens, t0)))
        samples = await asyncio.gather(*tasks)
    return list(samples), time.perf_counter() - t0


async def clear_caches(workers: list[WorkerProcess]) -> None:
    for w in workers:
        assert w.record is not None
        async with grpc.aio.insecure_channel(w.record.target) as ch:
            await ch.unary_unary("/dynamo.llm.v1.Worker/ClearKvBlocks",
                                 request_serializer=pb.ClearKvBlocksRequest.SerializeToString,
                                 response_deserializer=pb.ClearKvBlocksResponse.FromString)(pb.ClearKvBlocksRequest(),
                                                                                            timeout=10)


@dataclass
class Outcome:
    policy: str
    rate: float
    ttft_p50: float
    ttft_p90: float
    tok_s: float
    itl_p50: float
    hit: float
    fe_cpu_ms: float


async def run_policy(policy: str, rate: float, prompts: list[list[int]], workers: list[WorkerProcess], d: Path,
                     a: argparse.Namespace) -> Outcome:
    await clear_caches(workers)
    fe = FrontendProcess(d, "--router-mode", policy, "--log-level", "warning", namespace="bench")
    track(fe.proc.pid)
    try:
        await fe.wait_models({MODEL}, 60)
        proc = psutil.Process(fe.proc.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        samples, wall = await drive(fe.base_url.removesuffix("/v1"), prompts, rate, a)
        cpu = sum(proc.cpu_times()[:2]) - cpu0
    finally:
        fe.close()
    ttfts = [s.ttft for s in samples if not math.isnan(s.ttft)]
    itls = [s.itl for s in samples if not math.isnan(s.itl)]
    out = Outcome(policy, rate, percentile(ttfts, 50), percentile(ttfts, 90),
                  sum(s.tokens for s in samples) / max(s.end for s in samples), statistics.median(itls),
                  sum(s.cached for s in samples) / max(1, sum(s.prompt for s in samples)),
                  cpu / len(samples) * 1e3)
    print(f"  rate {rate:g}/s {policy:>12}: TTFT p50 {out.ttft_p50 * 1e3:7.0f} ms  p90 {out.ttft_p90 * 1e3:7.0f} ms  "
          f"{out.tok_s:6.0f} tok/s  ITL p50 {out.itl_p50 * 1e3:5.1f} ms  hits {out.hit:4.0%}  "
          f"frontend {out.fe_cpu_ms:5.1f} ms CPU/request  ({wall:.0f} s)", flush=True)
    return out


async def run(a: argparse.Namespace) -> None:
    model = ensure_tiny_model()
    prompts = workload(a)
    mean_prefix = statistics.mean(len(p) for p in prompts)
    blocks = int(a.kv_prefixes * mean_prefix / a.block_size)
    rates = [float(r) for r in a.rates.split(",")]
    results: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-kv-router-") as tmp:
        d = Path(tmp)
        workers: list[WorkerProcess] = []
        try:
            for i in range(a.workers):
                w = WorkerProcess("mocker", ["--model", str(model), "--served-model-name", MODEL,
                                             "--speedup-ratio", str(a.speedup_ratio), "--block-size", str(a.block_size),
                                             "--num-gpu-blocks", str(blocks), "--max-model-len", "8192"],
                                  d, namespace="bench", name=f"kv-mocker{i}")
                track(w.pid)
                workers.append(await w.ready(60))
            print(f"{a.workers} mockers (speedup {a.speedup_ratio:g}, {blocks} blocks of {a.block_size} = "
                  f"{blocks * a.block_size} tokens each, ~{a.kv_prefixes:g} prefixes); {a.requests} requests, "
                  f"{a.prefixes} prefixes of 2-6k tokens + 100-500-token suffixes (mean prompt "
                  f"{mean_prefix:.0f} tokens), {a.max_tokens} output tokens", flush=True)
            for k in range(a.repeat):
                for rate in rates:
                    order = POLICIES if k % 2 == 0 else tuple(reversed(POLICIES))
                    for policy in order:
                        results.append(await run_policy(policy, rate, prompts, workers, d, a))
        finally:
            for w in workers:
                await w.close()
    report(results, rates)


def report(results: list[Outcome], rates: list[float]) -> None:
    print("\nmedians over repetitions; goals vs round-robin: TTFT p90 >= 3x lower, throughput >= 1.2x, "
          "ITL p50 <= +5%")
    print(f"{'rate':>6} {'policy':>13} {'TTFT p50':>9} {'TTFT p90':>9} {'tok/s':>7} {'ITL p50':>8} {'hits':>5} "
          f"{'fe CPU/req':>10}   vs round-robin")
    for rate in rates:
        med: dict[str, Outcome] = {}
        for policy in POLICIES:
            runs = [r for r in results if r.rate == rate and r.policy == policy]
            med[policy] = Outcome(policy, rate, *(statistics.median(getattr(r, f) for r in runs) for f in
                                                  ("ttft_p50", "ttft_p90", "tok_s", "itl_p50", "hit", "fe_cpu_ms")))
        rr = med["round-robin"]
        for policy in POLICIES:
            m = med[policy]
            vs = ""
            if policy != "round-robin":
                ttft_x, tput_x, itl_d = rr.ttft_p90 / m.ttft_p90, m.tok_s / rr.tok_s, m.itl_p50 / rr.itl_p50 - 1
                vs = (f"TTFT p90 {ttft_x:.2f}x lower {'ok' if ttft_x >= 3 else 'MISSED'}, throughput {tput_x:.2f}x "
                      f"{'ok' if tput_x >= 1.2 else 'MISSED'}, ITL {itl_d:+.1%} {'ok' if itl_d <= 0.05 else 'MISSED'}")
            print(f"{rate:>6g} {policy:>13} {m.ttft_p50 * 1e3:>7.0f}ms {m.ttft_p90 * 1e3:>7.0f}ms {m.tok_s:>7.0f} "
                  f"{m.itl_p50 * 1e3:>6.1f}ms {m.hit:>5.0%} {m.fe_cpu_ms:>8.1f}ms   {vs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--prefixes", type=int, default=8)
    p.add_argument("--requests", type=int, default=120)
    p.add_argument("--rates", default="3,5", help="request rates (requests/s), comma-separated")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--speedup-ratio", type=float, default=0.25, help="the mockers' simulated clock speed")
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--kv-prefixes", type=float, default=2.5, help="KV capacity per worker, in mean prompts")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=300.0)
    run_main(run(p.parse_args()))


if __name__ == "__main__":
    main()
