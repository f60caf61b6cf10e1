"""The SGLang engine adapter: our generate protocol over `sglang.Engine` (token ids in and out).

Disaggregation, the bootstrap mode of dynamo/llm/disagg.py (SGLang's own): a prefill worker's
SGLang serves a bootstrap port (EngineInfo.bootstrap_port, advertised in its model card); the
orchestrator sends the prefill request (max_tokens=1) and the decode request together, both carrying
the prefill worker's host, port and one room; SGLang's KV sender and receiver meet there. The decode
stream is the whole completion, the prefill's first token included. SGLang's prefill and decode
engines cannot serve a request without a room, so the adapter refuses one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from dynamo.llm.engine import EngineError, LLMEngine
from dynamo.llm.errors import PrefillError
from dynamo.llm.kv_event_zmq import KvEventSubscriber
from dynamo.llm.model_card import ModelSource, Role
from dynamo.llm.protocol import (
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    KvEvent,
    Usage,
)
from dynamo.sglang import process
from dynamo.sglang.args import (
    SGLangArgumentParser,
    add_engine_args,
    model_source_of,
    server_args_of,
    serves_structured_output,
)
from dynamo.sglang.convert import ENGINE_NAME, abort_message, finish_reason_of, logprobs_of, sampling_params_for
from dynamo.sglang.metrics import SGLangMetrics

log = logging.getLogger(__name__)

_KV_SUBSCRIBE_TIMEOUT_S = 10.0


class SGLangEngine(LLMEngine):
    """One `sglang.Engine`; `server_args` are its ServerArgs keyword arguments (dynamo.sglang.args)."""

    name = ENGINE_NAME
    description = "Dynamo worker over SGLang's Engine; every SGLang server flag is accepted unchanged."
    bootstrap_handoff = True
    decode_needs_handoff = True  # SGLang's decode engine cannot prefill a prompt itself

    def __init__(self, server_args: dict[str, Any], source: ModelSource, role: Role = Role.AGGREGATED) -> None:
        super().__init__(role)
        self.server_args = server_args
        self._source = source
        self._engine: Any = None
        self._rids: dict[str, str] = {}  # our request id -> SGLang's rid
        self._failure: str | None = None
        self._kv_subscriber: KvEventSubscriber | None = None
        self._metrics: SGLangMetrics | None = None
        self._vocab_size = 0
        self.info: EngineInfo | None = None

    # --- command line ------------------------------------------------------------------------

    @classmethod
    def make_parser(cls, prog: str) -> argparse.ArgumentParser:
        return SGLangArgumentParser(prog=prog, description=cls.description)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        add_engine_args(parser)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, role: Role) -> SGLangEngine:
        return cls(server_args_of(ns, role), model_source_of(ns), role)

    @property
    def model_source(self) -> ModelSource:
        return self._source

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        if self._engine is not None:
            raise RuntimeError("SGLangEngine.start() was already called")
        from prometheus_client import REGISTRY
        from sglang.srt.entrypoints.engine import Engine
        from sglang.srt.server_args import ServerArgs

        try:
            server_args = ServerArgs(**self.server_args)
        except (TypeError, ValueError) as e:
            raise EngineError(f"SGLang refused its arguments: {e}") from e
        try:
            # In a thread: start-up takes a minute and must not stall the gRPC server's health
            # answers. A failed Engine() leaves processes and sockets behind: never retry it in
            # this process (the worker exits; its supervisor restarts it).
            self._engine = await asyncio.to_thread(Engine, server_args=server_args)
        except BaseException as e:
            raise EngineError(f"SGLang failed to start for model {self._source.model_path!r}: {e}") from e
        process.take_over(self._engine, self._child_died)
        tm = self._engine.tokenizer_manager
        self._vocab_size = int(tm.model_config.vocab_size)
        resolved = self._resolved()
        page_size = int(resolved.get("page_size") or 1)
        total_tokens = int(self._engine._scheduler_init_result.scheduler_infos[0]["max_total_num_tokens"])
        self.info = EngineInfo(
            vocab_size=self._vocab_size, context_length=int(tm.context_len), kv_block_size=page_size,
            total_kv_blocks=max(1, total_tokens // page_size),
            eos_token_ids=sorted(int(t) for t in (tm.model_config.hf_eos_token_id or ())),
            bootstrap_port=int(resolved["disaggregation_bootstrap_port"]) if self.role is Role.PREFILL else None)
        self._metrics = SGLangMetrics()
        REGISTRY.register(self._metrics)  # SGLang's series on the worker's /metrics
        await self._subscribe_kv_events(resolved)
        log.info("SGLang engine ready (role %s): %s", self.role.value, self.info)
        return self.info

    def _resolved(self) -> dict[str, Any]:
        """ServerArgs as SGLang resolved them (page size, context length, ...; 0.5.23 keeps the raw
        values on the struct itself)."""
        args = self._engine.server_args
        resolve = getattr(args, "resolved_dict", None)
        if resolve is not None:
            return dict(resolve())
        return {name: getattr(args, name) for name in dir(args) if not name.startswith("_")}

    async def _subscribe_kv_events(self, resolved: dict[str, Any]) -> None:
        raw = resolved.get("kv_events_config")
        config = json.loads(raw) if isinstance(raw, str) else (raw or {})
        if config.get("publisher") != "zmq" or resolved.get("disable_radix_cache"):
            return
        endpoint = str(config.get("endpoint") or "tcp://*:5557")
        ranks = int(resolved.get("dp_size") or 1)
        host, _, port = endpoint.rpartition(":")
        endpoints = [endpoint] if ranks == 1 or not port.isdigit() else [f"{host}:{int(port) + r}" for r in range(ranks)]
        self._kv_subscriber = KvEventSubscriber(endpoints, topic=str(config.get("topic") or ""))
        await self._kv_subscriber.wait_connected(_KV_SUBSCRIBE_TIMEOUT_S)

    def _child_died(self) -> None:
        """SIGQUIT: SGLang's watchdog says one of its processes died. The engine is gone: fail what
        runs, report unhealthy, and leave (drain, deregister) so a supervisor restarts the worker."""
        import os
        import signal

        if self._failure is None:
            _, why = process.children_alive(self._engine)
            self._failure = why or "an SGLang subprocess died (SIGQUIT from its watchdog)"
            log.error("SGLang engine failed: %s; the worker shuts down", self._failure)
            os.kill(os.getpid(), signal.SIGTERM)

    async def shutdown(self) -> None:
        if self._kv_subscriber is not None:
            self._kv_subscriber.close()
        if self._engine is not None:
            for rid in list(self._rids.values()):
                self._engine.tokenizer_manager.abort_request(rid=rid)
            await asyncio.to_thread(process.shutdown_children, self._engine)

    def _require(self) -> Any:
        if self._failure is not None:
            raise EngineError(f"the SGLang engine failed: {self._failure}")
        if self._engine is None:
            raise EngineError("the SGLang engine is not running (start() not called, or shut down)")
        return self._engine

    async def check_health(self) -> None:
        ok, why = process.children_alive(self._require())
        if not ok:
            self._failure = why
            raise EngineError(why)

    # --- requests ----------------------------------------------------------------------------

    def _check(self, request: GenerateRequest) -> None:
        """What SGLang does not check itself, or checks by dying."""
        ids = request.token_ids
        if ids and (min(ids) < 0 or max(ids) >= self._vocab_size):  # an out-of-range id kills SGLang's scheduler
            raise InvalidRequest(f"prompt token ids must be in [0, {self._vocab_size}), got "
                                 f"{[t for t in ids if not 0 <= t < self._vocab_size][:5]}")
        if request.structured_output is not None:
            why_not = serves_structured_output(self.server_args)
            if why_not is not None:  # else SGLang aborts it, naming a flag of its own we set for it
                raise InvalidRequest(f"structured_output ({request.structured_output.kind.value}) is not "
                                     f"supported here: {why_not}")
        if request.disaggregated_params is not None:
            raise InvalidRequest(f"disaggregated_params come from a {request.disaggregated_params.engine!r} prefill "
                                 "worker; SGLang takes a prefill's KV in a bootstrap room, not from a prefill's result")
        if self.role is Role.AGGREGATED and request.bootstrap is not None:
            raise InvalidRequest("this SGLang worker is aggregated: it serves no bootstrap rooms")
        if self.role is not Role.AGGREGATED and request.bootstrap is None:
            raise InvalidRequest(f"an SGLang {self.role.value} worker serves only requests with a bootstrap room "
                                 "(SGLang's prefill and decode meet in one): send it through a frontend or a "
                                 "decode worker that orchestrates disaggregation")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        engine = self._require()
        self._check(request)
        if request.request_id in self._rids:
            raise InvalidRequest(f"request id {request.request_id!r} is already running; ids must be unique")
        rid = uuid.uuid4().hex  # fixed width: SGLang's scheduler aborts by rid prefix
        kwargs: dict[str, Any] = dict(input_ids=list(request.token_ids), sampling_params=sampling_params_for(request),
                                      stream=True, rid=rid)
        if request.output.logprobs is not None:
            kwargs.update(return_logprob=True, top_logprobs_num=request.output.logprobs)
        if request.bootstrap is not None:
            b = request.bootstrap
            kwargs.update(bootstrap_host=b.host, bootstrap_port=b.port, bootstrap_room=b.room)
        stream = await engine.async_generate(**kwargs)
        self._rids[request.request_id] = rid
        stop_ids = list(request.stop.stop_token_ids)
        # SGLang's ignore_eos also ignores the request's stop tokens; ours (vLLM's) ignores EOS only:
        # with both, the adapter ends the request at the first stop token itself.
        own_stop = frozenset(stop_ids) if request.stop.ignore_eos and stop_ids else frozenset()
        started = finished = False
        produced = 0
        try:
            while True:
                try:
                    chunk = await anext(stream)
                except StopAsyncIteration:
                    raise EngineError(f"SGLang ended request {request.request_id} without a finish reason") from None
                except (ValueError, TypeError) as e:
                    if not started:  # SGLang validates on the stream's first step
                        raise InvalidRequest(f"SGLang rejected the request: {e}") from e
                    raise EngineError(f"SGLang failed request {request.request_id}: {e}") from e
                except (InvalidRequest, EngineError, asyncio.CancelledError):
                    raise
                except Exception as e:
                    raise EngineError(f"SGLang failed request {request.request_id}: {type(e).__name__}: {e}") from e
                started = True
                output = self._output(request, chunk, stop_ids)
                if own_stop and output.finish_reason is None and self._stop_early(request, output, own_stop,
                                                                                   produced, chunk):
                    yield output  # not `finished`: the finally below aborts what SGLang still runs
                    return
                produced += len(output.token_ids)
                if output.finish_reason is not None:
                    finished = True
                    yield output
                    return
                if output.token_ids:
                    yield output
        finally:
            self._rids.pop(request.request_id, None)
            if not finished:
                engine.tokenizer_manager.abort_request(rid=rid)  # a no-op once SGLang has forgotten it
            await stream.aclose()

    def _output(self, request: GenerateRequest, chunk: dict[str, Any], stop_ids: list[int]) -> GenerateOutput:
        meta = chunk.get("meta_info") or {}
        token_ids = [int(t) for t in chunk.get("output_ids") or ()]
        reason_raw = meta.get("finish_reason")
        output = GenerateOutput(token_ids=token_ids, finish_reason=finish_reason_of(reason_raw, stop_ids))
        if request.output.logprobs is not None and token_ids:
            output.logprobs = logprobs_of(meta, token_ids, request.output.logprobs)
        if output.finish_reason is None:
            return output
        if output.finish_reason is FinishReason.ERROR:
            message = abort_message(reason_raw or {})
            status = (reason_raw or {}).get("status_code")
            if status == 400 and not meta.get("completion_tokens"):
                raise InvalidRequest(f"SGLang rejected the request: {message}")
            if request.bootstrap is not None and not meta.get("completion_tokens"):
                # the KV handoff failed (SGLang aborts a request whose bootstrap or transfer failed)
                raise PrefillError(f"SGLang's KV handoff failed for request {request.request_id}: {message}")
            output.error = message
        output.usage = Usage(prompt_tokens=int(meta.get("prompt_tokens") or len(request.token_ids)),
                             completion_tokens=int(meta.get("completion_tokens") or 0),
                             cached_tokens=int(meta.get("cached_tokens") or 0))
        return output

    @staticmethod
    def _stop_early(request: GenerateRequest, output: GenerateOutput, stop: frozenset[int], produced: int,
                    chunk: dict[str, Any]) -> bool:
        """End `output` at its first stop token, if it has one (see own_stop in generate)."""
        hit = next((i for i, t in enumerate(output.token_ids) if t in stop), None)
        if hit is None:
            return False
        output.token_ids = output.token_ids[:hit + 1]
        if output.logprobs is not None:
            output.logprobs = output.logprobs[:hit + 1]
        output.finish_reason = FinishReason.STOP
        meta = chunk.get("meta_info") or {}
        output.usage = Usage(prompt_tokens=int(meta.get("prompt_tokens") or len(request.token_ids)),
                             completion_tokens=produced + hit + 1, cached_tokens=int(meta.get("cached_tokens") or 0))
        return True

    async def abort(self, request_id: str) -> None:
        rid = self._rids.get(request_id)
        if rid is not None and self._engine is not None:
            self._engine.tokenizer_manager.abort_request(rid=rid)

    def num_unfinished_requests(self) -> int:
        """Requests SGLang's tokenizer manager still tracks (exact: aborted ones leave it)."""
        return len(self._engine.tokenizer_manager.rid_to_state) if self._engine is not None else 0

    async def clear_kv_blocks(self) -> None:
        tm = self._require().tokenizer_manager
        if tm.rid_to_state:
            raise EngineError(f"SGLang flushes its cache only when idle; {len(tm.rid_to_state)} request(s) run")
        result = await tm.flush_cache()
        if not getattr(result, "success", False):
            raise EngineError(f"SGLang did not flush its cache: {getattr(result, 'message', '') or 'busy'}")

    # --- what the engine reports -------------------------------------------------------------

    def stats(self) -> EngineStats:
        if self._metrics is None or self.info is None:
            return EngineStats()
        return self._metrics.stats(self.info.total_kv_blocks)

    def kv_events(self) -> AsyncIterator[KvEvent] | None:
        return self._kv_subscriber.events() if self._kv_subscriber is not None else None
