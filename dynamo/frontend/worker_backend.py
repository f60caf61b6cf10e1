"""The frontend's view of the workers: which models are served, routing, disaggregation, migration.

Implements dynamo.frontend.backend.ServingBackend over discovery and the workers' gRPC interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Collection
from typing import NamedTuple

from dynamo.frontend.args import FrontendConfig
from dynamo.frontend.backend import NoWorkers, Overloaded, UnknownModel, WorkerFailed
from dynamo.frontend.router import DEFAULT_ROUTER_MODE, Decision, Router, make_router
from dynamo.frontend.router.intake import KvIntake
from dynamo.frontend.router.kv import KvRouter
from dynamo.frontend.router.settings import KvRouterSettings, RouterObserver
from dynamo.llm.disagg import disaggregated
from dynamo.llm.errors import NoWorkersError, PrefillError, WorkerError
from dynamo.llm.model_card import ModelCard, Role
from dynamo.llm.model_pool import SERVING_ROLES, ModelPool, card_of
from dynamo.llm.protocol import FinishReason, GenerateOutput, GenerateRequest, Usage
from dynamo.llm.transport import DEFAULT_TRANSPORT
from dynamo.llm.worker_group import WorkerGroup
from dynamo.runtime.discovery import Discovery, open_discovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc import tls as rpc_tls
from dynamo.runtime.rpc.client import NoInstancesError

log = logging.getLogger(__name__)

PREFILL_ROLES = (Role.PREFILL,)
IDLE_PREFILL_CHECK_S = 2.0


class IdlePrefill(NamedTuple):
    """Prefill workers of a model that no request can reach, and why."""
    workers: int
    reason: str


def continues_prefill(record: InstanceRecord) -> bool:
    card = card_of(record)
    return card is not None and card.continues_prefill


class WorkerServingBackend:
    def __init__(self, discovery: Discovery, namespace: str, *, router_mode: str = DEFAULT_ROUTER_MODE,
                 kv_router: KvRouterSettings | None = None, router_observer: RouterObserver | None = None,
                 request_transport: str = DEFAULT_TRANSPORT, migration_limit: int = 0,
                 prefill_timeout: float = 30.0, max_inflight_per_worker: int = 0,
                 owns_discovery: bool = True) -> None:
        self._discovery = discovery
        self._owns_discovery = owns_discovery
        self.pool = ModelPool(discovery, namespace, request_transport)
        self.router_mode = router_mode
        self.kv_router: KvRouter | None = None
        self._kv_intake: KvIntake | None = None
        if router_mode == "kv":  # one router for every model: it keeps the index and the loads
            self.kv_router = KvRouter(kv_router or KvRouterSettings(), router_observer)
        else:
            make_router(router_mode)  # an unknown mode fails here, not on the first request
        self._routers: dict[tuple[str, tuple[Role, ...]], Router] = {}
        self.migration_limit = migration_limit
        self.max_inflight_per_worker = max_inflight_per_worker
        self.prefill_timeout = prefill_timeout
        self.migrations = 0  # requests moved to another worker (tests and metrics read it)
        self.rerouted = 0  # requests sent elsewhere because their first worker was unreachable
        self._idle_watch: asyncio.Task[None] | None = None

    async def start(self) -> WorkerServingBackend:
        await self.pool.start()
        if self.kv_router is not None:
            self._kv_intake = KvIntake(self.pool.watcher, self.kv_router)
            self._kv_intake.start()
        self._idle_watch = asyncio.create_task(self._watch_idle_prefill(), name="idle prefill watch")
        return self

    def router_state(self) -> dict[str, object]:
        """What the router knows (GET /v1/router/state)."""
        if self.kv_router is not None:
            return self.kv_router.state()
        return {"mode": self.router_mode}

    def idle_prefill(self) -> dict[str, IdlePrefill]:
        """Models whose prefill workers are live but idle: no worker can continue their prefills
        (say, aggregated workers of an engine that cannot take a handoff). Never silent: logged,
        on /health and in dynamo_frontend_idle_prefill_workers."""
        idle = {}
        for model in self.pool.cards(PREFILL_ROLES):
            prefill = self.pool.group(model, PREFILL_ROLES).instances()
            serving = self.pool.group(model, SERVING_ROLES).instances()
            if not prefill or any(continues_prefill(r) for r in serving):
                continue
            if not serving:
                reason = "no decode worker is live"
            else:
                engines = sorted({c.engine for c in map(card_of, serving) if c is not None})
                reason = (f"its {len(serving)} worker(s) are aggregated and their engine ({', '.join(engines)}) "
                          "cannot continue a prefill worker's request: start them with "
                          "--disaggregation-mode decode")
            idle[model] = IdlePrefill(len(prefill), reason)
        return idle

    async def _watch_idle_prefill(self) -> None:
        said: dict[str, IdlePrefill] = {}
        while True:
            now = self.idle_prefill()
            for model, idle in now.items():
                if said.get(model) != idle:
                    log.warning("model %r: %d prefill worker(s) are idle: %s", model, idle.workers, idle.reason)
            for model in said.keys() - now.keys():
                log.info("model %r: its prefill workers are in use again (or gone)", model)
            said = now
            await asyncio.sleep(IDLE_PREFILL_CHECK_S)

    def models(self) -> list[ModelCard]:
        return list(self.pool.cards(SERVING_ROLES).values())

    def card(self, model: str) -> ModelCard:
        cards = self.pool.cards(SERVING_ROLES)
        if model in cards:
            return cards[model]
        if model in self.pool.cards(PREFILL_ROLES):
            raise NoWorkers(f"model {model!r} has prefill workers but no decode worker is live")
        served = ", ".join(sorted(cards)) or "none"
        raise UnknownModel(f"model {model!r} is not served here; served models: {served}")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        self.card(request.model)  # UnknownModel / NoWorkers before anything is sent
        decode = self.pool.group(request.model, SERVING_ROLES)
        prefill = self.pool.group(request.model, PREFILL_ROLES)
        limit = self.max_inflight_per_worker
        if limit and all(decode.inflight(r.instance_id) >= limit for r in decode.instances()):
            raise Overloaded(f"all {len(decode.instances())} worker(s) of model {request.model!r} have {limit} "
                             f"request(s) in flight (--max-inflight-per-worker); retry later")
        original = request
        generated: list[int] = []
        failed: set[str] = set()
        attempt = 0
        while True:
            # A remote prefill brings the prompt's KV along: the decode worker is then chosen by load.
            # Decode workers, and aggregated ones that accept a handoff (a worker started without a
            # mode next to --is-prefill-worker workers), continue prefill workers' requests.
            remote = (request.disaggregated_params is None and bool(prefill.instances())
                      and any(continues_prefill(r) for r in decode.instances()))
            try:
                decision = self._route(decode, request, SERVING_ROLES, exclude=failed, overlap_credit=not remote)
            except NoInstancesError as e:
                if attempt == 0:
                    raise NoWorkers(f"no live worker serves model {request.model!r}") from e
                raise WorkerFailed(f"request {request.request_id}: its worker failed and no other worker "
                                   f"is left to continue it ({e})") from e
            record = decision.record
            usage: Usage | None = None
            try:
                card = card_of(record)
                if remote and card is not None and card.continues_prefill:
                    outputs = self._disaggregated(prefill, decode, record, request)
                else:
                    outputs = decode.generate(record, request)
                first = True
                async for out in outputs:
                    if first and out.token_ids:
                        first = False
                        decision.first_token()
                    generated.extend(out.token_ids)
                    if out.usage is not None:
                        usage = out.usage
                        if attempt > 0:
                            out.usage = _usage_across_attempts(original, generated, out.usage)
                    yield out
                return
            except WorkerError as e:
                if e.unreached and not generated:
                    # It never had the request (connection refused: a dead worker whose record
                    # lingers): another instance takes it, whatever the migration limit.
                    failed.add(record.instance_id)
                    self.rerouted += 1
                    log.warning("[%s] worker %s unreachable (%s); sending the request to another worker",
                                original.request_id, record.instance_id, e)
                    continue
                if not e.retryable or attempt >= self.migration_limit:
                    raise WorkerFailed(f"request {request.request_id} failed on worker {record.instance_id}: "
                                       f"{e}") from e
                if original.stop.max_tokens is not None and len(generated) >= original.stop.max_tokens:
                    # Every token owed arrived; only the final message was lost.
                    yield GenerateOutput(finish_reason=FinishReason.LENGTH,
                                         usage=_usage_across_attempts(original, generated, Usage()))
                    return
                attempt += 1
                self.migrations += 1
                failed.add(record.instance_id)
                request = _continuation(original, generated)
                log.warning("[%s] worker %s failed after %d tokens (%s); migrating (attempt %d of %d)",
                            original.request_id, record.instance_id, len(generated), e, attempt,
                            self.migration_limit)
            finally:
                decision.finished(usage)

    async def _disaggregated(self, prefill: WorkerGroup, decode: WorkerGroup, record: InstanceRecord,
                             request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        """The prompt prefilled on a prefill worker (the router's pick), the rest on `record`, in
        the prefill worker's handoff mode (dynamo.llm.disagg)."""
        unreachable: set[str] = set()
        while True:
            try:
                decision = self._route(prefill, request, PREFILL_ROLES, exclude=unreachable)
            except NoInstancesError as e:
                if not unreachable:
                    raise WorkerFailed(str(e)) from e
                # Every prefill worker is unreachable: the decode side prefills (a decode worker by its
                # own rules, an aggregated one itself).
                log.warning("[%s] no prefill worker is reachable; the decode worker %s takes the whole request",
                            request.request_id, record.instance_id)
                async for out in decode.generate(record, request):
                    yield out
                return
            usage: list[Usage] = []
            produced = False
            try:
                async for out in disaggregated(prefill, decision.record, request, self.prefill_timeout,
                                               lambda r: decode.generate(record, r),
                                               on_prefill_output=lambda o: usage.append(o.usage) if o.usage else None):
                    produced = True
                    yield out
                return
            except PrefillError as e:
                if e.unreached and not produced:
                    unreachable.add(decision.record.instance_id)
                    self.rerouted += 1
                    continue
                raise WorkerFailed(str(e)) from e
            except NoWorkersError as e:
                raise WorkerFailed(str(e)) from e
            finally:
                decision.finished(usage[-1] if usage else None)

    def _route(self, group: WorkerGroup, request: GenerateRequest, roles: tuple[Role, ...],
               exclude: Collection[str] = (), overlap_credit: bool = True) -> Decision:
        candidates = [r for r in group.instances() if r.instance_id not in exclude]
        if not candidates:
            raise NoInstancesError(f"no live instance of {group.label}"
                                   + (f" (excluding {sorted(exclude)})" if exclude else ""))
        router: Router | None = self.kv_router
        if router is None:
            key = (request.model, roles)
            router = self._routers.get(key)
            if router is None:
                router = self._routers[key] = make_router(self.router_mode)
        return router.select(candidates, request, group.inflight, overlap_credit=overlap_credit)

    async def close(self) -> None:
        if self._idle_watch is not None:
            self._idle_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._idle_watch
        if self._kv_intake is not None:
            await self._kv_intake.close()
        await self.pool.close()
        if self._owns_discovery:
            await self._discovery.close()


def _continuation(original: GenerateRequest, generated: list[int]) -> GenerateRequest:
    """The same request, continued: prompt + tokens so far, and the tokens still owed."""
    stop = original.stop
    max_tokens = None if stop.max_tokens is None else stop.max_tokens - len(generated)
    min_tokens = None if stop.min_tokens is None else max(0, stop.min_tokens - len(generated))
    return dataclasses.replace(original, token_ids=original.token_ids + generated,
                               stop=dataclasses.replace(stop, max_tokens=max_tokens, min_tokens=min_tokens),
                               disaggregated_params=None)


def _usage_across_attempts(original: GenerateRequest, generated: list[int], last: Usage) -> Usage:
    return Usage(prompt_tokens=len(original.token_ids), completion_tokens=len(generated),
                 cached_tokens=min(last.cached_tokens, len(original.token_ids)))


async def create_serving_backend(config: FrontendConfig, router_observer: RouterObserver | None = None
                                 ) -> WorkerServingBackend:
    rpc_tls.configure_client(config.tls)  # for workers whose records say TLS
    discovery = open_discovery(config.discovery)
    await discovery.start()
    backend = WorkerServingBackend(discovery, config.namespace, router_mode=config.router_mode,
                                   kv_router=config.kv_router, router_observer=router_observer,
                                   request_transport=config.request_transport,
                                   migration_limit=config.migration_limit,
                                   max_inflight_per_worker=config.max_inflight_per_worker)
    return await backend.start()
