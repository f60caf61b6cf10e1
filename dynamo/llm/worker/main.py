"""Wiring of a worker process: runtime + engine + gRPC service + registration + lifecycle.

`serve_engine(EngineClass)` is the whole `main` of a backend: it parses the engine's own flags
and the shared worker flags, builds the engine, and serves it until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from dynamo.llm.engine import LLMEngine
from dynamo.llm.model_card import ModelCard, ModelSource, Role
from dynamo.llm.model_pool import ModelPool
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from dynamo.llm.protocol import EngineInfo, GenerateRequest, StopConditions
from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from dynamo.llm.worker.handlers import make_handler
from dynamo.llm.worker.metrics import BoundWorkerMetrics, WorkerMetrics
from dynamo.llm.worker.servicer import SERVICE_NAME, WorkerServicer
from dynamo.runtime.config import setup_logging
from dynamo.runtime.gc_heap import freeze_startup_heap
from dynamo.runtime.runtime import DistributedRuntime

log = logging.getLogger("dynamo.worker")


def serve_engine(engine_class: type[LLMEngine], argv: Sequence[str] | None = None) -> int:
    """`python -m dynamo.<backend>`: parse flags, build the engine, serve it; the exit code."""
    parser = engine_class.make_parser(f"python -m dynamo.{engine_class.name}")
    engine_class.add_cli_args(parser)
    add_worker_args(parser)
    ns = parser.parse_args(argv)
    try:
        config = WorkerConfig.from_args(ns)
        engine = engine_class.from_cli_args(ns, config.role)
    except ValueError as e:  # contradicting flags, or a setting the role's configuration cannot use
        parser.error(str(e))
    return run_worker(engine, config)


def run_worker(engine: LLMEngine, config: WorkerConfig) -> int:
    """Run a worker until SIGTERM/SIGINT; returns the process exit code."""
    setup_logging()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_serve(engine, config))


def build_card(source: ModelSource, info: EngineInfo, role: Role, engine_name: str,
               advertise_host: str = "127.0.0.1", accepts_remote_prefill: bool = False) -> ModelCard:
    bootstrap = (f"{advertise_host}:{info.bootstrap_port}"
                 if role is Role.PREFILL and info.bootstrap_port else None)
    return ModelCard(served_model_name=source.served_model_name, model_path=source.model_path,
                     tokenizer=source.tokenizer or source.model_path, context_length=info.context_length,
                     kv_block_size=info.kv_block_size, total_kv_blocks=info.total_kv_blocks, role=role,
                     engine=engine_name, chat_template=source.chat_template, vocab_size=info.vocab_size,
                     eos_token_ids=list(info.eos_token_ids), bootstrap_endpoint=bootstrap,
                     accepts_remote_prefill=role is Role.AGGREGATED and accepts_remote_prefill)


async def _serve(engine: LLMEngine, config: WorkerConfig) -> int:
    source = engine.model_source
    runtime = DistributedRuntime(config.runtime)
    runtime.install_signal_handlers()
    metrics = WorkerMetrics(runtime.registry, source.served_model_name, config.role.value).bind()
    servicer = WorkerServicer(runtime.server, metrics)
    runtime.add_service(pb_grpc.add_WorkerServicer_to_server, servicer, SERVICE_NAME)
    pool: ModelPool | None = None
    canary: asyncio.Task[None] | None = None
    engine_started = False
    try:
        await runtime.start()
        port = await runtime.start_server()  # NOT_SERVING until the engine is ready
        log.info("gRPC server on port %d (NOT_SERVING until the engine is ready); starting %s engine",
                 port, engine.name)
        starting = asyncio.ensure_future(engine.start())
        stop_wait = asyncio.ensure_future(runtime.wait_for_shutdown())
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("shutdown requested while the engine was starting")
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            return 0
        info = starting.result()
        engine_started = True
        runtime.install_signal_handlers()  # an engine may have taken the loop's handlers while starting (SGLang does)
        card = build_card(source, info, config.role, engine.name, runtime.advertise_host(),
                          engine.accepts_remote_prefill)
        card.tool_call_parser, card.reasoning_parser = config.tool_call_parser, config.reasoning_parser
        # the frontend hands this decode worker a request whose prefill worker failed mid-prefill
        card.prefill_fallback_local = config.role is Role.DECODE and config.prefill_fallback_local
        prefill_group = None
        if config.role is Role.DECODE:
            pool = ModelPool(runtime.discovery, config.runtime.namespace, config.request_transport)
            await pool.start()
            prefill_group = pool.group(source.served_model_name, (Role.PREFILL,))
        record = await runtime.register(config.address, {"model_card": card.to_dict(),
                                                         "role": config.role.value})
        handler = make_handler(config.role, engine, metrics, record.instance_id, prefill_group,
                               max_local_prefill_length=config.max_local_prefill_length,
                               prefill_timeout=config.prefill_timeout,
                               fallback_local=config.prefill_fallback_local)
        servicer.attach(engine, handler, info, card, record.instance_id)
        events = engine.kv_events()
        if events is not None:
            servicer.relay.start(events)
        metrics.kv_blocks.set(info.total_kv_blocks)
        metrics.healthy.set(1)
        health = _HealthState()
        runtime.add_health_check(health.check)
        canary = asyncio.create_task(_health_loop(engine, servicer, metrics, runtime, health,
                                                  config, info), name="health canary")
        freeze_startup_heap()  # before taking traffic: full GCs must not walk the engine's heap
        await runtime.set_ready()
        log.info("serving %s (%s, role %s) as %s instance %s at %s; discovery %s%s",
                 source.served_model_name, engine.name, config.role.value, config.address,
                 record.instance_id, record.target + (f" and {record.local_socket}" if record.local_socket else ""),
                 config.runtime.discovery.backend,
                 f"; system port {runtime.system_port}" if runtime.system_port is not None else "")
        await runtime.wait_for_shutdown()
        return 0
    finally:
        if canary is not None:
            canary.cancel()
        await runtime.shutdown()
        await servicer.relay.close()
        if pool is not None:
            await pool.close()
        if engine_started:
            await engine.shutdown()
        log.info("worker stopped")


class _HealthState:
    def __init__(self) -> None:
        self.healthy = True
        self.reason = ""

    def check(self) -> tuple[bool, str]:
        return self.healthy, self.reason


async def _health_loop(engine: LLMEngine, servicer: WorkerServicer, metrics: BoundWorkerMetrics,
                       runtime: DistributedRuntime,
                       health: _HealthState, config: WorkerConfig, info: EngineInfo) -> None:
    """Every few seconds: engine liveness and stats; when idle for --canary-interval, a 1-token
    generation proves the engine really generates (prefill workers skip it: a prefill holds KV
    blocks for a decode that never comes; so do decode workers that cannot prefill)."""
    last_canary = time.monotonic()
    while True:
        await asyncio.sleep(min(2.0, config.canary_interval or 2.0))
        stats = engine.stats()
        metrics.kv_usage.set(stats.kv_usage)
        metrics.running.set(stats.running_requests)
        metrics.waiting.set(stats.waiting_requests)
        ok, reason = True, ""
        try:
            await asyncio.wait_for(engine.check_health(), 10)
        except Exception as e:
            ok, reason = False, f"engine health check failed: {e!r}"
        now = time.monotonic()
        idle = runtime.server.active_calls == 0 and now - servicer.last_request_end >= config.canary_interval
        can_canary = config.role is Role.AGGREGATED or (config.role is Role.DECODE and not engine.decode_needs_handoff)
        if (ok and config.canary_interval > 0 and can_canary and idle
                and now - last_canary >= config.canary_interval):
            last_canary = now
            try:
                await asyncio.wait_for(_canary(engine, info), 30)
                metrics.canary("success")
            except Exception as e:
                ok, reason = False, f"canary generation failed: {e!r}"
                metrics.canary("failure")
        if ok != health.healthy:
            log.warning("worker is now %s%s", "healthy" if ok else "UNHEALTHY", f": {reason}" if reason else "")
            await runtime.server.set_serving(ok)
        health.healthy, health.reason = ok, reason
        metrics.healthy.set(1 if ok else 0)


async def _canary(engine: LLMEngine, info: EngineInfo) -> None:
    req = GenerateRequest(request_id=f"canary-{time.monotonic_ns()}", token_ids=[1 % info.vocab_size] * 4,
                          stop=StopConditions(max_tokens=1, ignore_eos=True))
    got = 0
    async for out in engine.generate(req):
        got += len(out.token_ids)
    if got != 1:
        raise RuntimeError(f"canary produced {got} tokens instead of 1")
