"""One VllmEngine in its own process, driven by JSON lines on stdin (for the disaggregation test).

    python tests/adapters/vllm/disagg_peer.py MODEL_DIR ROLE

A prefill peer applies the worker shell's prefill rules (dynamo.llm.disagg.prefill_request) itself.

Prints `@@{"ready": EngineInfo}` once started; then for each stdin line
`{"request_id", "token_ids", "max_tokens", "disaggregated_params"?}` prints
`@@{"outputs": [GenerateOutput, ...]}` (or `@@{"error": "..."}`); `{"op": "log_stats"}` makes
vLLM log its stats (KV transfer counts) and answers `@@{"logged": true}`. Lines without the `@@` prefix
are vLLM's own logging. EOF on stdin shuts the engine down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm.engine.arg_utils import AsyncEngineArgs

from dynamo.llm.disagg import prefill_request
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import DisaggregatedParams, GenerateRequest, StopConditions
from dynamo.vllm.engine import VllmEngine

PREFIX = "@@"


def say(message: dict) -> None:
    # DisaggregatedParams.opaque is bytes (empty for vLLM): sent as latin-1 text, read back below
    print(PREFIX + json.dumps(message, default=lambda b: b.decode("latin-1")), flush=True)


async def main(model_dir: str, role: str) -> None:
    engine = VllmEngine(AsyncEngineArgs(model=model_dir, dtype="float32", enforce_eager=True,
                                        max_model_len=1024), role=Role(role))
    say({"ready": dataclasses.asdict(await engine.start())})
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            message = json.loads(line)
            if message.get("op") == "log_stats":
                # vLLM's logging stat logger prints "KV Transfer metrics: ..." when asked.
                await engine.async_llm.do_log_stats()
                say({"logged": True})
                continue
            params = message.get("disaggregated_params")
            request = GenerateRequest(
                request_id=message["request_id"],
                token_ids=message["token_ids"],
                stop=StopConditions(max_tokens=message["max_tokens"], ignore_eos=True),
                disaggregated_params=(DisaggregatedParams(**{**params, "opaque": params.get("opaque", "").encode("latin-1")})
                                      if params else None),
            )
            if engine.role is Role.PREFILL:
                request = prefill_request(request)
            try:
                outputs = [dataclasses.asdict(out) async for out in engine.generate(request)]
            except Exception as exc:  # reported to the test, which fails with it
                say({"error": f"{type(exc).__name__}: {exc}"})
                continue
            say({"outputs": outputs})
    finally:
        await engine.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
