"""Soak: hours of serving compressed into minutes, with workers dying under it. Nothing may leak.

    .venv/bin/python -m benchmarks.soak [--minutes 20] [--concurrency 8] [--kill-every 30]

Starts `python -m dynamo.frontend` (--migration-limit 2, --request-progress-timeout 10) over
--stable mocker workers that live throughout and one "churn" worker slot whose process is killed
every --kill-every seconds (SIGKILL and SIGTERM in turn) and replaced by a new one. Meanwhile
--concurrency clients (the official `openai` client) send a mix of requests: chat and completions,
streamed and not, and streams the client abandons after a few chunks (a cancel). Every request has
a deadline: one that neither completes nor fails clearly by then is *lost*.

Every --sample-every seconds it reads the frontend's and the stable workers' RSS, open fds and
threads from /proc. At the end it stops the load, waits for the engines to settle and asks every
live worker for its engine's unfinished requests (SubscribeStats), then prints the samples as a
table and a verdict against the goals: RSS growth < 5% after warm-up (the first --warmup fraction
of the run, at least a minute), fds and threads flat (within a small slack), 0 requests left in any
engine, 0 lost. Exit status 0 when every goal is met, 1 otherwise.

CI runs it after the test suite when DYN_SOAK_MINUTES is set (scripts/test.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import signal
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
from openai.types.chat import ChatCompletionMessageParam

from benchmarks._common import ensure_tiny_model, run_main, track
from tests.support.processes import FrontendProcess, WorkerProcess

MODEL = "tiny"
NAMESPACE = "soak"
KINDS = ("chat-stream", "chat", "completion-stream", "completion", "cancel")
# "Flat": the last samples' median may exceed the post-warm-up baseline by this much at most
# (a connection or a thread that happens to be open at the moment of a sample).
FD_SLACK = 4
THREAD_SLACK = 2
RSS_GROWTH_LIMIT = 0.05


@dataclass
class Tally:
    sent: Counter[str] = field(default_factory=Counter)
    completed: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Sample:
    at: float  # seconds since the start of the load
    rss_mb: dict[str, float]
    fds: dict[str, int]
    threads: dict[str, int]


def proc_status(pid: int) -> tuple[float, int, int]:
    """(RSS in MiB, open fds, threads) of a process, from /proc."""
    rss_kb = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


class Soak:
    def __init__(self, a: argparse.Namespace, discovery: Path) -> None:
        self.a = a
        self.discovery = discovery
        self.model = ensure_tiny_model()
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.stable: list[WorkerProcess] = []
        self.churn: WorkerProcess | None = None
        self.frontend: FrontendProcess | None = None
        self.kills: Counter[str] = Counter()
        self.restart_s: list[float] = []
        self.rng = random.Random(a.seed)
        self._names = itertools.count()

    def _worker(self, name: str) -> WorkerProcess:
        w = WorkerProcess("mocker", ["--model", str(self.model), "--served-model-name", MODEL,
                                     "--speedup-ratio", str(self.a.speedup),
                                     "--num-gpu-blocks", str(self.a.kv_blocks)],
                          self.discovery, namespace=NAMESPACE, name=name)
        track(w.pid)
        return w

    async def start(self) -> None:
        self.stable = [self._worker(f"soak-stable{i}") for i in range(self.a.stable)]
        self.churn = self._worker(f"soak-churn{next(self._names)}")
        for w in [*self.stable, self.churn]:
            await w.ready(90)
        self.frontend = FrontendProcess(self.discovery, "--log-level", "warning", "--migration-limit", "2",
                                        "--request-progress-timeout", "10", namespace=NAMESPACE)
        track(self.frontend.proc.pid)
        await self.frontend.wait_models({MODEL}, 90)

    async def close(self) -> None:
        if self.frontend is not None:
            self.frontend.close()
        for w in [*self.stable, *([self.churn] if self.churn else [])]:
            await w.close()

    # -- load ------------------------------------------------------------------------------------

    async def client_loop(self, client: openai.AsyncOpenAI, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            await self.one(client, self.rng.choice(KINDS))

    async def one(self, client: openai.AsyncOpenAI, kind: str) -> None:
        t = self.tally
        t.sent[kind] += 1
        max_tokens = self.rng.randint(8, 64)
        words = " ".join(self.rng.choice(("alpha", "beta", "gamma", "delta", "omega")) for _ in range(
            self.rng.randint(4, 200)))
        extra = {"ignore_eos": True}
        try:
            async with asyncio.timeout(self.a.deadline):
                if kind.startswith("chat"):
                    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": words}]
                    if kind == "chat":
                        r = await client.chat.completions.create(model=MODEL, messages=messages,
                                                                 max_tokens=max_tokens, extra_body=extra)
                        ok = r.usage is not None and r.usage.completion_tokens == max_tokens
                    else:
                        ok = await self._streamed(client.chat.completions.create(
                            model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
                            stream_options={"include_usage": True}, extra_body=extra), max_tokens)
                elif kind == "completion":
                    c = await client.completions.create(model=MODEL, prompt=words, max_tokens=max_tokens,
                                                        extra_body=extra)
                    ok = c.usage is not None and c.usage.completion_tokens == max_tokens
                elif kind == "completion-stream":
                    ok = await self._streamed(client.completions.create(
                        model=MODEL, prompt=words, max_tokens=max_tokens, stream=True,
                        stream_options={"include_usage": True}, extra_body=extra), max_tokens)
                else:  # cancel: read a few chunks, then walk away (the frontend must cancel it upstream)
                    stream = await client.completions.create(model=MODEL, prompt=words, max_tokens=512,
                                                             stream=True, extra_body=extra)
                    n = 0
                    async for _ in stream:
                        n += 1
                        if n >= 3:
                            break
                    await stream.close()
                    ok = n >= 3
            if ok:
                t.completed[kind] += 1
            else:
                t.lost[kind] += 1  # ended without its tokens and without an error
        except TimeoutError:
            t.lost[kind] += 1
        except openai.APIError as e:
            t.failed[kind] += 1
            t.errors[f"{getattr(e, 'status_code', 'stream')} {str(e)[:80]}"] += 1

    @staticmethod
    async def _streamed(create: object, max_tokens: int) -> bool:
        stream = await create  # type: ignore[misc]
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage is not None and usage.completion_tokens == max_tokens

    # -- faults and samples ----------------------------------------------------------------------

    async def churn_loop(self, stop_at: float) -> None:
        signals = itertools.cycle((signal.SIGKILL, signal.SIGTERM))
        while time.monotonic() + self.a.kill_every < stop_at:
            await asyncio.sleep(self.a.kill_every)
            assert self.churn is not None
            sig = next(signals)
            if sig == signal.SIGKILL:
                os.killpg(self.churn.pid, signal.SIGKILL)
            else:
                os.kill(self.churn.pid, signal.SIGTERM)  # drains its requests, then exits
            await asyncio.to_thread(self.churn.proc.wait, 60)
            await self.churn.close()
            self.churn.log_path.unlink(missing_ok=True)
            self.kills[sig.name] += 1
            t0 = time.monotonic()
            self.churn = self._worker(f"soak-churn{next(self._names)}")
            await self.churn.ready(90)
            self.restart_s.append(time.monotonic() - t0)

    def watched(self) -> dict[str, int]:
        assert self.frontend is not None
        return {"frontend": self.frontend.proc.pid, **{w.name.removeprefix("soak-"): w.pid for w in self.stable}}

    async def sample_loop(self, t0: float, stop_at: float) -> None:
        while True:
            self.sample(t0)
            if time.monotonic() + self.a.sample_every > stop_at:
                return
            await asyncio.sleep(self.a.sample_every)

    def sample(self, t0: float) -> None:
        rss, fds, threads = {}, {}, {}
        for name, pid in self.watched().items():
            rss[name], fds[name], threads[name] = proc_status(pid)
        self.samples.append(Sample(time.monotonic() - t0, rss, fds, threads))

    async def unfinished(self, settle: float) -> dict[str, int]:
        """Each live worker's unfinished engine requests, once they reach 0 or `settle` s pass."""
        workers = [*self.stable, *([self.churn] if self.churn else [])]
        deadline = time.monotonic() + settle
        out: dict[str, int] = {}
        for w in workers:
            out[w.name.removeprefix("soak-")] = await w.wait_unfinished(0, max(1.0, deadline - time.monotonic()))
        return out

    async def run(self) -> int:
        await self.start()
        assert self.frontend is not None
        t0 = time.monotonic()
        stop_at = t0 + self.a.minutes * 60
        client = self.frontend.client(timeout=self.a.deadline)
        print(f"soak: {self.a.minutes:g} min, {self.a.concurrency} clients, {self.a.stable} stable worker(s) + 1 "
              f"killed every {self.a.kill_every:g} s; frontend log {self.frontend.log_path}", flush=True)
        tasks = [asyncio.create_task(self.client_loop(client, stop_at)) for _ in range(self.a.concurrency)]
        churn = asyncio.create_task(self.churn_loop(stop_at))
        await self.sample_loop(t0, stop_at)
        await asyncio.gather(*tasks)  # each ends with its request in flight: bounded by the deadline
        await churn
        await client.close()
        left = await self.unfinished(settle=15)
        self.sample(t0)
        return self.report(time.monotonic() - t0, left)

    # -- report ----------------------------------------------------------------------------------

    def report(self, wall: float, left: dict[str, int]) -> int:
        t = self.tally
        names = list(self.watched())
        print(f"\n{'t (s)':>6}  " + "  ".join(f"{n + ' RSS MiB/fds/thr':>26}" for n in names))
        step = max(1, len(self.samples) // 20)
        shown = self.samples[::step] + ([self.samples[-1]] if (len(self.samples) - 1) % step else [])
        for s in shown:
            print(f"{s.at:>6.0f}  " + "  ".join(f"{s.rss_mb[n]:>16.1f}/{s.fds[n]:>4}/{s.threads[n]:>3}" for n in names))
        print(f"\nrequests over {wall:.0f} s ({sum(t.sent.values()) / wall:.1f}/s):")
        print(f"{'kind':<18} {'sent':>7} {'completed':>9} {'failed':>7} {'lost':>5}")
        for kind in (*KINDS, "all"):
            counts = [sum(c.values()) if kind == "all" else c[kind] for c in (t.sent, t.completed, t.failed, t.lost)]
            print(f"{kind:<18} {counts[0]:>7} {counts[1]:>9} {counts[2]:>7} {counts[3]:>5}")
        for err, count in t.errors.most_common(5):
            print(f"  {count} x {err}")
        print(f"worker kills: {dict(self.kills)}; replacement ready in "
              f"{statistics.median(self.restart_s) if self.restart_s else float('nan'):.1f} s (median)")
        print("unfinished requests in each live engine at the end: "
              + ", ".join(f"{k} {v}" for k, v in left.items()))

        warm = max(60.0, self.a.warmup * wall)
        after = [s for s in self.samples if s.at >= warm]
        verdict: list[tuple[str, bool]] = []
        if len(after) < 3:
            print(f"(too short to judge growth: {len(after)} sample(s) after the {warm:.0f} s warm-up)")
        else:
            base, tail = after[0], after[-3:]
            for n in names:
                end_rss = statistics.median(s.rss_mb[n] for s in tail)
                growth = end_rss / base.rss_mb[n] - 1
                verdict.append((f"{n} RSS {base.rss_mb[n]:.1f} -> {end_rss:.1f} MiB after warm-up "
                                f"({growth:+.1%}, goal < {RSS_GROWTH_LIMIT:.0%})", growth < RSS_GROWTH_LIMIT))
                end_fds = statistics.median(s.fds[n] for s in tail)
                verdict.append((f"{n} fds {base.fds[n]} -> {end_fds:.0f} (flat: +{FD_SLACK} at most)",
                                end_fds <= base.fds[n] + FD_SLACK))
                end_thr = statistics.median(s.threads[n] for s in tail)
                verdict.append((f"{n} threads {base.threads[n]} -> {end_thr:.0f} (flat: +{THREAD_SLACK} at most)",
                                end_thr <= base.threads[n] + THREAD_SLACK))
        verdict.append((f"requests left in the engines: {sum(left.values())} (goal 0)", sum(left.values()) == 0))
        verdict.append((f"lost requests: {sum(t.lost.values())} of {sum(t.sent.values())} (goal 0)",
                        sum(t.lost.values()) == 0))
        print(f"\nverdict (warm-up {warm:.0f} s):")
        for line, ok in verdict:
            print(f"  {'ok    ' if ok else 'MISSED'} {line}")
        passed = all(ok for _, ok in verdict)
        print("SOAK PASSED" if passed else "SOAK FAILED")
        return 0 if passed else 1


async def main_async(a: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="soak-") as d:
        soak = Soak(a, Path(d))
        try:
            return await soak.run()
        finally:
            await soak.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=float(os.environ.get("DYN_SOAK_MINUTES") or 20),
                   help="how long the load runs (default: DYN_SOAK_MINUTES, else 20)")
    p.add_argument("--concurrency", type=int, default=8, help="clients, each one request at a time")
    p.add_argument("--stable", type=int, default=2, help="workers that live throughout (their memory is watched)")
    p.add_argument("--kill-every", type=float, default=30.0, help="seconds between kills of the churn worker")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds between /proc samples")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run before growth counts (>= 60 s)")
    p.add_argument("--speedup", type=float, default=1.0, help="the mockers' --speedup-ratio")
    p.add_argument("--kv-blocks", type=int, default=2048,
                   help="the mockers' KV cache in blocks: small enough that their prefix caches fill during the "
                        "warm-up (a filling cache is growth, not a leak)")
    p.add_argument("--deadline", type=float, default=60.0, help="seconds a request may take before it counts as lost")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    code = 1

    async def go() -> None:
        nonlocal code
        code = await main_async(a)

    run_main(go())
    raise SystemExit(code)


if __name__ == "__main__":
    main()
