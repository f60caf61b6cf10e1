"""MockerEngine: a simulated LLM engine with a real scheduler, KV cache and timing, but no model.

What it simulates:
- a KV cache of `num_gpu_blocks` blocks of `block_size` tokens with prefix caching (kv_cache.py),
  publishing STORED / REMOVED / CLEARED KV events;
- continuous batching with a per-step token budget, chunked prefill and recompute preemption
  (scheduler.py);
- step durations from a simple cost model divided by `speedup_ratio` (timing.py);
- deterministic output tokens (tokens.py).

Structured output (structured.py): with a tokenizer (tokenizer.json in the model directory) the
mocker honours json_schema, json_object and choice constraints by emitting the token ids of a value
it builds to satisfy them, then EOS (finish "eos"; "stop" when the model has no EOS id). The value
is fixed by the request (its seed, else its prompt), so a prefill and its decode agree; max_tokens
still truncates it (finish "length"), min_tokens and ignore_eos do not stretch it. regex and grammar
constraints, and any constraint without a tokenizer, are refused (InvalidRequest). logit_bias is
accepted and has no effect: the mocker samples no logits.

Disaggregated prefill/decode (the handoff is defined in disagg.py; the convention is the project's,
see dynamo/llm/disagg.py):
- role prefill: the worker shell sends every request with max_tokens=1 and no disaggregated
  params (the rules are dynamo.llm.disagg's); the request runs its prefill and its one token. The last output carries that token, `usage`, and
  `DisaggregatedParams(engine="mocker", payload={...}, first_token_ids=[t0])`.
- role decode (or agg) with `disaggregated_params`: the request carries the original prompt and
  the original stop conditions. After the simulated transfer (prompt tokens x kv_bytes_per_token /
  kv_transfer_bandwidth / speedup_ratio) the prompt's KV is present except its last position, which
  is recomputed (as vLLM does) to sample the first token. The decode stream is the WHOLE
  completion, its first token included, so
      decode stream == the aggregated output of the same request, and its first token == t0
  (tokens depend only on mocker seed, prompt, sampling seed and position; t0 differs only when the
  prefill request dropped min_tokens and t0 is a stop/EOS id, in which case the decode stream
  still equals the aggregated one). `first_token_ids` is informational: do not prepend it.
  usage.cached_tokens = the prompt length (its KV came from the prefill worker).
- role decode without params: the request is prefilled locally, as in "agg".

Bootstrap handoff (--disaggregation-handoff bootstrap, SGLang's way; bootstrap.py): the prefill
worker serves a rendezvous port, advertised through EngineInfo.bootstrap_port. Prefill and decode
requests carry the same `bootstrap` room and run at the same time; the prefill publishes the same
payload to the room when it finishes (or a failure when it is cancelled or fails), and the decode
side waits in the room (state TRANSFERRING) before its simulated transfer. What the decode side
then streams is exactly as in pull mode.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dynamo.llm.engine import EngineError, LLMEngine
from dynamo.llm.errors import PrefillError
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
    Usage,
)
from dynamo.mocker import disagg
from dynamo.mocker.args import MockerConfig, add_mocker_args, mocker_config_from_namespace
from dynamo.mocker.bootstrap import BootstrapError, BootstrapServer, meet
from dynamo.mocker.events import KvEventBuffer
from dynamo.mocker.kv_cache import KvCache
from dynamo.mocker.scheduler import Scheduler
from dynamo.mocker.sequence import SeqState, Sequence
from dynamo.mocker.structured import constrained_text
from dynamo.mocker.timing import SimClock, step_seconds, transfer_seconds
from dynamo.mocker.tokens import TokenSampler, request_seed

log = logging.getLogger(__name__)

_NOTHING: frozenset[int] = frozenset()


class MockerEngine(LLMEngine):
    name = "mocker"
    description = "Dynamo worker over a simulated engine (no GPU, no weights)."
    accepts_remote_prefill = True  # an aggregated mocker continues pull and bootstrap handoffs alike
    bootstrap_handoff = True  # with --disaggregation-handoff bootstrap on the prefill side (bootstrap.py)

    def __init__(self, config: MockerConfig, role: Role = Role.AGGREGATED) -> None:
        super().__init__(role)
        self.config = config
        self.context_length = min(config.max_model_len, config.kv_capacity_tokens)
        self._sampler = TokenSampler(config.vocab_size, config.eos_token_ids, config.eos_rate)
        self._eos = frozenset(self._sampler.eos_token_ids)
        self._events = KvEventBuffer(config.kv_event_buffer)
        self._cache = KvCache(config.num_gpu_blocks, config.block_size,
                              prefix_caching=config.enable_prefix_caching, publish=self._events.publish)
        self._scheduler = Scheduler(self._cache, max_num_seqs=config.max_num_seqs,
                                    max_num_batched_tokens=config.max_num_batched_tokens)
        self._requests: dict[str, Sequence] = {}
        self._num_transferring = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._generated_tokens = 0
        self._finished_requests = 0
        self._bootstrap: BootstrapServer | None = None
        self._rooms: dict[str, int] = {}  # prefill side: request id -> its bootstrap room
        self._tokenizer: Any = None  # a `tokenizers.Tokenizer`, when the model directory has one
        self._no_tokenizer_reason = "the mocker was started without --model"

    # --- command line -----------------------------------------------------------------------
    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser) -> None:
        add_mocker_args(parser)

    @classmethod
    def from_cli_args(cls, ns: argparse.Namespace, role: Role) -> MockerEngine:
        return cls(mocker_config_from_namespace(ns), role)

    @property
    def model_source(self) -> ModelSource:
        c = self.config
        return ModelSource(served_model_name=c.served_model_name,
                           model_path=c.model_path or c.served_model_name, tokenizer=c.model_path)

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> EngineInfo:
        if self._task is not None:
            raise EngineError("MockerEngine.start() called twice")
        if self.role is Role.PREFILL and self.config.handoff == "bootstrap":
            self._bootstrap = BootstrapServer(port=self.config.bootstrap_port,
                                              keep_s=self.config.bootstrap_timeout)
            try:
                await self._bootstrap.start()
            except OSError as e:
                raise EngineError(f"cannot serve the bootstrap port {self.config.bootstrap_port}: {e}") from None
            log.info("bootstrap handoff: serving rooms on port %d", self._bootstrap.port)
        self._load_tokenizer()
        self._task = asyncio.create_task(self._run(), name="mocker-engine-loop")
        log.info("mocker engine started: role=%s blocks=%d x %d tokens, context %d, speedup %.1f",
                 self.role.value, self.config.num_gpu_blocks, self.config.block_size, self.context_length,
                 self.config.speedup_ratio)
        return self.info

    def _load_tokenizer(self) -> None:
        """The model's tokenizer.json, if it has one: only structured output needs it."""
        directory = self.config.config_dir or self.config.model_path
        if not directory:
            return
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            self._no_tokenizer_reason = f"the model directory {directory} has no tokenizer.json"
            return
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # a tokenizer it cannot read costs structured output only: say so, go on
            self._no_tokenizer_reason = f"its tokenizer {path} does not load ({e})"
            log.warning("mocker: structured output is off: %s", self._no_tokenizer_reason)

    def _constrained_ids(self, request: GenerateRequest, seed: int) -> list[int] | None:
        """The whole output of a structured-output request (the value's ids, then EOS), or None."""
        so = request.structured_output
        if so is None:
            return None
        if self._tokenizer is None:
            raise InvalidRequest(f"this mocker cannot honour structured_output ({so.kind.value}): "
                                 f"{self._no_tokenizer_reason}; start it with --model DIR whose "
                                 "tokenizer.json it can read")
        pick = request.sampling.seed if request.sampling.seed is not None else seed
        ids = list(self._tokenizer.encode(constrained_text(so, pick), add_special_tokens=False).ids)
        if any(not 0 <= t < self.config.vocab_size for t in ids):
            raise InvalidRequest("the mocker's tokenizer produced ids outside its vocabulary for the "
                                 f"constrained value (vocab_size {self.config.vocab_size})")
        ids += self._sampler.eos_token_ids[:1]
        if not ids:  # each engine step emits a token: an empty value needs an EOS to end on
            raise InvalidRequest("the constrained value is empty and this model has no EOS token to end it on")
        return ids

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(vocab_size=self.config.vocab_size, context_length=self.context_length,
                          kv_block_size=self.config.block_size, total_kv_blocks=self.config.num_gpu_blocks,
                          eos_token_ids=list(self._sampler.eos_token_ids),
                          bootstrap_port=self._bootstrap.port if self._bootstrap is not None else None)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for seq in list(self._requests.values()):
            self._finish(seq, FinishReason.ERROR, error="the engine shut down")
        if self._bootstrap is not None:
            await self._bootstrap.stop()
        self._events.close()

    async def check_health(self) -> None:
        if self._failure is not None:
            raise EngineError(f"mocker engine loop failed: {self._failure!r}")
        if self._task is None or self._task.done():
            raise EngineError("mocker engine loop is not running (start() not called, or shut down)")

    # --- requests ---------------------------------------------------------------------------
    async def generate(self, request: GenerateRequest) -> AsyncIterator[GenerateOutput]:
        seq, transfer_s = self._new_sequence(request)
        sink = seq.sink
        self._requests[seq.request_id] = seq
        try:
            if request.bootstrap is not None and self.role is not Role.PREFILL:
                transfer_s = await self._meet(seq, request)
            if transfer_s > 0 and seq.state is not SeqState.FINISHED:
                seq.state = SeqState.TRANSFERRING
                self._num_transferring += 1
                try:
                    await asyncio.sleep(transfer_s)
                finally:
                    self._num_transferring -= 1
            if seq.state is not SeqState.FINISHED:  # not aborted during the transfer
                self._scheduler.add(seq)
                self._wakeup.set()
            while True:
                await sink.event.wait()
                sink.event.clear()
                tokens, sink.tokens = sink.tokens, []
                logprobs = None
                if seq.logprobs is not None:
                    logprobs, sink.logprobs = sink.logprobs, []
                if sink.finish_reason is not None:
                    yield GenerateOutput(token_ids=tokens, logprobs=logprobs, finish_reason=sink.finish_reason,
                                         usage=self._usage(seq), error=sink.error,
                                         disaggregated_params=sink.disaggregated_params)
                    return
                if tokens:
                    yield GenerateOutput(token_ids=tokens, logprobs=logprobs)
        finally:
            if seq.state is not SeqState.FINISHED:
                self._finish(seq, FinishReason.CANCELLED)

    async def abort(self, request_id: str) -> None:
        seq = self._requests.get(request_id)
        if seq is not None:
            self._finish(seq, FinishReason.CANCELLED)

    def _new_sequence(self, request: GenerateRequest) -> tuple[Sequence, float]:
        if self._failure is not None:
            raise EngineError(f"mocker engine loop failed: {self._failure!r}")
        if self._task is None or self._task.done():
            raise EngineError("mocker engine is not running: call start() first")
        if request.request_id in self._requests:
            raise InvalidRequest(f"request id {request.request_id!r} is already running; ids must be unique")
        prompt = list(request.token_ids)
        stop = request.stop
        room = self.context_length - len(prompt)
        max_tokens = min(stop.max_tokens or room, room)
        seq = Sequence(
            request_id=request.request_id, prompt_len=len(prompt), tokens=prompt,
            seed=request_seed(self.config.mocker_seed, prompt, request.sampling), max_tokens=max_tokens,
            min_tokens=stop.min_tokens or 0, stop_token_ids=frozenset(stop.stop_token_ids),
            ignore_eos=stop.ignore_eos, logprobs=request.output.logprobs, block_size=self.config.block_size)
        seq.forced = self._constrained_ids(request, seq.seed)
        if request.bootstrap is not None and self.role is Role.PREFILL:
            if self._bootstrap is None:
                raise InvalidRequest("this prefill worker hands its KV over in pull mode and serves no bootstrap "
                                     "rooms; send it requests without bootstrap")
            self._rooms[seq.request_id] = request.bootstrap.room
        params = request.disaggregated_params
        if params is None:
            return seq, 0.0
        return seq, self._accept_remote_kv(seq, params)

    def _accept_remote_kv(self, seq: Sequence, params: DisaggregatedParams) -> float:
        """Check a prefill's result against `seq`; its KV arrives after the returned transfer time."""
        prompt = seq.tokens[:seq.prompt_len]
        disagg.validate_params(params, prompt=prompt, expected_block_hashes=seq.prompt_block_hashes(),
                               block_size=self.config.block_size, mocker_seed=self.config.mocker_seed,
                               vocab_size=self.config.vocab_size)
        seq.remote_kv_tokens = len(prompt) - 1  # the last position is recomputed to sample the first token
        seq.cached_tokens = len(prompt)
        return transfer_seconds(len(prompt), self.config.kv_bytes_per_token,
                                self.config.kv_transfer_bandwidth, self.config.speedup_ratio)

    async def _meet(self, seq: Sequence, request: GenerateRequest) -> float:
        """Decode side, bootstrap mode: wait in the room for the prefill's KV; its transfer time."""
        room = request.bootstrap
        assert room is not None
        seq.state = SeqState.TRANSFERRING
        self._num_transferring += 1
        try:
            answer = await meet(room.host, room.port, room.room, self.config.bootstrap_timeout)
        except BootstrapError as e:  # the prefill side failed or vanished: the request may go elsewhere
            raise PrefillError(str(e)) from None
        finally:
            self._num_transferring -= 1
        params = DisaggregatedParams(engine=disagg.ENGINE_NAME, payload=answer.get("payload") or {},
                                     first_token_ids=list(answer.get("first_token_ids") or []))
        return self._accept_remote_kv(seq, params)

    # --- the engine loop --------------------------------------------------------------------
    async def _run(self) -> None:
        clock = SimClock()
        try:
            while True:
                if not self._scheduler.has_work():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                plan = self._scheduler.schedule()
                if not plan.items:  # nothing fits right now; cannot last while nothing runs
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), timeout=0.01)
                    except TimeoutError:
                        pass
                    continue
                await clock.advance(step_seconds(plan, self.config.timing, self.config.speedup_ratio))
                for seq in self._scheduler.complete(plan):
                    self._emit_token(seq)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in the simulator: fail every request loudly, keep the reason
            log.exception("mocker engine loop failed")
            self._failure = e
            for seq in list(self._requests.values()):
                self._finish(seq, FinishReason.ERROR, error=f"mocker engine failed: {e!r}")

    def _emit_token(self, seq: Sequence) -> None:
        position = len(seq.tokens) - seq.prompt_len
        if seq.forced is not None:
            token = seq.forced[position]
        else:
            early = position < seq.min_tokens
            token = self._sampler.sample(seq.seed, position, ban=seq.stop_token_ids if early else _NOTHING,
                                         allow_eos=not early)  # like vLLM: ignore_eos goes on past EOS
        seq.tokens.append(token)
        self._generated_tokens += 1
        sink = seq.sink
        sink.tokens.append(token)
        if seq.logprobs is not None:
            sink.logprobs.append(self._sampler.logprob(seq.seed, position, token, seq.logprobs,
                                                       self.config.vocab_size))
        reason = self._finish_reason(seq, token)
        if reason is not None:
            self._finish(seq, reason)
        else:
            sink.event.set()

    def _finish_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        num_output = len(seq.tokens) - seq.prompt_len
        if seq.forced is not None and num_output >= len(seq.forced):  # the constrained value is complete
            return FinishReason.EOS if self._sampler.eos_token_ids else FinishReason.STOP
        if seq.forced is not None and token in seq.stop_token_ids:
            return FinishReason.STOP  # a stop token ends it as it ends any output (min_tokens aside)
        if num_output >= seq.min_tokens:
            if token in self._eos and not seq.ignore_eos:
                return FinishReason.EOS
            if token in seq.stop_token_ids:
                return FinishReason.STOP
        if num_output >= seq.max_tokens or len(seq.tokens) >= self.context_length:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        if seq.state is SeqState.FINISHED:
            return
        self._scheduler.remove(seq)
        if self._requests.get(seq.request_id) is seq:
            del self._requests[seq.request_id]
        self._finished_requests += 1
        sink = seq.sink
        sink.finish_reason = reason
        sink.error = error
        room = self._rooms.pop(seq.request_id, None)
        if self.role is Role.PREFILL and reason is not FinishReason.CANCELLED and reason is not FinishReason.ERROR:
            params = disagg.make_params(
                prompt=seq.tokens[:seq.prompt_len], block_hashes=seq.prompt_block_hashes(),
                block_size=self.config.block_size, mocker_seed=self.config.mocker_seed,
                kv_bytes_per_token=self.config.kv_bytes_per_token, first_token_ids=seq.output_ids)
            sink.disaggregated_params = params
            if room is not None and self._bootstrap is not None:
                self._bootstrap.publish(room, params.payload, params.first_token_ids)
        elif room is not None and self._bootstrap is not None:
            self._bootstrap.fail(room, error or f"the prefill request was {reason.value}")
        sink.event.set()

    @staticmethod
    def _usage(seq: Sequence) -> Usage:
        return Usage(prompt_tokens=seq.prompt_len, completion_tokens=seq.num_output,
                     cached_tokens=seq.cached_tokens or 0)

    # --- KV cache and reporting -------------------------------------------------------------
    async def clear_kv_blocks(self) -> None:
        self._cache.clear()

    def kv_events(self) -> AsyncIterator[KvEvent] | None:
        if not self.config.enable_prefix_caching:
            return None
        return self._events.__aiter__()

    def stats(self) -> EngineStats:
        total = self._cache.num_blocks
        active = self._cache.num_active
        return EngineStats(running_requests=len(self._scheduler.running),
                           waiting_requests=len(self._scheduler.waiting) + self._num_transferring,
                           kv_usage=active / total, kv_total_blocks=total, kv_active_blocks=active)

    def num_unfinished_requests(self) -> int:
        return len(self._requests)

    def counters(self) -> dict[str, int]:
        """Lifetime counters (for metrics and tests): preemptions, admission waits, steps, ..."""
        c = self._scheduler.counters
        return {"steps": c.steps, "preemptions": c.preemptions, "admission_waits": c.admission_waits,
                "prefix_hit_tokens": c.prefix_hit_tokens, "generated_tokens": self._generated_tokens,
                "finished_requests": self._finished_requests, "kv_events_published": self._events.published,
                "kv_events_dropped": self._events.dropped, "kv_cached_blocks": self._cache.num_cached}

