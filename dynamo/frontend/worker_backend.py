"""The frontend's view of the workers: which models are served, routing, disaggregation, migration.

Implements dynamo.frontend.backend.ServingBackend over discovery and the workers' gRPC interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Collection
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
from dynamo.llm.stream_client import OutputPacing
from dynamo.llm.transport import DEFAULT_TRANSPORT
from dynamo.llm.worker_group import WorkerGroup
from dynamo.runtime.discovery import Discovery, open_discovery
from dynamo.runtime.discovery.records import InstanceRecord
from dynamo.runtime.rpc import tls as rpc_tls
from dynamo.runtime.rpc.client import NoInstancesError

log = logging.getLogger(__name__)

PREFILL_ROLES = (Role.PREFILL,)
IDLE_PREFILL_CHECK_S = 2.0
# How long a worker that stalled a request (--request-progress-timeout) stays out of rotation at
# most; its health probe brings it back sooner once it answers (rpc/client.py).
STALLED_HOLD_S = 30.0


class WorkerTimedOut(WorkerFailed):
    """The worker sent nothing for --request-progress-timeout seconds and the request could not move."""

    http_status = 504
    error_type = "timeout"


class _Stall:
    """The request's one progress timer: fires when the worker sent nothing for `timeout` s while
    the request waited for it (time the consumer spends elsewhere, e.g. writing to a slow client,
    does not count). Firing cancels the waiting task, as asyncio.timeout does; `expired()` then
    tells that cancellation from any other. Per output the request only flips `waiting` and reads
    the clock: no timer is re-armed per token."""

    __slots__ = ("_loop", "_task", "_cancelling", "timeout", "since", "waiting", "_fired", "_handle")

    def __init__(self, timeout: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._cancelling = task.cancelling()
        self.timeout = timeout
        self.since = self._loop.time()  # when the request started waiting for its next output
        self.waiting = True
        self._fired = False
        self._handle = self._loop.call_at(self.since + timeout, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if self.waiting and now >= self.since + self.timeout:
            self._fired = True
            self._task.cancel()
            return
        self._handle = self._loop.call_at((self.since if self.waiting else now) + self.timeout, self._check)

    def resume(self) -> None:
        """The request waits for its next output again."""
        self.since = self._loop.time()
        self.waiting = True

    def expired(self) -> bool:
        """Whether a CancelledError caught now is this timer's (and only this timer's): call once."""
        return self._fired and self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._handle.cancel()


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
                 progress_timeout: float = 0.0, owns_discovery: bool = True,
                 stream_chunk_rate: float = 0.0) -> None:
        """`progress_timeout` (> 0): a worker that sends nothing for a request for this long is held
        out of rotation and the request migrated (within `migration_limit`) or failed with 504.
        `stream_chunk_rate` (> 0): this process's budget of output deliveries per second (OutputPacing)."""
        self._discovery = discovery
        self._owns_discovery = owns_discovery
        self.pacing = OutputPacing(stream_chunk_rate) if stream_chunk_rate > 0 else None
        self.pool = ModelPool(discovery, namespace, request_transport, self.pacing)
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
        self.progress_timeout = progress_timeout
        self.stalls = 0  # requests whose worker went silent for progress_timeout
        self.migrations = 0  # requests moved to another worker (tests and metrics read it)
        self.rerouted = 0  # requests sent elsewhere because their first worker was unreachable
        self.prefill_fallbacks = 0  # requests a decode worker took whole after their remote prefill failed
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

    def prompt_hasher(self, card: ModelCard) -> Callable[[list[int]], None] | None:
        return self.kv_router.prompt_hasher(card) if self.kv_router is not None else None

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
            split = False
            stall = _Stall(self.progress_timeout) if self.progress_timeout > 0 else None
            try:
                card = card_of(record)
                split = remote and card is not None and card.continues_prefill
                if split:
                    outputs = self._disaggregated(prefill, decode, record, request)
                else:
                    outputs = decode.generate(record, request)
                first = True
                async for out in outputs:
                    if stall is not None:
                        stall.waiting = False
                    if first and out.token_ids:
                        first = False
                        decision.first_token()
                    generated.extend(out.token_ids)
                    if out.usage is not None:
                        usage = out.usage
                        if attempt > 0:
                            out.usage = _usage_across_attempts(original, generated, out.usage)
                    yield out
                    if stall is not None:
                        stall.resume()
                return
            except (WorkerError, asyncio.CancelledError) as exc:
                if stall is not None:
                    stall.stop()  # this attempt is over (a yield below must not be timed)
                if isinstance(exc, asyncio.CancelledError):
                    if stall is None or not stall.expired():
                        raise
                    err = self._stalled(decode, record, original, split, len(generated))
                    if attempt >= self.migration_limit:
                        raise WorkerTimedOut(f"{err}; --migration-limit {self.migration_limit} allows no "
                                             "further attempt") from None
                else:
                    err = exc
                if err.unreached and not generated:
                    # It never had the request (connection refused: a dead worker whose record
                    # lingers): another instance takes it, whatever the migration limit.
                    failed.add(record.instance_id)
                    self.rerouted += 1
                    log.warning("[%s] worker %s unreachable (%s); sending the request to another worker",
                                original.request_id, record.instance_id, err)
                    continue
                if not err.retryable or attempt >= self.migration_limit:
                    raise WorkerFailed(f"request {request.request_id} failed on worker {record.instance_id}: "
                                       f"{err}") from err
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
                            original.request_id, record.instance_id, len(generated), err, attempt,
                            self.migration_limit)
            finally:
                if stall is not None:
                    stall.stop()
                decision.finished(usage)

    def _stalled(self, decode: WorkerGroup, record: InstanceRecord, original: GenerateRequest, split: bool,
                 produced: int) -> WorkerError:
        """A request whose worker went silent: that worker out of rotation, and the error to act on.
        A split request silent before its first token may wait on its prefill worker instead (which
        has --prefill-timeout of its own): no worker is held out for it."""
        self.stalls += 1
        if produced or not split:
            decode.endpoint.hold_out(record.instance_id, STALLED_HOLD_S,
                                     why=f"sent nothing for {self.progress_timeout:g} s (--request-progress-timeout)")
        what = "its first token" if not produced else f"any output after {produced} token(s)"
        where = "prefill+decode on" if split else "on"
        return WorkerError(f"request {original.request_id} {where} worker {record.instance_id}: no progress "
                           f"({what}) within {self.progress_timeout:g} s", instance_id=record.instance_id,
                           retryable=True)

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
            failed_prefill: PrefillError | None = None
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
                card = card_of(record)
                if (produced or e.instance_id != decision.record.instance_id or card is None
                        or not card.prefill_fallback_local):
                    raise WorkerFailed(str(e)) from e
                failed_prefill = e
            except NoWorkersError as e:
                raise WorkerFailed(str(e)) from e
            finally:
                decision.finished(usage[-1] if usage else None)
            # The prefill worker failed before the handoff (it died mid-prefill, say) and the decode
            # worker allows it (--prefill-fallback-local): the decode worker takes the whole request
            # and prefills it by its own rules (on another prefill worker, or locally).
            log.warning("[%s] prefill on %s failed (%s); the decode worker %s takes the whole request "
                        "(--prefill-fallback-local)", request.request_id, decision.record.instance_id,
                        failed_prefill, record.instance_id)
            self.prefill_fallbacks += 1
            async for out in decode.generate(record, request):
                yield out
            return

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
                                   max_inflight_per_worker=config.max_inflight_per_worker,
                                   progress_timeout=config.request_progress_timeout,
                                   stream_chunk_rate=config.stream_chunk_rate)
    return await backend.start()
