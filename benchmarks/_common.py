"""Shared by the serving benchmarks: running a load generator process, summarising its records,
measuring the servers' CPU, and making sure every process started is gone on exit (Ctrl-C too)."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
LOADGEN = "benchmarks._loadgen"  # run as python -m, from the repository root
TINY_MODEL = Path("/tmp/dynamo-bench-tiny")

_started: list[int] = []  # process-group leaders to kill on exit, whatever happens


def track(pid: int) -> None:
    _started.append(pid)


def _kill_all() -> None:
    for pid in _started:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


atexit.register(_kill_all)


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, with SIGTERM treated like Ctrl-C so that `finally` blocks stop the servers (the
    servers run in sessions of their own and would outlive a parent killed outright)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(main)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        sys.exit(130)


def ensure_tiny_model(path: Path = TINY_MODEL) -> Path:
    """Build the tiny model (idempotent) in a child process: it imports transformers, which is slow."""
    subprocess.run([sys.executable, "-m", "dynamo.llm.tiny_model", str(path)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    return path


def percentile(values: list[float], q: float) -> float:
    vals = sorted(v for v in values if not math.isnan(v))
    if not vals:
        return float("nan")
    return vals[min(len(vals) - 1, max(0, math.ceil(q / 100 * len(vals)) - 1))]


@dataclass
class Result:
    label: str
    concurrency: int
    requests: int
    tokens: int
    wall: float
    ttft_p50: float
    ttft_p99: float
    itl_mean: float  # seconds per output token after the first, mean over requests
    tokens_per_msg: float
    client_cores: float  # load generator CPU seconds / wall
    server_cores: float  # CPU of the server processes (frontend + workers) / wall; nan in-process
    queued_p50: float = 0.0  # seconds from arrival until the request's own code ran (_loadgen.Record)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall


def median_result(results: Sequence[Result]) -> Result:
    """Field by field, the median over repetitions of one setup (label and counts from the first)."""
    numeric = {f.name: statistics.median(getattr(r, f.name) for r in results)
               for f in dataclasses.fields(Result) if f.name not in ("label", "concurrency", "requests", "tokens")}
    return dataclasses.replace(results[0], **numeric)


def summarise(label: str, concurrency: int, raw: dict, server_cpu: Sequence[float] = (),
              expected_tokens: int | None = None) -> Result:
    recs = raw["records"]
    tokens = sum(r["tokens"] for r in recs)
    if expected_tokens is not None and tokens != expected_tokens:
        raise RuntimeError(f"{label}: got {tokens} output tokens, expected {expected_tokens}")
    itls = [(r["end"] - r["start"] - r["ttft"]) / (r["tokens"] - 1) for r in recs if r["tokens"] > 1]
    messages = sum(r["messages"] for r in recs)
    return Result(label=label, concurrency=concurrency, requests=len(recs), tokens=tokens, wall=raw["wall"],
                  ttft_p50=percentile([r["ttft"] for r in recs], 50),
                  ttft_p99=percentile([r["ttft"] for r in recs], 99),
                  itl_mean=sum(itls) / len(itls) if itls else float("nan"),
                  tokens_per_msg=tokens / messages if messages else float("nan"),
                  client_cores=raw["cpu"] / raw["wall"],
                  server_cores=sum(server_cpu) / raw["wall"] if server_cpu else float("nan"),
                  queued_p50=percentile([r.get("queued", 0.0) for r in recs], 50))


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) so far of these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            procs = [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for q in procs:
            try:
                t = q.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
    return total


async def run_loadgen(args: list[str], timeout: float, server_pids: Sequence[int] = ()) -> tuple[dict, list[float]]:
    """Run `python -m benchmarks._loadgen ARGS` to completion; return its JSON and each server's CPU seconds over the
    measured phase (one value per pid in `server_pids`, children included)."""
    fd, out_path = tempfile.mkstemp(prefix="bench-loadgen-", suffix=".json")
    os.close(fd)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", LOADGEN, *args, "--out", out_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, process_group=0)
    track(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(proc.stderr.read())

    async def read() -> tuple[dict, list[float]]:
        cpu0 = cpu1 = [0.0] * len(server_pids)
        while line := await proc.stdout.readline():  # type: ignore[union-attr]
            text = line.decode().strip()
            if text == "PHASE start":
                cpu0 = [process_cpu([pid]) for pid in server_pids]
            elif text == "PHASE end":
                cpu1 = [process_cpu([pid]) for pid in server_pids]
            elif text.startswith("RESULT "):
                return json.loads(Path(out_path).read_text()), [b - a for a, b in zip(cpu0, cpu1)]
        await proc.wait()
        raise RuntimeError(f"load generator {args[0]} failed ({proc.returncode}):\n"
                           f"{(await stderr).decode(errors='replace')[-3000:]}")
    try:
        result = await asyncio.wait_for(read(), timeout)
        await asyncio.wait_for(proc.wait(), 10)
        return result
    except BaseException:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        raise
    finally:
        stderr.cancel()
        Path(out_path).unlink(missing_ok=True)


HEADER = (f"{'run':<34} {'c':>3} {'reqs':>5} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
          f"{'ITL':>8} {'tok/msg':>7} {'client':>6} {'server':>6} {'ratio':>6}")


def row(r: Result, baseline: Result | None = None) -> str:
    ratio = f"{r.tok_s / baseline.tok_s:>6.2f}" if baseline is not None else f"{'':>6}"
    server = f"{r.server_cores:>6.2f}" if not math.isnan(r.server_cores) else f"{'-':>6}"
    return (f"{r.label:<34} {r.concurrency:>3} {r.requests:>5} {r.tok_s:>10,.0f} {r.ttft_p50 * 1e3:>7.1f}ms "
            f"{r.ttft_p99 * 1e3:>7.1f}ms {r.itl_mean * 1e3:>6.2f}ms {r.tokens_per_msg:>7.1f} "
            f"{r.client_cores:>6.2f} {server} {ratio}")


LEGEND = ("client / server: CPU cores used by the load generator / by the server processes over the run "
          "(2 cores in all);\nratio: out tok/s relative to the baseline row of the same concurrency; "
          "ITL: mean seconds per output token after the first.")
