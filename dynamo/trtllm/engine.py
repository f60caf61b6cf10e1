"""The TensorRT-LLM engine adapter: our generate protocol over `tensorrt_llm.LLM` (PyTorch backend).

Structured output: our constraint becomes `SamplingParams.guided_decoding` (GuidedDecodingParams; a
choice becomes a regex), which TensorRT-LLM enforces only when the LLM has a guided_decoding_backend
(--guided-decoding-backend, or the engine YAML): without one such requests are refused, never run
unconstrained. logit_bias becomes the dense `embedding_bias` tensor its sampler adds to the logits.

Disaggregation, the pull mode of dynamo/llm/disagg.py:
- role prefill: the worker shell gives every request max_tokens=1; the adapter runs it as
  `DisaggregatedParams(request_type="context_only")` and returns TensorRT-LLM's params (its
  `opaque_state` as raw bytes in our protocol) on the last output.
- a request carrying those params (decode role) runs `generation_only`: the decode engine pulls the
  prompt's KV through TensorRT-LLM's cache transceiver (`cache_transceiver_config` in the engine
  YAML) and streams the whole completion, its first token included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dynamo.llm.engine import EngineError, LLMEngine
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
from dynamo.runtime.config import LOG_LEVEL_ENV, env_value
from dynamo.trtllm import events
from dynamo.trtllm.args import add_engine_args, engine_llm_args, model_source_of
from dynamo.trtllm.convert import (
    ENGINE_NAME,
    embedding_bias_for,
    finish_reason_of,
    generation_params_for,
    handoff_of,
    logprobs_of,
    sampling_params_for,
)

log = logging.getLogger(__name__)

_GETTER_TIMEOUT_S = 2.0  # how long one round of the LLM's stats / KV-event getters waits for an item
_KV_BLOCKS_PROBE_S = 30.0  # how long start() waits for the first stats that report the KV capacity
_DEFERRED_ABORT_S = 60.0  # how long a cancelled generation-only request may take to finish its KV transfer


class TrtllmEngine(LLMEngine):
    """One `tensorrt_llm.LLM`. `llm_args` are its keyword arguments (dynamo.trtllm.args)."""

    name = ENGINE_NAME
    description = ("Dynamo worker over TensorRT-LLM's LLM API (PyTorch backend); engine options from "
                   "--extra-engine-args YAML, as trtllm-serve takes them.")

    def __init__(self, llm_args: dict[str, Any], source: ModelSource, role: Role = Role.AGGREGATED) -> None:
        super().__init__(role)
        self.llm_args = llm_args
        self._source = source
        self._llm: Any = None
        self._running: dict[str, Any] = {}  # request id -> TensorRT-LLM RequestOutput
        self._latest = EngineStats()
        self._stats_task: asyncio.Task[None] | None = None
        self._deferred: set[asyncio.Task[None]] = set()  # aborts waiting for a KV transfer to land
        self._closing = False
        self.info: EngineInfo | None = None

    # --- command line ------------------------------------------------------------------------

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        add_engine_args(parser)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, role: Role) -> TrtllmEngine:
        args = engine_llm_args(ns)
        return cls(args, model_source_of(ns, args), role)

    @property
    def model_source(self) -> ModelSource:
        return self._source

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        if self._llm is not None:
            raise RuntimeError("TrtllmEngine.start() was already called")
        os.environ.setdefault("TLLM_LOG_LEVEL", env_value(LOG_LEVEL_ENV, str, "info").upper())
        from tensorrt_llm import LLM

        args = dict(self.llm_args)
        try:
            # On the event loop's thread, as upstream Dynamo does: TensorRT-LLM binds the queues of
            # its async getters and results to the loop it runs in.
            self._llm = LLM(**args)
        except Exception as exc:
            raise EngineError(f"TensorRT-LLM failed to start for model {args.get('model')!r}: {exc}") from exc
        self._stats_task = asyncio.create_task(self._follow_stats(), name="trtllm stats")
        total_blocks = await self._probe_kv_blocks()
        self.info = EngineInfo(vocab_size=self._vocab_size(), context_length=self._context_length(),
                               kv_block_size=self._block_size(), total_kv_blocks=total_blocks,
                               eos_token_ids=self._eos_token_ids())
        log.info("TensorRT-LLM engine ready (role %s): %s", self.role.value, self.info)
        return self.info

    def _running_getters(self) -> bool:
        return self._llm is not None and not self._closing

    async def shutdown(self) -> None:
        self._closing = True  # the getters' loops end at their next item or idle timeout
        if self._stats_task is not None:
            self._stats_task.cancel()
            await asyncio.wait({self._stats_task}, timeout=2 * _GETTER_TIMEOUT_S)
            self._stats_task = None
        for task in list(self._deferred):
            task.cancel()
        await asyncio.gather(*self._deferred, return_exceptions=True)
        for result in list(self._running.values()):
            result.abort()
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    def _require_llm(self) -> Any:
        if self._llm is None:
            raise EngineError("the TensorRT-LLM engine is not running (start() not called, or shut down)")
        return self._llm

    # --- what the engine is ------------------------------------------------------------------

    def _hf_json(self, name: str) -> dict[str, Any]:
        path = Path(self._source.model_path) / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _block_size(self) -> int:
        kv = getattr(self._require_llm().args, "kv_cache_config", None)
        return int(getattr(kv, "tokens_per_block", 0) or 32)

    def _context_length(self) -> int:
        configured = getattr(self._require_llm().args, "max_seq_len", None)
        return int(configured or self._hf_json("config.json").get("max_position_embeddings") or 2048)

    def _vocab_size(self) -> int:
        vocab = self._hf_json("config.json").get("vocab_size")
        tokenizer = self._require_llm().tokenizer
        if vocab is None and tokenizer is not None:
            vocab = len(tokenizer)
        if not vocab:
            raise EngineError(f"cannot tell the vocabulary size of {self._source.model_path!r} "
                              "(no config.json vocab_size, no tokenizer)")
        return int(vocab)

    def _eos_token_ids(self) -> list[int]:
        ids: list[int] = []
        tokenizer = self._require_llm().tokenizer
        if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
            ids.append(int(tokenizer.eos_token_id))
        extra = self._hf_json("generation_config.json").get("eos_token_id")
        for token_id in [extra] if isinstance(extra, int) else (extra or []):
            if int(token_id) not in ids:
                ids.append(int(token_id))
        return ids

    async def _probe_kv_blocks(self) -> int:
        """TensorRT-LLM reports its KV capacity only in iteration stats, which need traffic: one
        1-token generation, then the first stats that carry `kvCacheStats.maxNumBlocks`."""
        from tensorrt_llm import SamplingParams

        loop = asyncio.get_running_loop()
        deadline = loop.time() + _KV_BLOCKS_PROBE_S
        probe = self._require_llm().generate_async(inputs=[1, 2, 3, 4], sampling_params=SamplingParams(
            max_tokens=1, ignore_eos=True, detokenize=False))
        async for _ in probe:
            pass
        while loop.time() < deadline and not self._latest.kv_total_blocks:
            await asyncio.sleep(0.05)
        if not self._latest.kv_total_blocks:
            raise EngineError("TensorRT-LLM reported no KV cache capacity within "
                              f"{_KV_BLOCKS_PROBE_S:g} s (are iteration stats on: enable_iter_perf_stats?)")
        return self._latest.kv_total_blocks

    async def _follow_stats(self) -> None:
        llm = self._require_llm()
        try:
            async for item in events.poll(lambda: llm.get_stats_async(timeout=_GETTER_TIMEOUT_S),
                                          self._running_getters):
                self._latest = events.stats_of(item)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("TensorRT-LLM's iteration stats failed; load stats stay as they were")

    # --- requests ----------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        from tensorrt_llm import DisaggregatedParams, SamplingParams

        llm = self._require_llm()
        rid = request.request_id
        if rid in self._running:
            raise InvalidRequest(f"request id {rid!r} is already running; ids must be unique")
        params = sampling_params_for(request, SamplingParams, guided_decoding_params_cls=self._guided_cls(request),
                                     embedding_bias=self._embedding_bias(request))
        context_only = self.role is Role.PREFILL
        disaggregated = None
        if context_only:
            disaggregated = DisaggregatedParams(request_type="context_only")
        elif request.disaggregated_params is not None:
            disaggregated = generation_params_for(request.disaggregated_params, DisaggregatedParams)
        try:
            result = llm.generate_async(inputs=list(request.token_ids), sampling_params=params,
                                        streaming=not context_only, disaggregated_params=disaggregated)
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"TensorRT-LLM rejected request {rid}: {exc}") from exc
        except RuntimeError as exc:
            raise EngineError(f"TensorRT-LLM failed request {rid}: {exc}") from exc
        self._running[rid] = result
        stop_ids = list(request.stop.stop_token_ids)
        sent = 0
        finished = False  # the engine ended the request (done, or failed): nothing left to abort
        try:
            async for out in self._outputs(result, rid):
                choice = out.outputs[0]
                token_ids = list(choice.token_ids)
                new_ids = token_ids[sent:]
                positions = list(choice.logprobs or [])[sent:len(token_ids)]
                sent = len(token_ids)
                reason = finish_reason_of(choice.finish_reason, choice.stop_reason, stop_ids, context_only)
                output = GenerateOutput(token_ids=new_ids, finish_reason=reason)
                if request.output.logprobs is not None:
                    output.logprobs = logprobs_of(new_ids, positions, request.output.logprobs)
                if reason is not None or out.finished:
                    finished = True
                    self._finish(request, out, output, token_ids, context_only)
                    yield output
                    return
                if new_ids:
                    yield output
        except (InvalidRequest, EngineError):
            finished = True
            raise
        finally:
            self._running.pop(rid, None)
            if finished:
                pass
            elif disaggregated is not None and not context_only and sent == 0:
                self._abort_after_transfer(result, rid)
            else:
                result.abort()  # the consumer went away, or the engine failed

    def _guided_cls(self, request: GenerateRequest) -> Any:
        """GuidedDecodingParams when the request has a constraint and the engine a backend to enforce it."""
        if request.structured_output is None:
            return None
        if getattr(self._require_llm().args, "guided_decoding_backend", None) is None:
            raise InvalidRequest(
                f"structured_output ({request.structured_output.kind.value}) is not supported here: this "
                "TensorRT-LLM worker has no guided decoding backend; start it with --guided-decoding-backend "
                "xgrammar (or guided_decoding_backend: xgrammar in its --extra-engine-args YAML)")
        from tensorrt_llm.sampling_params import GuidedDecodingParams

        return GuidedDecodingParams

    def _embedding_bias(self, request: GenerateRequest) -> Any:
        """The request's logit_bias as the float32 [vocab_size] tensor TensorRT-LLM adds to the logits."""
        if not request.sampling.logit_bias:
            return None
        import torch

        vocab = self.info.vocab_size if self.info is not None else self._vocab_size()
        return torch.tensor(embedding_bias_for(request.sampling.logit_bias, vocab), dtype=torch.float32)

    async def _outputs(self, result: Any, rid: str) -> AsyncIterator[Any]:
        try:
            async for out in result:
                yield out
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"TensorRT-LLM rejected request {rid}: {exc}") from exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise EngineError(f"TensorRT-LLM failed request {rid}: {type(exc).__name__}: {exc}") from exc

    def _finish(self, request: GenerateRequest, out: Any, output: GenerateOutput, token_ids: list[int],
                context_only: bool) -> None:
        """Fill the last output: a finish reason, usage and, on a prefill worker, the handoff."""
        if output.finish_reason is None:
            output.finish_reason = FinishReason.ERROR
            output.error = f"TensorRT-LLM ended request {request.request_id} without a finish reason"
        output.usage = Usage(prompt_tokens=len(request.token_ids), completion_tokens=len(token_ids),
                             cached_tokens=int(getattr(out, "cached_tokens", 0) or 0))
        if context_only:
            params = out.outputs[0].disaggregated_params or getattr(out, "disaggregated_params", None)
            if params is None:
                output.finish_reason = FinishReason.ERROR
                output.error = "TensorRT-LLM returned no disaggregated params for a context-only request"
            else:
                output.disaggregated_params = handoff_of(params, token_ids)

    def _abort_after_transfer(self, result: Any, rid: str) -> None:
        """A generation-only request cancelled before its first token is still pulling its KV from the
        prefill worker, and TensorRT-LLM must not free blocks a transfer writes into (upstream Dynamo
        defers the same abort): abort it once its first output shows the transfer done."""
        async def wait_then_abort() -> None:
            try:
                async with asyncio.timeout(_DEFERRED_ABORT_S):
                    async for _ in result:
                        break
            except Exception as exc:  # the request failed on its own: nothing left to abort
                log.debug("[%s] generation-only request ended while its abort waited: %s", rid, exc)
            finally:
                result.abort()

        task = asyncio.create_task(wait_then_abort(), name=f"deferred abort {rid}")
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    def num_unfinished_requests(self) -> int:
        return len(self._running) + len(self._deferred)

    async def abort(self, request_id: str) -> None:
        result = self._running.get(request_id)
        if result is not None:
            result.abort()

    async def check_health(self) -> None:
        self._require_llm()  # a dead executor shows in the worker's generation canary

    # --- what the engine reports -------------------------------------------------------------

    def stats(self) -> EngineStats:
        if not self._running:  # iteration stats stop with the last request: they would stay stale
            return EngineStats(kv_usage=self._latest.kv_usage, kv_total_blocks=self._latest.kv_total_blocks,
                               kv_active_blocks=self._latest.kv_active_blocks)
        return self._latest

    def kv_events(self) -> AsyncIterator[KvEvent] | None:
        llm = self._require_llm()
        kv = getattr(llm.args, "kv_cache_config", None)
        if not getattr(kv, "event_buffer_max_size", 0) or not getattr(kv, "enable_block_reuse", True):
            return None
        return events.kv_events(lambda: llm.get_kv_cache_events_async(timeout=_GETTER_TIMEOUT_S),
                                self._block_size(), self._running_getters)
