"""Scenario 4 of issue 18: a prefill worker SIGKILLed while handoffs are in flight.

Mocker workers (a slow prefill worker, so that every request is mid-prefill at the kill) show both
ways it may end: without --prefill-fallback-local on the decode worker each client gets a clear
error at once; with it, the frontend hands each request whole to the decode worker, which prefills
it locally. Then the real thing: a vLLM prefill worker (core 0) and a decode worker (core 1, --prefill-fallback-local) hand KV over NIXL;
streaming clients (the official openai client, through the frontend) send prompts of several
hundred tokens so that prefills and KV pulls are under way when the prefill worker dies. Every
client must get a complete answer or a clear error within 10 s of the kill (none lost); afterwards
the decode engine holds no request (nothing left waiting for KV that will never arrive) and new
requests complete by local prefill.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import pytest

from tests.support.backends import VLLM
from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

pytestmark = [pytest.mark.fault_tolerance, pytest.mark.timeout(600)]

SERVED = "tiny"
PROMPT_TOKENS = 800  # max_model_len is 1024: long prompts make the prefill and the KV pull take time
MAX_TOKENS = 32
CLIENTS = 6
AFTER_KILL_S = 10.0  # every request in flight at the kill ends (either way) within this
REQUEST_DEADLINE_S = 30.0


@dataclass
class Outcome:
    started: float
    ended: float = 0.0
    status: str = "lost"  # completed | failed | lost


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def __str__(self) -> str:
        return (f"sent {len(self.outcomes)}, completed {self.count('completed')}, failed {self.count('failed')}, "
                f"lost {self.count('lost')}")


async def one_request(client: openai.AsyncOpenAI, prompt: list[int], report: Report, model: str = SERVED) -> Outcome:
    outcome = Outcome(started=time.monotonic())
    report.outcomes.append(outcome)
    try:
        async with asyncio.timeout(REQUEST_DEADLINE_S):
            stream = await client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, stream=True,
                                                     stream_options={"include_usage": True},
                                                     extra_body={"ignore_eos": True})
            usage = None
            async for chunk in stream:
                usage = chunk.usage or usage
        if usage is not None and usage.completion_tokens == MAX_TOKENS:
            outcome.status = "completed"
    except TimeoutError:
        pass  # lost: neither an answer nor an error within its deadline
    except openai.APIError as e:
        outcome.status = "failed"  # a clear error: an HTTP status, or an error event mid-stream
        report.errors[f"{getattr(e, 'status_code', 'stream')}: {str(e)[:120]}"] += 1
    outcome.ended = time.monotonic()
    return outcome


def prompt_of(rng: random.Random) -> list[int]:
    return [rng.randrange(10, 1000) for _ in range(PROMPT_TOKENS)]


@pytest.mark.parametrize("fallback", [False, True], ids=["no-fallback", "fallback-local"])
async def test_mocker_prefill_worker_killed_mid_prefill(tmp_path: Path, tiny_model_dir: Path, fallback: bool) -> None:
    # speedup 0.01: one prefill step takes ~0.7 s, so the kill lands while every request is in it
    prefill = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "0.01", "--disaggregation-mode",
                                 "prefill", name="slow-prefill")
    decode = await start_mocker(tmp_path, tiny_model_dir, "--speedup-ratio", "50", "--disaggregation-mode", "decode",
                                *(["--prefill-fallback-local"] if fallback else []), name="decode")
    fe = FrontendProcess(tmp_path)
    model = tiny_model_dir.name
    try:
        await fe.wait_models({model})
        client = fe.client(timeout=REQUEST_DEADLINE_S)
        report = Report()
        rng = random.Random(1)
        load = asyncio.gather(*(one_request(client, prompt_of(rng), report, model) for _ in range(CLIENTS)))
        await prefill.wait_inflight(CLIENTS, timeout=30, load=load)
        killed_at = time.monotonic()
        os.killpg(prefill.pid, signal.SIGKILL)
        prefill.wait(10)
        outcomes = await asyncio.wait_for(load, REQUEST_DEADLINE_S + 5)
        slowest = max(o.ended for o in outcomes) - killed_at
        print(f"\nmocker prefill worker SIGKILLed mid-prefill, fallback {fallback}: {report}; all ended within "
              f"{slowest:.2f} s of the kill; errors {dict(report.errors)}")
        assert report.count("lost") == 0 and slowest <= AFTER_KILL_S, f"{report}\n{fe.log()[-3000:]}"
        if fallback:
            assert report.count("completed") == CLIENTS, f"{report}\n{fe.log()[-3000:]}\n{decode.log()[-3000:]}"
            assert fe.log().count("(--prefill-fallback-local)") == CLIENTS
            assert decode.metric("dynamo_worker_prefills_total", location="local") == CLIENTS
        else:
            assert report.count("failed") == CLIENTS, report  # a clear 502 naming the prefill failure
            assert all("prefill" in err for err in report.errors), report.errors
        assert await decode.wait_unfinished(0, timeout=10) == 0
        check = Report()  # the dead worker's record lingers: a new request is prefilled locally at once
        assert (await one_request(client, prompt_of(rng), check, model)).status == "completed", check.errors
    finally:
        fe.close()
        await decode.close()
        await prefill.close()


@pytest.mark.vllm
async def test_vllm_prefill_worker_killed_mid_handoff(tmp_path: Path, tiny_model_dir: Path) -> None:
    reason = VLLM.available()
    if reason:
        pytest.skip(reason)

    def worker(role: str, *extra: str) -> WorkerProcess:
        return WorkerProcess("vllm", [*VLLM.args(tiny_model_dir), "--served-model-name", SERVED,
                                      "--disaggregation-mode", role, *extra], tmp_path,
                             namespace="pd", env=VLLM.env[role], name=f"ft-vllm-{role}")

    prefill = worker("prefill")
    decode = worker("decode", "--prefill-fallback-local")
    fe = FrontendProcess(tmp_path, namespace="pd")
    try:
        await asyncio.gather(prefill.ready(VLLM.startup_timeout), decode.ready(VLLM.startup_timeout))
        await fe.wait_models({SERVED}, timeout=120)
        client = fe.client(timeout=REQUEST_DEADLINE_S)
        rng = random.Random(0)
        warm = Report()
        for _ in range(2):
            assert (await one_request(client, prompt_of(rng), warm)).status == "completed", \
                f"{warm.errors}\n{fe.log()[-3000:]}"
        assert prefill.metric("dynamo_worker_requests_total") >= 2

        report = Report()
        stop = asyncio.Event()

        async def client_loop(seed: int) -> None:
            r = random.Random(seed)
            while not stop.is_set():
                await one_request(client, prompt_of(r), report)

        load = asyncio.gather(*(client_loop(i) for i in range(CLIENTS)))
        try:
            # Kill while a prefill is running on the prefill worker (handoffs of others in flight too).
            await prefill.wait_inflight(1, timeout=30, load=load)
            await asyncio.sleep(0.3)  # let the load spread over prefill, KV pull and decode phases
            killed_at = time.monotonic()
            in_flight = [o for o in report.outcomes if o.ended == 0.0]
            os.killpg(prefill.pid, signal.SIGKILL)  # the engine core too: nothing answers on its ports
            prefill.wait(10)
            # Keep the load on a while: requests after the kill must go to local prefill.
            deadline = killed_at + AFTER_KILL_S
            while time.monotonic() < deadline and not load.done():
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.wait_for(load, REQUEST_DEADLINE_S + 5)

        late = [round(o.ended - killed_at, 1) for o in in_flight if o.ended - killed_at > AFTER_KILL_S]
        after = [o for o in report.outcomes if o.started > killed_at + 1.0]
        print(f"\nvLLM prefill worker SIGKILLed with {len(in_flight)} request(s) in flight: {report}; "
              f"in flight at the kill: {Counter(o.status for o in in_flight)}; started > 1 s after the kill: "
              f"{Counter(o.status for o in after)}; handed whole to the decode worker after a failed prefill: "
              f"{fe.log().count('(--prefill-fallback-local)')}; errors {dict(report.errors)}")
        assert report.count("lost") == 0, f"{report}\n{fe.log()[-4000:]}\n{decode.log()[-4000:]}"
        # --prefill-fallback-local: those caught mid-prefill went whole to the decode worker
        assert all(o.status == "completed" for o in in_flight), \
            f"{report}\n{fe.log()[-4000:]}\n{decode.log()[-4000:]}"
        assert not late, f"requests in flight at the kill ended {late} s after it (> {AFTER_KILL_S} s)"
        assert after and all(o.status == "completed" for o in after), \
            f"requests after the kill failed: {report}\n{fe.log()[-4000:]}"

        # Nothing is left in the decode engine: no request waits for KV from the dead worker.
        assert await decode.wait_unfinished(0, timeout=15) == 0, decode.log()[-4000:]
        assert decode.metric("vllm:num_requests_running") == 0
        assert decode.metric("vllm:num_requests_waiting") == 0
        check = Report()
        assert (await one_request(client, prompt_of(rng), check)).status == "completed", check.errors
        assert decode.metric("dynamo_worker_prefills_total", location="local") >= 1
    finally:
        fe.close()
        await decode.close()
        await prefill.close()
