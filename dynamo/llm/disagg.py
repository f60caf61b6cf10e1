"""The prefill -> decode handoff and its rules, in one place.

Used by the frontend (prefill on a prefill worker, then decode on a decode worker), by a decode
worker that receives a request without a prefill result, and by the worker shell of a prefill
worker (the rules a prefill request obeys). Engine adapters only translate what these rules let
through; none of them checks a role's rules again.

Two handoff modes, chosen by what the prefill worker's model card advertises, never by engine name:
- pull (vLLM's NIXL connector, TensorRT-LLM): the prefill runs first; its result (DisaggregatedParams)
  travels with the decode request, and the decode engine pulls the KV with it (`remote_prefill`).
- bootstrap (SGLang): the card has a `bootstrap_endpoint`. The orchestrator picks a room, and the
  prefill request and the decode request, both carrying it (`GenerateRequest.bootstrap`), run at the
  same time: they meet at the prefill worker's bootstrap endpoint. Waiting for the prefill before
  sending the decode can deadlock the transfer. Either side failing fails both, and a decode that
  has produced nothing within the prefill timeout fails the request (`disaggregated`).

Rules of a prefill worker:
- it runs the client's prompt and sampling with max_tokens=1 and no min_tokens (`prefill_request`);
- it refuses a request that already carries a prefill result (`check_prefill_input`);
- its last output carries the DisaggregatedParams a decode worker needs, stamped with the prefill
  instance's id (`stamp_prefill_output`); an output without them fails the handoff.

Convention: a decode engine given a prefill's DisaggregatedParams streams the *whole* output, the
first token included (so a disaggregated stream equals the aggregated one); `first_token_ids`
travels for information and for engines that need it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator, Callable

from dynamo.llm.errors import NoWorkersError, PrefillError, WorkerError
from dynamo.llm.model_pool import card_of
from dynamo.llm.protocol import Bootstrap, DisaggregatedParams, GenerateOutput, GenerateRequest, InvalidRequest
from dynamo.llm.worker_group import WorkerGroup
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc.client import NoInstancesError

log = logging.getLogger(__name__)


def prefill_request(request: GenerateRequest) -> GenerateRequest:
    """The request a prefill worker runs: same prompt and sampling, one token, no min_tokens."""
    stop = dataclasses.replace(request.stop, max_tokens=1, min_tokens=None)
    return dataclasses.replace(request, stop=stop, disaggregated_params=None)


def check_prefill_input(request: GenerateRequest) -> None:
    """A prefill worker computes KV; a request that brings a prefill's result belongs to a decode worker."""
    if request.disaggregated_params is not None:
        raise InvalidRequest("this is a prefill worker: a request that already carries a prefill result "
                             "(disaggregated_params) belongs on a decode worker")


def check_handoff_mode(request: GenerateRequest, engine_name: str, bootstrap_handoff: bool) -> None:
    """A bootstrap room means nothing to an engine that hands KV over in pull mode: refuse it."""
    if request.bootstrap is not None and not bootstrap_handoff:
        raise InvalidRequest(f"this {engine_name} worker hands KV over in pull mode (disaggregated_params) and "
                             "cannot meet a prefill in a bootstrap room; send the request without bootstrap")


def stamp_prefill_output(output: GenerateOutput, instance_id: str) -> GenerateOutput:
    """Mark the prefill result with the instance that holds its KV blocks."""
    if output.disaggregated_params is not None and not output.disaggregated_params.prefill_instance_id:
        output.disaggregated_params.prefill_instance_id = instance_id
    return output


async def remote_prefill(prefill: WorkerGroup, request: GenerateRequest, timeout: float,
                         record: InstanceRecord | None = None,
                         on_output: Callable[[GenerateOutput], object] | None = None) -> DisaggregatedParams:
    """Run the prompt's prefill on a prefill worker (`record`, else the group's next one); return
    what the decode side needs. `on_output` sees each of the prefill's outputs (its usage, say).

    Raises NoWorkersError when there is no prefill worker, InvalidRequest when the prefill worker
    refused the request, and PrefillError when it failed, vanished or took longer than `timeout`.
    """
    if record is None:
        try:
            record = prefill.select()
        except NoInstancesError as e:
            raise NoWorkersError(str(e)) from None
    params = await _run_prefill(prefill, record, prefill_request(request), timeout, on_output, "prefill")
    if params is None:
        raise PrefillError(f"prefill worker {record.instance_id} returned no disaggregated params for "
                           f"request {request.request_id}", instance_id=record.instance_id)
    params.prefill_instance_id = params.prefill_instance_id or record.instance_id
    return params


# --- both modes ---------------------------------------------------------------------------------

def bootstrap_endpoint(record: InstanceRecord) -> tuple[str, int] | None:
    """The (host, port) a bootstrap-mode prefill worker advertises; None for a pull-mode one."""
    card = card_of(record)
    endpoint = card.bootstrap_endpoint if card is not None else None
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


def new_room() -> int:
    """A bootstrap room: random 63 bits, so concurrent requests of every frontend never meet by mistake."""
    return secrets.randbits(63)


async def disaggregated(prefill: WorkerGroup, record: InstanceRecord, request: GenerateRequest, timeout: float,
                        decode: Callable[[GenerateRequest], AsyncIterator[GenerateOutput]],
                        on_prefill_output: Callable[[GenerateOutput], object] | None = None
                        ) -> AsyncIterator[GenerateOutput]:
    """The decode side's outputs for `request`, its prompt prefilled on the prefill worker `record`,
    in that worker's mode. `decode(request)` runs the decode side (a decode worker's engine, or a
    call to a decode worker). Raises as remote_prefill does when the prefill fails."""
    endpoint = bootstrap_endpoint(record)
    if endpoint is None:
        params = await remote_prefill(prefill, request, timeout, record, on_output=on_prefill_output)
        async for out in decode(dataclasses.replace(request, disaggregated_params=params)):
            yield out
        return
    room = Bootstrap(host=endpoint[0], port=endpoint[1], room=new_room())
    prefill_task = asyncio.create_task(
        _prefill_to_end(prefill, record, dataclasses.replace(prefill_request(request), bootstrap=room), timeout,
                        on_prefill_output), name=f"bootstrap prefill {request.request_id}")
    try:
        async for out in _until_first_token(decode(dataclasses.replace(request, bootstrap=room)), prefill_task,
                                            timeout, request.request_id):
            yield out
    finally:
        if not prefill_task.done():
            prefill_task.cancel()  # the decode side failed or its client went away: stop the prefill too
        await asyncio.gather(prefill_task, return_exceptions=True)


async def _prefill_to_end(prefill: WorkerGroup, record: InstanceRecord, request: GenerateRequest, timeout: float,
                          on_output: Callable[[GenerateOutput], object] | None) -> None:
    await _run_prefill(prefill, record, request, timeout, on_output, "bootstrap prefill")


async def _run_prefill(prefill: WorkerGroup, record: InstanceRecord, request: GenerateRequest, timeout: float,
                       on_output: Callable[[GenerateOutput], object] | None, what: str) -> DisaggregatedParams | None:
    """Run `request` (already a prefill request) on `record` to its end; the handoff params it
    returned, if any. Its failures become PrefillError (InvalidRequest passes through)."""
    params: DisaggregatedParams | None = None
    try:
        async with asyncio.timeout(timeout):
            async for out in prefill.generate(record, request, timeout=timeout):
                if on_output is not None:
                    on_output(out)
                if out.disaggregated_params is not None:
                    params = out.disaggregated_params
    except InvalidRequest:
        raise
    except TimeoutError:
        raise PrefillError(f"{what} of request {request.request_id} on instance {record.instance_id} "
                           f"took longer than {timeout:g} s", instance_id=record.instance_id) from None
    except WorkerError as e:
        raise PrefillError(f"{what} of request {request.request_id} failed: {e}",
                           instance_id=record.instance_id, unreached=e.unreached) from e
    return params


async def _until_first_token(outputs: AsyncIterator[GenerateOutput], prefill_task: asyncio.Task[None],
                             timeout: float, request_id: str) -> AsyncIterator[GenerateOutput]:
    """`outputs`, failing them when the prefill fails before the decode side's first token, or when
    no first token comes within `timeout` (a dead prefill worker must not leave the decode waiting
    in its room). After the first token the transfer is done: plain iteration, no per-output cost."""
    it = aiter(outputs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    step: asyncio.Future[GenerateOutput] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(it))
            while not step.done():
                waiting: set[asyncio.Future[object]] = {step}  # type: ignore[arg-type]
                if not prefill_task.done():
                    waiting.add(prefill_task)  # type: ignore[arg-type]
                left = deadline - loop.time()
                if left <= 0:
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)  # the generator must stop before aclose
                    raise PrefillError(f"request {request_id}: no first token within {timeout:g} s of its "
                                       "bootstrap handoff")
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if prefill_task.done() and not prefill_task.cancelled() and prefill_task.exception() is not None:
                    step.cancel()
                    await asyncio.gather(step, return_exceptions=True)
                    raise prefill_task.exception()  # type: ignore[misc]
            try:
                out = step.result()
            except StopAsyncIteration:
                return
            except Exception:
                if prefill_task.done() and not prefill_task.cancelled() and prefill_task.exception() is not None:
                    raise prefill_task.exception() from None  # type: ignore[misc]  # the root cause
                raise
            yield out
            if out.token_ids or out.finish_reason is not None:
                break
        async for out in it:
            yield out
    finally:
        if step is not None and not step.done():  # we were cancelled while waiting: stop the generator first
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)
        close = getattr(it, "aclose", None)
        if close is not None:
            await close()
