"""Stage timestamps for benchmarks/vllm_stages.py; does nothing unless DYN_STAGE_PROBE names a folder.

Python imports `sitecustomize` at start-up from PYTHONPATH, so vllm_stages.py puts this folder there
for the two processes it probes: the worker (`-m dynamo.vllm`) and its in-process baseline
(`vllm_stages.py --inprocess`). Other processes (vLLM's engine core, the load generator) find the
variable too and are left alone. The probe wraps a few functions to timestamp each request on the
monotonic clock (the same clock in every process of the machine) and appends
`stage<TAB>request id<TAB>seconds` lines to DIR/<pid>.tsv, written at exit.

Stages: `in` (the worker's GenerateStream session dispatches the request), `add0` / `add1` (vLLM's
AsyncLLM.add_request starts / returns; `add_cpu`, a duration: the thread's CPU seconds in between),
`engine` (the engine core's first output for the request reaches the front end: vLLM's
AsyncMPClient.get_output_async; vLLM suffixes its internal request id, the analysis strips it),
`emit` (the worker hands the first output to its transport).
"""

from __future__ import annotations

import atexit
import os
import time
from pathlib import Path


def _cmdline() -> list[str]:
    try:
        return Path("/proc/self/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _install(out: Path) -> None:
    lines: list[str] = []

    def mark(stage: str, rid: str) -> None:
        lines.append(f"{stage}\t{rid}\t{time.monotonic():.6f}\n")

    def dump() -> None:
        if lines:
            out.write_text("".join(lines))

    atexit.register(dump)

    from vllm.v1.engine import async_llm, core_client

    add_request = async_llm.AsyncLLM.add_request

    async def timed_add_request(self, request_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        mark("add0", request_id)
        cpu0 = time.thread_time()
        try:
            return await add_request(self, request_id, *args, **kwargs)
        finally:
            # its CPU time too: wall time well above it means the thread waited (for a core, the GIL)
            lines.append(f"add_cpu\t{request_id}\t{time.thread_time() - cpu0:.6f}\n")
            mark("add1", request_id)

    async_llm.AsyncLLM.add_request = timed_add_request  # type: ignore[method-assign]

    get_output = core_client.AsyncMPClient.get_output_async

    async def timed_get_output(self):  # type: ignore[no-untyped-def]
        outputs = await get_output(self)
        now = f"{time.monotonic():.6f}\n"
        lines.extend(f"engine\t{o.request_id}\t{now}" for o in outputs.outputs)
        return outputs

    core_client.AsyncMPClient.get_output_async = timed_get_output  # type: ignore[method-assign]

    if "dynamo.vllm" not in _cmdline():
        return
    from dynamo.llm.worker import servicer, stream_session

    dispatch = stream_session.StreamSession._dispatch

    def timed_dispatch(self, item):  # type: ignore[no-untyped-def]
        if item.WhichOneof("kind") == "generate":
            mark("in", item.generate.request_id)
        return dispatch(self, item)

    stream_session.StreamSession._dispatch = timed_dispatch  # type: ignore[method-assign]

    serve_request = servicer.WorkerServicer.serve_request

    async def timed_serve_request(self, request, emit, *args, **kwargs):  # type: ignore[no-untyped-def]
        first = True

        async def timed_emit(out):  # type: ignore[no-untyped-def]
            nonlocal first
            if first and out.token_ids:
                first = False
                mark("emit", request.request_id)
            await emit(out)

        return await serve_request(self, request, timed_emit, *args, **kwargs)

    servicer.WorkerServicer.serve_request = timed_serve_request  # type: ignore[method-assign]


_dir = os.environ.get("DYN_STAGE_PROBE")
if _dir:
    _argv = _cmdline()
    if "dynamo.vllm" in _argv or "--inprocess" in _argv:
        _install(Path(_dir) / f"{os.getpid()}.tsv")
