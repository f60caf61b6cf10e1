"""What a worker does with a validated request, by role (agg / prefill / decode)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from dynamo.llm.disagg import check_prefill_input, disaggregated, prefill_request, stamp_prefill_output
from dynamo.llm.engine import LLMEngine
from dynamo.llm.errors import NoWorkersError, PrefillError
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import GenerateOutput, GenerateRequest, InvalidRequest
from dynamo.llm.worker.metrics import BoundWorkerMetrics
from dynamo.llm.worker_group import WorkerGroup
from dynamo.runtime.rpc.client import NoInstancesError

log = logging.getLogger(__name__)


class RequestHandler:
    """Aggregated: the engine does prefill and decode."""

    def __init__(self, engine: LLMEngine, metrics: BoundWorkerMetrics) -> None:
        self.engine = engine
        self.metrics = metrics

    def check(self, request: GenerateRequest) -> None:
        """The role's rules for a request, before anything runs (InvalidRequest)."""
        params = request.disaggregated_params
        if (params is not None or request.bootstrap is not None) and not self.engine.accepts_remote_prefill:
            made_by = f" (disaggregated_params from a {params.engine!r} prefill worker)" if params else ""
            raise InvalidRequest(f"this aggregated {self.engine.name} worker cannot continue a prefill worker's "
                                 f"request{made_by}: send it without a prefill result, or to a decode worker")

    def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        if request.disaggregated_params is not None or request.bootstrap is not None:
            self.metrics.prefill("remote")  # a worker without a mode continuing a prefill worker's request
        return self.engine.generate(request)


class PrefillHandler(RequestHandler):
    """Prefill: compute the prompt's KV, produce one token and the params a decode worker needs
    (the rules are dynamo.llm.disagg's; the engine only translates)."""

    def __init__(self, engine: LLMEngine, metrics: BoundWorkerMetrics, instance_id: str) -> None:
        super().__init__(engine, metrics)
        self.instance_id = instance_id

    def check(self, request: GenerateRequest) -> None:
        check_prefill_input(request)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        async for out in self.engine.generate(prefill_request(request)):
            yield stamp_prefill_output(out, self.instance_id)


class DecodeHandler(RequestHandler):
    """Decode: generate from a prefill worker's KV. A request that arrives without a prefill result
    is prefilled remotely first (when a prefill worker exists and the prompt is long enough), or
    locally, which is logged and counted, never silent."""

    def __init__(self, engine: LLMEngine, metrics: BoundWorkerMetrics, prefill: WorkerGroup | None,
                 *, max_local_prefill_length: int, prefill_timeout: float, fallback_local: bool) -> None:
        super().__init__(engine, metrics)
        self.prefill = prefill
        self.max_local_prefill_length = max_local_prefill_length
        self.prefill_timeout = prefill_timeout
        self.fallback_local = fallback_local

    def check(self, request: GenerateRequest) -> None:
        """A decode worker takes a prefill's result, or prefills first (remotely or locally)."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        rid = request.request_id
        if request.disaggregated_params is not None or request.bootstrap is not None:
            self.metrics.prefill("remote")  # the orchestrator (a frontend) prefilled it already
            async for out in self.engine.generate(request):
                yield out
            return
        needs_handoff = self.engine.decode_needs_handoff
        if needs_handoff and (self.prefill is None or not self.prefill.instances()):
            raise NoWorkersError(f"no prefill worker serves this model, and a {self.engine.name} decode worker "
                                 "cannot prefill a prompt itself")
        if len(request.token_ids) <= self.max_local_prefill_length and not needs_handoff:
            log.info("[%s] prefilling locally: prompt of %d tokens <= --max-local-prefill-length %d",
                     rid, len(request.token_ids), self.max_local_prefill_length)
        elif self.prefill is None or not self.prefill.instances():
            log.warning("[%s] prefilling locally: no prefill worker serves this model", rid)
        else:
            produced = False
            unreachable: set[str] = set()
            while True:
                try:
                    record = self.prefill.select(exclude=unreachable)
                except NoInstancesError as e:
                    if not unreachable or needs_handoff:
                        raise NoWorkersError(str(e)) from e
                    log.warning("[%s] prefilling locally: no prefill worker is reachable", rid)
                    break
                try:
                    async for out in disaggregated(self.prefill, record, request, self.prefill_timeout,
                                                   self.engine.generate):
                        if not produced:
                            produced = True
                            self.metrics.prefill("remote")
                        yield out
                    return
                except (PrefillError, NoWorkersError) as e:
                    if isinstance(e, PrefillError) and e.unreached and not produced:
                        unreachable.add(record.instance_id)  # a dead prefill worker whose record lingers
                        continue
                    if produced or not self.fallback_local or needs_handoff:
                        raise
                    log.warning("[%s] remote prefill failed (%s); prefilling locally (--prefill-fallback-local)",
                                rid, e)
                    break
        self.metrics.prefill("local")
        async for out in self.engine.generate(request):
            yield out


def make_handler(role: Role, engine: LLMEngine, metrics: BoundWorkerMetrics, instance_id: str,
                 prefill: WorkerGroup | None, *, max_local_prefill_length: int = 0,
                 prefill_timeout: float = 30.0, fallback_local: bool = False) -> RequestHandler:
    if role is Role.PREFILL:
        return PrefillHandler(engine, metrics, instance_id)
    if role is Role.DECODE:
        return DecodeHandler(engine, metrics, prefill, max_local_prefill_length=max_local_prefill_length,
                             prefill_timeout=prefill_timeout, fallback_local=fallback_local)
    return RequestHandler(engine, metrics)
