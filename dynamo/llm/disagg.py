"""The prefill -> decode handoff and its rules, in one place.

Used by the frontend (prefill on a prefill worker, then decode on a decode worker), by a decode
worker that receives a request without a prefill result, and by the worker shell of a prefill
worker (the rules a prefill request obeys). Engine adapters only translate what these rules let
through; none of them checks a role's rules again.

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
from collections.abc import Callable

from dynamo.llm.errors import NoWorkersError, PrefillError, WorkerError
from dynamo.llm.protocol import DisaggregatedParams, GenerateOutput, GenerateRequest, InvalidRequest
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
    params: DisaggregatedParams | None = None
    try:
        async with asyncio.timeout(timeout):
            async for out in prefill.generate(record, prefill_request(request), timeout=timeout):
                if on_output is not None:
                    on_output(out)
                if out.disaggregated_params is not None:
                    params = out.disaggregated_params
    except InvalidRequest:
        raise
    except TimeoutError:
        raise PrefillError(f"prefill of request {request.request_id} on instance {record.instance_id} "
                           f"took longer than {timeout:g} s", instance_id=record.instance_id) from None
    except WorkerError as e:
        raise PrefillError(f"prefill of request {request.request_id} failed: {e}",
                           instance_id=record.instance_id) from e
    if params is None:
        raise PrefillError(f"prefill worker {record.instance_id} returned no disaggregated params for "
                           f"request {request.request_id}", instance_id=record.instance_id)
    params.prefill_instance_id = params.prefill_instance_id or record.instance_id
    return params
