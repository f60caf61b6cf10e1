"""KV-aware routing through the real frontend over mocker workers (events from the engines, cached
tokens as the workers report them, the official openai client)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = pytest.mark.timeout(300)

BS = 16
PREFIX_BLOCKS = 8
MOCKER = ["--served-model-name", "tiny", "--block-size", str(BS), "--num-gpu-blocks", "2048",
          "--speedup-ratio", "20"]


def system_prompt(i: int) -> list[int]:
    rng = random.Random(1000 + i)
    return [rng.randrange(3, 1000) for _ in range(BS * PREFIX_BLOCKS)]


async def cached_tokens(fe: FrontendProcess, prompt: list[int]) -> int:
    out = await fe.client().completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                               extra_body={"ignore_eos": True})
    assert out.usage is not None and out.usage.prompt_tokens_details is not None
    return out.usage.prompt_tokens_details.cached_tokens or 0


async def wait_router_workers(fe: FrontendProcess, n: int, timeout: float = 15) -> None:
    """Until the frontend's KV router knows all `n` workers: /v1/models lists the model as soon as
    its first worker appears, and first requests sent before the others are seen would all land on it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(state := json.loads((await asyncio.to_thread(fe.get, "/v1/router/state"))[1])["workers"]) < n:
        assert asyncio.get_running_loop().time() < deadline, f"the router knows {len(state)} of {n} workers"
        await asyncio.sleep(0.1)


@pytest.fixture
async def fleet(tmp_path: Path, tiny_model_dir: Path) -> AsyncIterator[tuple[Path, list[WorkerProcess]]]:
    workers = [await start_mocker(tmp_path, tiny_model_dir, *MOCKER, name=f"kv{i}") for i in range(4)]
    try:
        yield tmp_path, workers
    finally:
        for w in workers:
            await w.close()


async def turns(fe: FrontendProcess, prefixes: list[list[int]], per_prefix: int, concurrency: int
                ) -> list[tuple[int, int]]:
    """Every prefix's turns, interleaved, `concurrency` at a time: (prefix index, cached tokens)."""
    jobs = [(i, prefixes[i] + [random.Random(i * 1000 + t).randrange(3, 1000) for _ in range(20 + t)])
            for t in range(per_prefix) for i in range(len(prefixes))]
    random.Random(7).shuffle(jobs)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, prompt: list[int]) -> tuple[int, int]:
        async with gate:
            return i, await cached_tokens(fe, prompt)

    return list(await asyncio.gather(*(one(i, p) for i, p in jobs)))


async def test_requests_go_where_their_prefix_is(fleet: tuple[Path, list[WorkerProcess]]) -> None:
    discovery, workers = fleet
    fe = FrontendProcess(discovery, "--router-mode", "kv")
    try:
        await fe.wait_models({"tiny"})
        await wait_router_workers(fe, len(workers))
        prefixes = [system_prompt(i) for i in range(8)]
        # Each system prompt's first request, a miss by nature, all at once: the router spreads them
        # by load (one after another, each would find every worker idle and pick at random, which
        # now and then leaves a worker without a prefix, and so without requests).
        await asyncio.gather(*(cached_tokens(fe, p + [1]) for p in prefixes))
        results = await turns(fe, prefixes, per_prefix=12, concurrency=8)
        hits = sum(cached >= BS * PREFIX_BLOCKS for _, cached in results)
        assert hits >= 0.9 * len(results), f"{hits} of {len(results)} requests found their prefix cached"
        served = [w.metric("dynamo_worker_requests_total", status="success") for w in workers]
        assert min(served) > 0 and max(served) < 0.6 * sum(served), f"unbalanced: {served}"
        status, body = fe.get("/v1/router/state")
        state = json.loads(body)
        assert status == 200 and state["mode"] == "kv" and len(state["workers"]) == 4 and state["blocks"] > 0
        assert state["counters"]["events_applied"] > 0
        _, metrics = fe.get("/metrics")
        assert "dynamo_frontend_router_decisions_total" in metrics
        assert "dynamo_frontend_router_overlap_error_tokens_bucket" in metrics
        assert 'dynamo_frontend_router_kv_events_total{outcome="applied"}' in metrics
    finally:
        fe.close()


async def test_temperature_spreads_a_prefix_over_more_workers(fleet: tuple[Path, list[WorkerProcess]]) -> None:
    discovery, workers = fleet
    spread: dict[float, float] = {}
    for temperature in (0.0, 2.0):
        fe = FrontendProcess(discovery, "--router-mode", "kv", "--router-temperature", str(temperature),
                             namespace="test")
        try:
            await fe.wait_models({"tiny"})
            await wait_router_workers(fe, len(workers))
            prefix = system_prompt(50 + int(temperature))
            await cached_tokens(fe, prefix + [1])
            results = await turns(fe, [prefix], per_prefix=16, concurrency=1)
            spread[temperature] = sum(c < BS * PREFIX_BLOCKS for _, c in results) / len(results)  # misses
        finally:
            fe.close()
    assert spread[0.0] <= 0.1 < spread[2.0], spread


async def test_a_killed_worker_is_not_routed_to_and_its_replacement_starts_clean(
        fleet: tuple[Path, list[WorkerProcess]], tiny_model_dir: Path) -> None:
    discovery, workers = fleet
    fe = FrontendProcess(discovery, "--router-mode", "kv", "--migration-limit", "1")
    try:
        await fe.wait_models({"tiny"})
        await wait_router_workers(fe, len(workers))
        prefixes = [system_prompt(100 + i) for i in range(4)]
        for p in prefixes:
            await cached_tokens(fe, p + [1])
        victim = workers[0]
        load = asyncio.create_task(turns(fe, prefixes, per_prefix=10, concurrency=4))
        await asyncio.sleep(0.3)
        victim.signal(signal.SIGKILL)
        await asyncio.to_thread(victim.wait, 10)
        assert len(await load) == 40  # the dead worker's requests moved to the others
        state = json.loads(fe.get("/v1/router/state")[1])
        deadline = asyncio.get_running_loop().time() + 15
        while victim.record.instance_id in state["workers"]:  # type: ignore[union-attr]
            assert asyncio.get_running_loop().time() < deadline, "the dead worker stayed in the index"
            await asyncio.sleep(0.2)
            state = json.loads(fe.get("/v1/router/state")[1])
        after = await turns(fe, prefixes, per_prefix=3, concurrency=4)  # nothing fails: no one routes there
        assert len(after) == 12
        replacement = await start_mocker(discovery, tiny_model_dir, *MOCKER, name="kv-new")
        workers.append(replacement)
        deadline = asyncio.get_running_loop().time() + 15
        while replacement.record.instance_id not in state["workers"]:  # type: ignore[union-attr]
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.2)
            state = json.loads(fe.get("/v1/router/state")[1])
        assert state["workers"][replacement.record.instance_id]["blocks"] == 0  # type: ignore[union-attr]
        assert "Traceback" not in fe.log(), fe.log()[-3000:]
    finally:
        fe.close()


async def test_long_text_prompts_hashed_in_the_tokenizing_thread_route_exactly(tmp_path: Path,
                                                                              tiny_model_dir: Path) -> None:
    """Prompts past the inline-tokenization limit are tokenized in a thread, where the router hashes
    their blocks too (off the event loop): repeated, each goes back to the worker holding it, and the
    router's predicted cached tokens equal what the worker reports (overlap error 0)."""
    workers = [await start_mocker(tmp_path, tiny_model_dir, *MOCKER, "--max-model-len", "16384", name=f"long{i}")
               for i in range(2)]
    fe = FrontendProcess(tmp_path, "--router-mode", "kv", "--router-predicted-ttl", "0")
    try:
        await fe.wait_models({"tiny"})
        rng = random.Random(5)
        words = ["alpha", "beta", "gamma", "delta", "return", "lambda", "yield", "import", "class", "self"]
        documents = [" ".join(rng.choice(words) for _ in range(3500)) for _ in range(3)]  # > 16,384 chars each
        assert all(len(d) > 16_384 for d in documents)
        for doc in documents:
            first = await fe.client().completions.create(model="tiny", prompt=doc, max_tokens=2)
            assert first.usage is not None
            blocks = first.usage.prompt_tokens // BS
            deadline = asyncio.get_running_loop().time() + 20
            while True:  # until the worker's STORED events for the prompt reached the router
                state = json.loads(fe.get("/v1/router/state")[1])
                if max(w.get("blocks", 0) for w in state["workers"].values()) >= blocks:
                    break
                assert asyncio.get_running_loop().time() < deadline, f"the router never learned the prompt: {state}"
                await asyncio.sleep(0.1)
            again = await fe.client().completions.create(model="tiny", prompt=doc + " tail", max_tokens=2)
            assert again.usage is not None and again.usage.prompt_tokens_details is not None
            assert again.usage.prompt_tokens_details.cached_tokens >= (blocks - 1) * BS
        _, metrics = fe.get("/metrics")
        errors = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("dynamo_frontend_router_overlap_error_tokens_bucket")}
        exact = errors['le="0.0"'] - errors['le="-1.0"']
        assert exact >= len(documents), f"predicted cached tokens differ from the workers': {errors}"
    finally:
        fe.close()
        for w in workers:
            await w.close()
