"""Sample a running process with py-spy (if installed) and summarise where its time goes.

py-spy is not a project dependency: `.venv/bin/pip install py-spy`. It attaches by pid (needs
ptrace permission), samples without stopping the target (--nonblocking), and writes collapsed
stacks ("frame;frame;... count") that `summarise` turns into self and inclusive shares.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import track

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


class Sampler:
    """`py-spy record` on one pid until `stop()`."""

    def __init__(self, pid: int, out: Path, rate: int = 250) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy (or drop --profile)")
        self.out = out
        self.proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--gil",
                                      "--format", "raw", "--output", str(out), "--duration", "600"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0)
        track(self.proc.pid)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError("py-spy did not stop within 30 s") from None
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace')[-2000:]}")
        return self.out


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


@dataclass(frozen=True)
class Cost:
    """What the profiled run cost the process: turns a share of the samples into time per unit of work."""

    cpu_s: float  # the process's CPU seconds over the measured phase
    requests: int
    tokens: int

    def per(self, share: float) -> str:
        return f"{share * self.cpu_s / self.requests * 1e6:>8.1f} {share * self.cpu_s / self.tokens * 1e6:>9.2f}"


def summarise(collapsed: Path, top: int = 25, cost: Cost | None = None) -> str:
    """Top functions by self samples and by inclusive samples (idle epoll waits listed as such). With
    `cost`, each share is also given as CPU microseconds per request and per output token: the share
    times the process's CPU over the measured phase (the samples cover the warm-up too; shares hold)."""
    self_count: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for text in collapsed.read_text().splitlines():
        stack, _, n = text.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_count[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        return "(no samples)"

    def line(count: int, func: str) -> str:
        share = count / total
        return f"  {100 * share:>5.1f}%" + (cost.per(share) if cost is not None else "") + f"  {func}"

    unit = f" {'us/req':>8} {'us/token':>9}" if cost is not None else ""
    head = f"{total} samples of the thread holding the GIL (py-spy --gil: Python CPU time)"
    if cost is not None:
        head += (f"; us: that share of the process's {cost.cpu_s:.2f} CPU s per request ({cost.requests}) "
                 f"and per output token ({cost.tokens})")
    lines = [head, f"  {'self':>6}{unit}  function"]
    lines += [line(c, f) for f, c in self_count.most_common(top)]
    lines += [f"  {'incl':>6}{unit}  function (inclusive; project code and key libraries)"]
    keep = ("dynamo/", "starlette", "uvicorn", "grpc", "tokenizers", "orjson", "prometheus")
    lines += [line(c, f) for f, c in incl.most_common(400) if any(k in f for k in keep)][:top + 2]
    return "\n".join(lines)
