"""The vLLM engine adapter: our generate protocol over vLLM's `AsyncLLM`.

Disaggregation (NIXL), as this adapter does it:
- role prefill: the worker shell gives every request max_tokens=1 (dynamo.llm.disagg); the
  adapter asks vLLM to keep the prompt's KV blocks for a remote decode. Its last output carries `DisaggregatedParams(engine="vllm",
  payload=<vLLM's kv_transfer_params>, first_token_ids=[the token it sampled])`.
- a request carrying those params (on a decode or aggregated worker) gets the payload as vLLM's
  `kv_transfer_params`: vLLM pulls the prompt's KV over NIXL instead of computing it, recomputes
  only the last prompt position and samples from there. Its stream is the WHOLE completion,
  starting with its own first token (which equals the prefill's under greedy or seeded sampling).
  So the final stream is the decode stream alone; the prefill's `first_token_ids` must not be
  prepended (use them only to show the first token early, then drop the decode's first token).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import tokens_input
from vllm.outputs import RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM

from dynamo.llm.engine import EngineError, LLMEngine
from dynamo.llm.kv_event_zmq import KvEventSubscriber
from dynamo.llm.model_card import ModelSource, Role
from dynamo.llm.protocol import (
    DisaggregatedParams,
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    KvEvent,
    KvEventKind,
    Usage,
)
from dynamo.runtime.rpc.server import default_advertise_host
from dynamo.vllm.args import (
    add_connector_arg,
    add_engine_args,
    consumes_remote_kv,
    engine_args_from_namespace,
    model_source_of,
    prepare_engine_args,
    remove_kv_events_socket,
)
from dynamo.vllm.convert import (
    ENGINE_NAME,
    finish_reason_of,
    is_client_error,
    logprobs_of,
    sampling_params_for,
)
from dynamo.vllm.stats import StatsSink

log = logging.getLogger(__name__)

_KV_SUBSCRIBE_TIMEOUT_S = 5.0


class VllmEngine(LLMEngine):
    """One vLLM AsyncLLM (its engine core runs in spawned processes)."""

    name = ENGINE_NAME
    description = "Dynamo worker over the vLLM engine (AsyncLLM); every vLLM engine flag works."

    def __init__(self, engine_args: AsyncEngineArgs, role: Role = Role.AGGREGATED, *,
                 configure: bool = True, connector: str = "nixl", side_channel_host: str | None = None) -> None:
        """With `configure` (the default) the role's NIXL connector (`connector` for an aggregated
        engine; listening on `side_channel_host`) and a private KV-event publisher are added unless
        the flags already set them."""
        super().__init__(role)
        self.engine_args = (prepare_engine_args(engine_args, role, connector, side_channel_host) if configure
                            else engine_args)
        self.accepts_remote_prefill = role is Role.AGGREGATED and consumes_remote_kv(self.engine_args)
        self._llm: AsyncLLM | None = None
        self._stats = StatsSink()
        self._kv_subscriber: KvEventSubscriber | None = None
        self._log_stats_task: asyncio.Task[None] | None = None
        self.info: EngineInfo | None = None

    # --- command line ------------------------------------------------------------------------

    @classmethod
    def make_parser(cls, prog: str) -> argparse.ArgumentParser:
        # vLLM's parser also takes --max_model_len spellings and JSON config flags (--kv-transfer-config '{...}').
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        return FlexibleArgumentParser(prog=prog, description=cls.description)

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        add_engine_args(parser)
        add_connector_arg(parser)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, role: Role) -> VllmEngine:
        # NIXL's side channel is reached at the address the worker advertises in discovery
        host = getattr(ns, "advertise_host", None) or default_advertise_host()
        return cls(engine_args_from_namespace(ns), role, connector=ns.connector, side_channel_host=host)

    @property
    def model_source(self) -> ModelSource:
        return model_source_of(self.engine_args)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        if self._llm is not None:
            raise RuntimeError("VllmEngine.start() was already called")
        # Building the engine blocks for tens of seconds (model load, KV sizing in the engine-core
        # process); a thread keeps the worker's event loop (health, signals) responsive meanwhile.
        try:
            self._llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args, self.engine_args, stat_loggers=[self._stats.factory])
        except Exception as exc:
            raise EngineError(f"vLLM failed to start for model {self.engine_args.model!r}: {exc}") from exc
        await self._subscribe_kv_events()
        if not self.engine_args.disable_log_stats:
            self._log_stats_task = asyncio.create_task(self._log_stats_periodically(), name="vllm stats log")
        self.info = self._engine_info()
        log.info("vLLM engine ready (role %s): %s", self.role.value, self.info)
        return self.info

    async def _log_stats_periodically(self) -> None:
        """What vLLM's own server does: log throughput, KV usage and KV-transfer counts every
        VLLM_LOG_STATS_INTERVAL seconds (vLLM only logs when asked)."""
        import vllm.envs as envs

        while self._llm is not None:
            await asyncio.sleep(envs.VLLM_LOG_STATS_INTERVAL)
            if self._llm is not None:
                await self._llm.do_log_stats()

    async def shutdown(self) -> None:
        if self._log_stats_task is not None:
            self._log_stats_task.cancel()
            self._log_stats_task = None
        if self._kv_subscriber is not None:
            self._kv_subscriber.close()
            self._kv_subscriber = None
        if self._llm is not None:
            llm, self._llm = self._llm, None
            llm.shutdown()
        remove_kv_events_socket(self.engine_args)

    @property
    def async_llm(self) -> AsyncLLM:
        """The running vLLM AsyncLLM (for tests and tools that compare against vLLM directly)."""
        return self._require_llm()

    def _require_llm(self) -> AsyncLLM:
        if self._llm is None:
            raise EngineError("the vLLM engine is not running (start() not called, or shut down)")
        return self._llm

    def _engine_info(self) -> EngineInfo:
        llm = self._require_llm()
        model_config = llm.vllm_config.model_config
        cache_config = llm.vllm_config.cache_config
        return EngineInfo(
            vocab_size=model_config.get_vocab_size(),
            context_length=model_config.max_model_len,
            kv_block_size=cache_config.block_size,
            total_kv_blocks=cache_config.num_gpu_blocks or 0,
            eos_token_ids=self._eos_token_ids(),
        )

    def _eos_token_ids(self) -> list[int]:
        """The tokenizer's EOS plus any extra EOS ids of generation_config (vLLM stops on both)."""
        llm = self._require_llm()
        ids: list[int] = []
        tokenizer = llm.tokenizer
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            ids.append(int(tokenizer.eos_token_id))
        extra = llm.vllm_config.model_config.try_get_generation_config().get("eos_token_id")
        for token_id in [extra] if isinstance(extra, int) else (extra or []):
            if int(token_id) not in ids:
                ids.append(int(token_id))
        return ids

    # --- requests ----------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        llm = self._require_llm()
        params = sampling_params_for(request, self.role)  # InvalidRequest before anything runs
        # Already tokenized: hand vLLM an engine input, which skips its renderer (text, chat).
        stream = llm.generate(tokens_input(list(request.token_ids)), params, request.request_id)
        stop_ids = set(request.stop.stop_token_ids)
        num_top = request.output.logprobs or 0
        completion: list[int] = []
        finished = False
        try:
            while not finished:
                try:
                    out = await anext(stream)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    raise self._translate_error(request.request_id, exc) from exc
                choice = out.outputs[0]
                new_ids = list(choice.token_ids)
                completion.extend(new_ids)
                finished = out.finished
                output = GenerateOutput(
                    token_ids=new_ids,
                    finish_reason=finish_reason_of(choice.finish_reason, choice.stop_reason, stop_ids),
                    logprobs=(logprobs_of(new_ids, choice.logprobs, num_top)
                              if request.output.logprobs is not None else None),
                )
                if finished:
                    self._finish(request, out, output, completion)
                yield output
        finally:
            if not finished:
                # The consumer went away (or the engine failed): closing vLLM's generator aborts
                # the request in the engine; the explicit abort covers a stream never started.
                await stream.aclose()
                await llm.abort(request.request_id)

    def _finish(self, request: GenerateRequest, out: RequestOutput, output: GenerateOutput,
                completion: list[int]) -> None:
        """Fill the last output: finish reason, usage and, on a prefill worker, the handoff."""
        if output.finish_reason is None:
            output.finish_reason = FinishReason.ERROR
        if output.finish_reason is FinishReason.ERROR:
            output.error = (f"vLLM failed request {request.request_id} (e.g. its KV transfer from "
                            "the prefill worker failed)")
        output.usage = Usage(
            prompt_tokens=len(request.token_ids),
            completion_tokens=len(completion),
            cached_tokens=out.num_cached_tokens or 0,
        )
        if self.role is Role.PREFILL and out.kv_transfer_params:
            output.disaggregated_params = DisaggregatedParams(
                engine=ENGINE_NAME, payload=dict(out.kv_transfer_params),
                first_token_ids=list(completion))

    def _translate_error(self, request_id: str, exc: BaseException) -> Exception:
        if isinstance(exc, (InvalidRequest, EngineError)):
            return exc
        if is_client_error(exc):
            return InvalidRequest(f"vLLM rejected request {request_id}: {exc}")
        cause = exc.__cause__ or exc
        return EngineError(f"vLLM failed request {request_id}: {type(cause).__name__}: {cause}")

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def clear_kv_blocks(self) -> None:
        if not await self._require_llm().reset_prefix_cache():
            log.warning("vLLM kept its prefix cache: running requests still use some blocks")
            return
        # vLLM queues its "all blocks cleared" event until its next scheduler step, which on an
        # idle engine is the next request; tell the router now (vLLM's own event follows later,
        # and clearing twice is harmless).
        if self._kv_subscriber is not None:
            self._kv_subscriber.inject(KvEvent(kind=KvEventKind.CLEARED))

    async def check_health(self) -> None:
        try:
            await self._require_llm().check_health()
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"vLLM engine is unhealthy: {exc}") from exc

    # --- what the engine reports -------------------------------------------------------------

    def stats(self) -> EngineStats:
        stats = self._stats.latest()
        if self.info is not None and not stats.kv_total_blocks:  # nothing recorded yet
            return dataclasses.replace(stats, kv_total_blocks=self.info.total_kv_blocks)
        return stats

    def num_unfinished_requests(self) -> int:
        """Requests vLLM still tracks (its output processor's count: exact, unlike stats())."""
        return self._llm.get_num_unfinished_requests() if self._llm is not None else 0

    def kv_events(self) -> AsyncIterator[KvEvent] | None:
        if self._kv_subscriber is None:
            return None
        return self._kv_subscriber.events()

    async def _subscribe_kv_events(self) -> None:
        config = self.engine_args.kv_events_config
        if config is None or not config.enable_kv_cache_events or config.publisher != "zmq":
            return
        # The engine reports where each rank's publisher actually bound (a port 0 gets resolved).
        sources = self._require_llm().get_kv_event_sources()
        endpoints = [sources[rank].endpoint for rank in sorted(sources)] or [config.endpoint]
        self._kv_subscriber = KvEventSubscriber(endpoints, topic=config.topic)
        await self._kv_subscriber.wait_connected(_KV_SUBSCRIBE_TIMEOUT_S)
