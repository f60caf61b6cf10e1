"""SGLang's own greedy output, in-process (`sglang.Engine`, no Dynamo code): the reference the
conformance suite compares `dynamo.sglang` with.

    python -m tests.support.sglang_reference ENGINE_FLAGS_JSON < prompts.json

prompts.json: {"prompts": [[ids...], ...], "max_tokens": N}. Prints one JSON line with the greedy
output ids of each prompt. The engine takes the worker's engine flags (a JSON list of SGLang's CLI
flags, --model-path included), parsed by SGLang's own parser.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid


async def greedy(flags: list[str], prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(flags)
    args = ServerArgs.from_cli_args(ns)
    engine = await asyncio.to_thread(lambda: Engine(server_args=args))
    results = []
    for ids in prompts:
        out = await engine.async_generate(input_ids=ids, rid=uuid.uuid4().hex,
                                          sampling_params={"temperature": 0.0, "max_new_tokens": max_tokens,
                                                           "ignore_eos": True})
        results.append([int(t) for t in out["output_ids"]])
    engine.shutdown()
    return results


def main() -> None:
    flags = json.loads(sys.argv[1])
    job = json.load(sys.stdin)
    outputs = asyncio.run(greedy([*flags, "--skip-tokenizer-init"], job["prompts"], job["max_tokens"]))
    print(json.dumps({"outputs": outputs}), flush=True)
    os._exit(0)  # its children are gone (engine.shutdown); skip the rest of SGLang's atexit work


if __name__ == "__main__":
    main()
