"""The prefill -> decode handoff, in one place.

Used by the frontend (prefill on a prefill worker, then decode on a decode worker) and by a decode
worker that receives a request without a prefill result.

Convention: a decode engine given a prefill's DisaggregatedParams streams the *whole* output, the
first token included (so a disaggregated stream equals the aggregated one); `first_token_ids`
travels for information and for engines that need it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from dynamo.llm.errors import NoWorkersError, PrefillError, WorkerError
from dynamo.llm.protocol import DisaggregatedParams, GenerateRequest, InvalidRequest
from dynamo.llm.rpc_client import generate_on
from dynamo.runtime.rpc.client import EndpointClient, NoInstancesError

log = logging.getLogger(__name__)


def prefill_request(request: GenerateRequest) -> GenerateRequest:
    """The request a prefill worker runs: same prompt and sampling, one token, no min_tokens."""
    stop = dataclasses.replace(request.stop, max_tokens=1, min_tokens=None)
    return dataclasses.replace(request, stop=stop, disaggregated_params=None)


async def remote_prefill(prefill: EndpointClient, request: GenerateRequest, timeout: float
                         ) -> DisaggregatedParams:
    """Run the prompt's prefill on a prefill worker; return what the decode side needs.

    Raises NoWorkersError when there is no prefill worker, InvalidRequest when the prefill worker
    refused the request, and PrefillError when it failed, vanished or took longer than `timeout`.
    """
    try:
        record = prefill.select()
    except NoInstancesError as e:
        raise NoWorkersError(str(e)) from None
    params: DisaggregatedParams | None = None
    try:
        async with asyncio.timeout(timeout):
            async for out in generate_on(prefill, record, prefill_request(request), timeout=timeout):
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
