"""The frontend's per-request progress timer (--request-progress-timeout): one timer per request,
firing only while the request waits on its worker, and told apart from other cancellations."""

from __future__ import annotations

import asyncio

import pytest

from dynamo.frontend.args import parse_args
from dynamo.frontend.worker_backend import WorkerTimedOut, _Stall

T = 0.05


async def test_silence_while_waiting_fires_and_is_told_apart() -> None:
    stall = _Stall(T)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10 * T)
    assert stall.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the cancel was ours and is taken back
    stall.stop()


async def test_steady_progress_never_fires() -> None:
    stall = _Stall(T)
    for _ in range(20):  # outputs every T/2, 10 timeouts long in all
        await asyncio.sleep(T / 2)
        stall.waiting = False
        stall.resume()
    stall.stop()
    await asyncio.sleep(2 * T)  # stopped: nothing fires later


async def test_time_the_consumer_spends_elsewhere_does_not_count() -> None:
    stall = _Stall(T)
    stall.waiting = False  # an output arrived; the consumer is slow to ask for the next one
    await asyncio.sleep(5 * T)
    stall.resume()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(10 * T)
    assert stall.expired()
    stall.stop()


async def test_another_cancellation_is_not_mistaken_for_a_timeout() -> None:
    async def waiter(stall_box: list[_Stall]) -> None:
        stall_box.append(_Stall(10.0))
        await asyncio.sleep(10)

    box: list[_Stall] = []
    task = asyncio.create_task(waiter(box))
    await asyncio.sleep(0)
    task.cancel()  # e.g. the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not box[0].expired()
    box[0].stop()


async def test_both_at_once_leave_the_outer_cancellation_in_force() -> None:
    seen: list[bool] = []
    box: list[_Stall] = []

    async def waiter() -> None:
        stall = _Stall(10.0)
        box.append(stall)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(stall.expired())
            raise
        finally:
            stall.stop()

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # it waits now
    box[0].since -= 10.0
    box[0]._check()  # the timer fires ...
    task.cancel()  # ... and the client goes away, before the task runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False]


def test_flag_env_and_status() -> None:
    assert parse_args([]).request_progress_timeout == 300.0
    assert parse_args(["--request-progress-timeout", "2.5"]).request_progress_timeout == 2.5
    assert parse_args([], env={"DYN_REQUEST_PROGRESS_TIMEOUT": "7"}).request_progress_timeout == 7.0
    assert WorkerTimedOut.http_status == 504
