"""benchmarks/_loadgen's closed loop: a request's clock starts at its arrival, not when its own code
gets to run (in-process, that waits for the submissions of the requests woken with it)."""

from __future__ import annotations

import asyncio
import itertools
import time

from benchmarks._loadgen import Arrivals, Record, drive


async def test_users_woken_in_one_turn_share_its_time_and_a_later_turn_gets_a_new_one() -> None:
    ticks = itertools.count()
    arrivals = Arrivals(lambda: float(next(ticks)))
    done = asyncio.Event()
    got: list[float] = []

    async def user() -> None:
        await done.wait()
        got.append(arrivals.now())

    users = [asyncio.create_task(user()) for _ in range(3)]
    await asyncio.sleep(0)  # all three wait on the event
    done.set()  # one turn wakes them all
    await asyncio.gather(*users)
    assert got == [0.0, 0.0, 0.0]
    await asyncio.sleep(0)
    assert arrivals.now() == 1.0  # a later turn
    assert arrivals.now() == 1.0  # ... shared within it


async def test_drive_counts_ttft_from_the_arrival_including_the_wait_behind_earlier_submissions() -> None:
    step = asyncio.Event()
    submit_s = 0.004

    async def one(i: int, t0: float, arrived: float) -> Record:
        start = time.perf_counter()
        time.sleep(submit_s)  # an in-process submission: CPU in this turn, as vLLM's add_request
        await step.wait()  # the engine step that answers every submitted request at once
        first = time.perf_counter()
        return Record(arrived - t0, first - arrived, first - t0, 1, 1, start - arrived)

    async def engine() -> None:
        while True:
            await asyncio.sleep(0.001)
            step.set()
            step.clear()

    stepper = asyncio.create_task(engine())
    try:
        raw = await drive(one, warmup=0, requests=4, concurrency=4)
    finally:
        stepper.cancel()
    recs = sorted(raw["records"], key=lambda r: r["queued"])
    assert len({r["start"] for r in recs}) == 1  # the four arrived together, at the phase's start
    for k, r in enumerate(recs):
        # the k-th waited for the k submissions before its own, and that wait is in its TTFT
        assert r["queued"] >= k * submit_s
        assert r["ttft"] >= r["queued"] + submit_s
    ttfts = [r["ttft"] for r in recs]
    assert max(ttfts) - min(ttfts) < submit_s  # arrived together, answered by one step: one TTFT
    # timed from its own code instead, the last would have looked 3 submissions faster than the first
    own = [r["ttft"] - r["queued"] for r in recs]
    assert own[0] - own[-1] >= 3 * submit_s
