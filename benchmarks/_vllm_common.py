"""Shared by the vLLM benchmarks: engine flags, waiting for a quiet machine, starting vLLM worker
processes, a child process that answers JSON commands, and the KV size of the model."""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import REPO, process_cpu, track
from tests.support.backends import VLLM
from tests.support.processes import WorkerProcess

MODEL_NAME = "tiny"
RESULT = "@@dynamo-bench-answer@@"  # what a JsonChild prints once its answer is written
# The engine settings every run uses (the conformance suite's vLLM flags: fp32, eager, 1k context,
# KV blocks of 32) and the environment per role: prefill / agg pinned to core 0, decode to core 1.
ENGINE_ENV = VLLM.env


#: extra vLLM flags for every engine of a run (the scripts' --engine-flags; env so children see it)
EXTRA_FLAGS_ENV = "DYN_BENCH_EXTRA_ENGINE_FLAGS"


def engine_flags(model: Path) -> list[str]:
    return [*VLLM.args(model), *os.environ.get(EXTRA_FLAGS_ENV, "").split()]


def wait_quiet(max_load: float, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until the 1-minute load average is <= `max_load`: other people's
    jobs on this 2-core machine would ruin the figures. Returns the load measured at the end."""
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    waited = False
    while load > max_load and time.monotonic() < deadline:
        if not waited:
            print(f"  load average {load:.2f} > {max_load}: waiting up to {max_wait:.0f} s for a quieter "
                  "machine", flush=True)
            waited = True
        time.sleep(5)
        load = os.getloadavg()[0]
    if load > max_load:
        print(f"  WARNING: measuring under load {load:.2f} (> {max_load}); figures are pessimistic",
              flush=True)
    return load


async def start_worker(discovery: Path, model: Path, role: str, name: str, *extra: str,
                       env: dict[str, str] | None = None, timeout: float = 240) -> WorkerProcess:
    """`python -m dynamo.vllm` in its own process group (engine-core children included)."""
    args = [*engine_flags(model), "--served-model-name", MODEL_NAME, *extra]
    if role != "agg":
        args += ["--disaggregation-mode", role]
    w = WorkerProcess("vllm", args, discovery, namespace="bench", name=name,
                      env={**ENGINE_ENV[role], **(env or {})})
    track(w.pid)
    return await w.ready(timeout)


def kill_group(proc: subprocess.Popen | asyncio.subprocess.Process, grace: float = 20) -> None:
    """SIGTERM the process group `proc` leads, then SIGKILL whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        if isinstance(proc, subprocess.Popen):
            proc.poll()  # reap the leader so the group can disappear
        time.sleep(0.1)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class JsonChild:
    """`python ARGV --answer-file FILE` in its own process group, answering commands: for each JSON
    line written to its stdin it writes its JSON answer to FILE, then prints a line with RESULT
    (its stdout is shared with vLLM's logs, so the answer does not travel there). It answers once
    when ready; closing its stdin ends it."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: Sequence[str], out: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._argv = argv
        self._out = out
        assert proc.stderr is not None
        self._stderr = asyncio.ensure_future(proc.stderr.read())

    @classmethod
    async def start(cls, argv: Sequence[str], env: dict[str, str], timeout: float) -> tuple[JsonChild, dict]:
        fd, out = tempfile.mkstemp(prefix="bench-child-", suffix=".json")
        os.close(fd)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, "--answer-file", out, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, limit=1 << 26, env={**os.environ, "PYTHONPATH": str(REPO), **env},
            process_group=0)
        track(proc.pid)
        child = cls(proc, argv, Path(out))
        try:
            return child, await child._answer(timeout)
        except BaseException:
            await child.close()
            raise

    async def ask(self, command: dict, timeout: float) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._answer(timeout)

    async def _answer(self, timeout: float) -> dict:
        async def read() -> dict:
            while line := await self.proc.stdout.readline():  # type: ignore[union-attr]
                if RESULT.encode() in line:
                    return json.loads(self._out.read_text())
            await self.proc.wait()
            raise RuntimeError(f"{' '.join(self._argv[:2])} exited ({self.proc.returncode}):\n"
                               f"{(await self._stderr).decode(errors='replace')[-4000:]}")
        return await asyncio.wait_for(read(), timeout)

    async def close(self, grace: float = 30) -> None:
        """Close its stdin (it shuts its engine down and exits), then kill what is left of the group."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            pass
        try:  # the child itself if it hung, and engine-core children of a child that exited
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await self.proc.wait()
        self._stderr.cancel()
        self._out.unlink(missing_ok=True)


@contextmanager
def baseline_llm(model: Path) -> Iterator[Any]:
    """The in-process baselines' AsyncLLM, configured as the worker runs it: the same engine flags
    parsed by vLLM's own parser, plus what the worker adds (its KV-event publisher). Shut down on exit."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser
    from vllm.v1.engine.async_llm import AsyncLLM

    from dynamo.vllm.args import prepare_engine_args, remove_kv_events_socket

    parser = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())  # type: ignore[arg-type]
    engine_args = prepare_engine_args(AsyncEngineArgs.from_cli_args(parser.parse_args(engine_flags(model))), "agg")
    llm = AsyncLLM.from_engine_args(engine_args)
    try:
        yield llm
    finally:
        llm.shutdown()
        remove_kv_events_socket(engine_args)


def baseline_sampling(max_tokens: int) -> Any:
    """The sampling the worker sends vLLM for a benchmark request: greedy, ignore_eos, DELTA
    outputs, no detokenization."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False,
                          output_kind=RequestOutputKind.DELTA)


def answer(path: str, obj: dict) -> None:
    """The child side of JsonChild: write the answer, then say so on stdout."""
    Path(path).write_text(json.dumps(obj))
    print(RESULT, flush=True)


def kv_bytes_per_token(model: Path, dtype_bytes: int = 4) -> int:
    """K and V of one token in every layer: 2 x layers x kv_heads x head_dim x dtype bytes."""
    cfg = json.loads((model / "config.json").read_text())
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def nixl_transfer_mb(log: str) -> tuple[int, float, float] | None:
    """(successful transfers, mean MB per transfer, mean transfer ms) over the "KV Transfer metrics"
    lines vLLM's logging stat logger wrote on the decode side, or None when it wrote none."""
    n, mb, ms = 0, 0.0, 0.0
    for line in log.splitlines():
        if "KV Transfer metrics:" not in line:
            continue
        pairs = (kv.split("=", 1) for kv in line.split("KV Transfer metrics:", 1)[1].split(",") if "=" in kv)
        fields = {k.strip(): v.strip() for k, v in pairs}
        try:
            k = int(fields["Num successful transfers"])
            avg_mb = float(fields["Avg MB per transfer"])
            avg_ms = float(fields["Avg xfer time (ms)"])
        except (KeyError, ValueError):
            continue
        n += k
        mb += k * avg_mb
        ms += k * avg_ms
    return (n, mb / n, ms / n) if n else None


def _busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all processes, all cores) since boot."""
    t = psutil.cpu_times()
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)  # guest is inside user
    return total - t.idle - getattr(t, "iowait", 0.0)


def _own_seconds(pids: Sequence[int]) -> float:
    """CPU seconds of this process, its reaped children and the live trees under `pids`."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = process_cpu([p for p in pids if p != os.getpid()]) + kids.ru_utime + kids.ru_stime
    if os.getpid() in pids:  # with its live children
        return own + process_cpu([os.getpid()])
    return own + me.ru_utime + me.ru_stime


class CpuWindow:
    """How many cores OTHER people's processes used while we measured: the machine's busy time
    minus ours (this process, its children, the trees under `pids`) over the window."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.own0 = _own_seconds(self.pids)

    def others(self) -> float:
        dt = time.monotonic() - self.t0
        busy = _busy_seconds() - self.busy0
        own = _own_seconds(self.pids) - self.own0
        return max(0.0, (busy - own) / dt) if dt > 0 else float("nan")


def fmt_ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"
