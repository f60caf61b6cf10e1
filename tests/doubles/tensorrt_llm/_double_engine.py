"""The test double's own engine simulation -- NOT a mirror of any TensorRT-LLM module.

It stands in for the real executor stack (GenerationExecutorProxy/Worker + PyExecutor + the C++
KV-cache manager and cache transceiver) behind ``LLM._executor``:

Tokens
    No weights. Output token ``i`` of a request is a deterministic function of (key, prompt token ids, i):
    key is a fixed greedy key when the sampling params imply greedy decoding
    (``SamplingParams.params_imply_greedy_decoding``), ``seed`` when sampling with a seed, and a random
    nonce when sampling without one. Tokens are drawn from ``range(vocab_size)`` (``config.json``); with
    probability ``TRTLLM_DOUBLE_EOS_RATE`` (default 0.03) a token is the model's EOS id
    (``generation_config.json`` / ``config.json`` ``eos_token_id``). ``min_tokens`` bans ``end_id`` for
    the first ``min_tokens`` positions (C++ min-length penalty). ``logprobs=k`` returns k top entries per
    token, the sampled token being rank 1.
Stop criteria (order of ``TorchSampler._handle_stop_criteria``, ``_torch/pyexecutor/sampler.py``)
    token == end_id (unless ignore_eos) -> END_ID; prompt+generated >= max_seq_len or generated >=
    max_tokens -> LENGTH; the token sequence ends with a stop word (stop_token_ids, tokenized ``stop``)
    -> STOP_WORDS. The end/stop token is appended to the sequence (``add_token`` before the check);
    ``executor/result.py`` then trims a stop word from ``token_ids`` unless
    ``include_stop_str_in_output`` while an EOS token stays in ``token_ids``.
Steps
    A daemon thread runs one engine iteration every ``TRTLLM_DOUBLE_STEP_MS`` ms (default 2): admit
    queued requests (up to max_batch_size), run each request's context phase (prompt in one step, first
    token) or one decode step, then deliver responses (streaming: the new tokens of each step;
    otherwise one final response; ``stream_interval`` honoured) into each result's queue, as the real
    worker thread does. Request ids
    start at max_batch_size (``py_executor.py``: "The first max_batch_size request IDs are reserved for
    dummy requests").
KV cache
    A pool of ``TRTLLM_DOUBLE_KV_BLOCKS`` (default 4096) blocks of ``kv_cache_config.tokens_per_block``
    tokens, or ``ceil(kv_cache_config.max_tokens / tokens_per_block)`` when max_tokens is set. With
    ``enable_block_reuse``, full blocks are stored in a radix tree under chained unsigned 64-bit hashes
    (blake2b over parent hash + tokens; the cache salt enters the first block): prompt blocks after the
    context step, generated blocks when the request ends. A new request reuses the longest chain of full
    blocks of ``prompt[:-1]`` (the last prompt token is always recomputed) and reports it as
    ``RequestOutput.cached_tokens``. Unreferenced leaf blocks are evicted LRU-first when blocks run out.
    Partial-block reuse and partial "stored" blocks are not simulated.
KV events (when ``event_buffer_max_size > 0`` and ``enable_block_reuse``)
    JSON shapes of ``KVCacheEventSerializer`` (``tensorrt_llm/_utils.py``): one "created" event first
    (``num_blocks_per_cache_level = [num_blocks, 0]``), "stored" events (blocks with tokens, parent_hash,
    cache_level 0, priority 35), "removed" events (consecutive removals coalesced). ``window_size`` is
    max_attention_window[0] or max_seq_len.
Stats (when ``enable_iter_perf_stats``)
    One dict per iteration that ran requests, with the C++ ``IterationStats`` JSON keys.
Guided decoding (``_double_guided``)
    With ``guided_decoding_backend`` set (the real executor then builds its GuidedDecoder, which needs the
    tokenizer) a request's ``guided_decoding`` fixes its output: the token ids of one text that satisfies
    the guide, then the model's EOS at every later position. Without a backend it has no effect, as in
    the real executor. ``embedding_bias`` is accepted and not simulated (there are no logits).
Disaggregation
    A context-only request returns one token (finish_reason 'length', or 'stop' when it is end_id / a stop
    word) and ``DisaggregatedParams(request_type="context_only", first_gen_tokens=[t0], ctx_request_id=id,
    opaque_state=<bytes>, draft_tokens=None)``; the opaque state is magic bytes (``b"\\x00\\xff..."``), the
    ctx request id, the prompt length and a keyed blake2b checksum over both and the prompt ids. A
    generation-only request "receives the KV cache" by checking its opaque_state byte for byte against
    the one its prompt and ctx_request_id imply; on a mismatch it fails the way PyExecutor reports a
    failed KV transfer: an error response "Error in kv cache transfer for generation requests"
    (``py_executor.py`` ``_check_cache_transfer_errors`` -> ``_handle_errors``), which
    ``executor/result.py`` turns into ``RequestError`` raised from ``result()``/``aresult()``/``async for``.
    Otherwise, as ``PyExecutor._prepare_disagg_gen_transmission_complete`` does, first_gen_tokens[0] is
    added as the first output token (it IS part of ``token_ids``; max_tokens counts it) and decoding
    continues from position 1 in the same iteration, so context-only + generation-only output equals the
    aggregated output for the same prompt and sampling params.
Shutdown
    Requests still in flight when the LLM shuts down get an error response ("LLM is shutting down"),
    raised as ``RequestError`` (the real executor's behaviour here was not pinned down).
"""

from __future__ import annotations

import array
import datetime
import hashlib
import json
import math
import os
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from . import _double_guided
from .bindings import executor as tllm
from .disaggregated_params import DisaggregatedParams
from .executor.executor import GenerationExecutor
from .executor.request import GenerationRequest
from .executor.result import GenerationResult, Logprob
from .sampling_params import SamplingParams

if TYPE_CHECKING:
    from .llmapi.llm_args import TorchLlmArgs

ENV_STEP_MS = "TRTLLM_DOUBLE_STEP_MS"
ENV_EOS_RATE = "TRTLLM_DOUBLE_EOS_RATE"
ENV_KV_BLOCKS = "TRTLLM_DOUBLE_KV_BLOCKS"

#: Error message of a failed KV transfer (py_executor.py: _check_cache_transfer_errors("generation requests")).
KV_TRANSFER_ERROR = "Error in kv cache transfer for generation requests"
SHUTDOWN_ERROR = "LLM is shutting down"

DEFAULT_PRIORITY = 35  # KvCacheRetentionConfig's default retention priority
_OPAQUE_MAGIC = b"\x00\xffTRTLLM-DOUBLE-CTX\x00"
_OPAQUE_KEY = b"tensorrt_llm-test-double"


def _u64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def cache_salt_id(cache_salt: str) -> int:
    """Stand-in for ``tensorrt_llm.inputs.get_cache_salt_id``: a 64-bit id of the salt string."""
    return _u64(cache_salt.encode("utf-8"))


def _ids_bytes(ids: list[int]) -> bytes:
    return array.array("q", ids).tobytes()


def block_hash(parent: Optional[int], tokens: list[int], salt: Optional[int]) -> int:
    """Chained hash of a full block: unsigned 64-bit, like the C++ block key hash."""
    head = b"P" + parent.to_bytes(8, "little") if parent is not None else b"R" + (salt or 0).to_bytes(8, "little")
    return _u64(head + _ids_bytes(tokens))


def make_opaque_state(ctx_request_id: int, prompt_token_ids: list[int]) -> bytes:
    """The context phase's opaque state: magic (with non-UTF-8 bytes), ctx id, prompt length, checksum."""
    body = ctx_request_id.to_bytes(8, "little") + len(prompt_token_ids).to_bytes(4, "little")
    checksum = hashlib.blake2b(body + _ids_bytes(prompt_token_ids), key=_OPAQUE_KEY, digest_size=16).digest()
    return _OPAQUE_MAGIC + body + checksum


def _transfer_ok(params: Optional[DisaggregatedParams], prompt_token_ids: list[int]) -> bool:
    if params is None or not isinstance(params.opaque_state, (bytes, bytearray)):
        return False
    if not isinstance(params.ctx_request_id, int) or not params.first_gen_tokens:
        return False
    return bytes(params.opaque_state) == make_opaque_state(params.ctx_request_id, prompt_token_ids)


@dataclass
class ModelInfo:
    """What the double reads from a Hugging Face model directory."""

    model_dir: Path
    vocab_size: int
    eos_token_id: Optional[int]
    max_position_embeddings: Optional[int]
    config: dict = field(default_factory=dict)
    generation_config: dict = field(default_factory=dict)

    @classmethod
    def load(cls, model_dir: Path) -> "ModelInfo":
        config_path = model_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"The tensorrt_llm test double needs a local Hugging Face model directory with a "
                             f"config.json; got {model_dir}")
        config = json.loads(config_path.read_text())
        gen_path = model_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
        text_config = config.get("text_config", config)
        eos = gen.get("eos_token_id", text_config.get("eos_token_id"))
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(model_dir=model_dir, vocab_size=int(text_config["vocab_size"]), eos_token_id=eos,
                   max_position_embeddings=text_config.get("max_position_embeddings"), config=config,
                   generation_config=gen)


class _CachedBlock:
    __slots__ = ("hash", "parent", "tokens", "refcount", "last_used", "children")

    def __init__(self, hash: int, parent: Optional[int], tokens: list[int], last_used: int) -> None:
        self.hash = hash
        self.parent = parent
        self.tokens = tokens
        self.refcount = 1
        self.last_used = last_used
        self.children = 0


class BlockPool:
    """Fixed-size KV block pool with a reuse tree and the KV event stream."""

    def __init__(self, num_blocks: int, tokens_per_block: int, reuse: bool, emit_events: bool,
                 window_size: int) -> None:
        self.num_blocks = num_blocks
        self.tokens_per_block = tokens_per_block
        self.reuse = reuse
        self.emit_events = emit_events
        self.window_size = window_size
        self.tree: dict[int, _CachedBlock] = {}
        self.private = 0  # allocated blocks not in the tree
        self.clock = 0
        self.next_event_id = 0
        self.events: list[dict] = []
        # cumulative counters of KvCacheStats
        self.alloc_total = 0
        self.alloc_new = 0
        self.reused = 0
        self.missed = 0
        self._emit({"type": "created", "num_blocks_per_cache_level": [num_blocks, 0]})

    # -- events ------------------------------------------------------------------------------------------
    def _emit(self, data: dict) -> None:
        if not self.emit_events:
            return
        if data["type"] == "removed" and self.events and self.events[-1]["data"]["type"] == "removed":
            self.events[-1]["data"]["block_hashes"].extend(data["block_hashes"])
            return
        self.events.append({"event_id": self.next_event_id, "data": data, "window_size": self.window_size})
        self.next_event_id += 1

    def drain_events(self) -> list[dict]:
        events, self.events = self.events, []
        return events

    # -- accounting --------------------------------------------------------------------------------------
    def used_blocks(self) -> int:
        return self.private + sum(1 for b in self.tree.values() if b.refcount > 0)

    def _empty_blocks(self) -> int:
        return self.num_blocks - self.private - len(self.tree)

    def _evict_one(self) -> bool:
        candidates = [b for b in self.tree.values() if b.refcount == 0 and b.children == 0]
        if not candidates:
            return False
        victim = min(candidates, key=lambda b: b.last_used)
        del self.tree[victim.hash]
        if victim.parent is not None and victim.parent in self.tree:
            self.tree[victim.parent].children -= 1
        self._emit({"type": "removed", "block_hashes": [victim.hash]})
        return True

    def ensure(self, req: "_Req", num_tokens: int) -> bool:
        """Give `req` enough blocks for `num_tokens` tokens; False if the pool cannot."""
        need = math.ceil(num_tokens / self.tokens_per_block) - (len(req.refs) + req.private)
        if need <= 0:
            return True
        while self._empty_blocks() < need:
            if not self._evict_one():
                return False
        self.private += need
        req.private += need
        req.new_blocks += need
        self.alloc_total += need
        self.alloc_new += need
        return True

    # -- reuse -------------------------------------------------------------------------------------------
    def match(self, req: "_Req") -> int:
        """Reuse the longest chain of cached full blocks of prompt[:-1]; returns the number of blocks."""
        if not self.reuse:
            return 0
        tpb = self.tokens_per_block
        prompt = req.prompt
        parent: Optional[int] = None
        self.clock += 1
        for i in range((len(prompt) - 1) // tpb):
            h = block_hash(parent, prompt[i * tpb:(i + 1) * tpb], req.salt if i == 0 else None)
            block = self.tree.get(h)
            if block is None:
                break
            block.refcount += 1
            block.last_used = self.clock
            req.refs.append(h)
            req.hashes.append(h)
            parent = h
        return len(req.refs)

    def store(self, req: "_Req", tokens: list[int]) -> None:
        """Put the full blocks of `tokens` not yet accounted for into the reuse tree ("stored" events)."""
        if not self.reuse:
            return
        tpb = self.tokens_per_block
        parent = req.hashes[-1] if req.hashes else None
        run: list[_CachedBlock] = []
        self.clock += 1

        def flush() -> None:
            if run:
                self._emit({
                    "type": "stored",
                    "parent_hash": run[0].parent,
                    "blocks": [{
                        "type": "stored_block",
                        "block_hash": b.hash,
                        "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in b.tokens],
                        "cache_level": 0,
                        "priority": DEFAULT_PRIORITY,
                    } for b in run],
                })
                run.clear()

        for i in range(len(req.hashes), len(tokens) // tpb):
            chunk = tokens[i * tpb:(i + 1) * tpb]
            h = block_hash(parent, chunk, req.salt if i == 0 else None)
            req.hashes.append(h)
            if h in self.tree or req.private <= 0:
                flush()  # an identical block is cached already: this copy stays private
            else:
                req.private -= 1
                self.private -= 1
                block = _CachedBlock(h, parent, list(chunk), self.clock)
                if parent is not None and parent in self.tree:
                    self.tree[parent].children += 1
                self.tree[h] = block
                req.refs.append(h)
                run.append(block)
            parent = h
        flush()

    def release(self, req: "_Req") -> None:
        self.clock += 1
        for h in req.refs:
            block = self.tree.get(h)
            if block is not None:
                block.refcount -= 1
                block.last_used = self.clock
        req.refs = []
        self.private -= req.private
        req.private = 0

    def stats(self) -> dict:
        used = self.used_blocks()
        lookups = self.reused + self.missed
        return {
            "maxNumBlocks": self.num_blocks,
            "freeNumBlocks": self.num_blocks - used,
            "usedNumBlocks": used,
            "tokensPerBlock": self.tokens_per_block,
            "allocTotalBlocks": self.alloc_total,
            "allocNewBlocks": self.alloc_new,
            "reusedBlocks": self.reused,
            "missedBlocks": self.missed,
            "cacheHitRate": (self.reused / lookups) if lookups else 0.0,
        }


@dataclass(eq=False)
class _Req:
    client_id: int
    req_id: int
    prompt: list[int]
    streaming: bool
    queue: Any
    request_type: str
    disagg: Optional[DisaggregatedParams]
    key: bytes
    max_new: int
    end_id: Optional[int]
    min_tokens: int
    stop_words: list[list[int]]
    logprobs_k: int
    perf: bool
    salt: Optional[int]
    arrival: float
    prompt_digest: bytes = b""
    forced: Optional[list[int]] = None  # a guided request's output (see _double_guided)
    generated: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    cum_logprob: float = 0.0
    sent: int = 0
    context_done: bool = False
    cancelled: bool = False
    finish_reason: Optional[tllm.FinishReason] = None
    decoding_iter: int = 0
    # KV
    hashes: list[int] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)
    private: int = 0
    cached_tokens: int = 0
    reused_blocks: int = 0
    new_blocks: int = 0
    missed_blocks: int = 0
    # timing / iterations
    first_scheduled: Optional[float] = None
    first_token: Optional[float] = None
    last_token: Optional[float] = None
    first_iter: Optional[int] = None
    last_iter: Optional[int] = None

    def __post_init__(self) -> None:
        self.prompt_digest = hashlib.blake2b(_ids_bytes(self.prompt), digest_size=16).digest()


class _Engine:
    """The simulated PyExecutor: request queue, stepping thread, block pool, stats and events."""

    def __init__(self, args: "TorchLlmArgs", model: ModelInfo, executor: "DoubleExecutor",
                 tokenizer: Any = None) -> None:
        if args.guided_decoding_backend is not None:
            assert tokenizer is not None  # as create_py_executor's guided decoding config asserts
        self.guided = args.guided_decoding_backend is not None
        self.tokenizer = tokenizer
        self.step_s = float(os.environ.get(ENV_STEP_MS, "2")) / 1000.0
        self.eos_rate = float(os.environ.get(ENV_EOS_RATE, "0.03"))
        self.model = model
        self.vocab_size = model.vocab_size
        self.model_eos = model.eos_token_id
        self.max_batch_size = args.max_batch_size or 2048
        self.max_num_tokens = args.max_num_tokens or 8192
        self.max_seq_len = args.max_seq_len or model.max_position_embeddings or 8192
        self.stream_interval = max(int(getattr(args, "stream_interval", 1) or 1), 1)
        self.stats_enabled = bool(args.enable_iter_perf_stats)
        self.req_stats_enabled = bool(args.enable_iter_req_stats) and self.stats_enabled
        kv = args.kv_cache_config
        tpb = kv.tokens_per_block
        num_blocks = math.ceil(kv.max_tokens / tpb) if kv.max_tokens else int(os.environ.get(ENV_KV_BLOCKS, "4096"))
        window = kv.max_attention_window[0] if kv.max_attention_window else self.max_seq_len
        self.pool = BlockPool(num_blocks, tpb, reuse=kv.enable_block_reuse,
                              emit_events=kv.event_buffer_max_size > 0 and kv.enable_block_reuse, window_size=window)
        self._executor = weakref.ref(executor)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._waiting: deque[_Req] = deque()
        self._active: list[_Req] = []
        self._by_client: dict[int, _Req] = {}
        self._next_req_id = self.max_batch_size  # py_executor: first max_batch_size ids reserved for dummies
        self._iter = 0
        self._thread: Optional[threading.Thread] = None
        self._flush_events()  # the "created" event

    # -- submission ----------------------------------------------------------------------------------------
    def add(self, request: GenerationRequest, queue: Any) -> None:
        sp: SamplingParams = request.sampling_params
        params = request.disaggregated_params
        request_type = (params.request_type if params is not None and params.request_type else
                        "context_and_generation")
        if sp._greedy_decoding:
            key = b"greedy"
        elif sp.seed is not None:
            key = b"seed" + int(sp.seed).to_bytes(8, "little", signed=True)
        else:
            key = os.urandom(8)
        snapshot = None
        if params is not None:  # the executor copies what it needs at submission
            snapshot = DisaggregatedParams(request_type=params.request_type,
                                           first_gen_tokens=list(params.first_gen_tokens or []) or None,
                                           ctx_request_id=params.ctx_request_id, opaque_state=params.opaque_state,
                                           draft_tokens=params.draft_tokens)
        with self._cond:
            req = _Req(client_id=request.id, req_id=self._next_req_id, prompt=list(request.prompt_token_ids),
                       streaming=request.streaming, queue=queue, request_type=request_type, disagg=snapshot,
                       key=key, max_new=int(sp.max_tokens),
                       end_id=None if sp.ignore_eos or sp.end_id is None or sp.end_id < 0 else int(sp.end_id),
                       min_tokens=int(sp.min_tokens or 0), stop_words=sp._get_stop_words(),
                       logprobs_k=int(sp.logprobs or 0),
                       perf=bool(sp.return_perf_metrics), salt=request.cache_salt_id, arrival=time.monotonic())
            req.forced = self._guided_ids(sp, req)
            self._next_req_id = (self._next_req_id + 1) & ((1 << 64) - 1)
            self._waiting.append(req)
            self._by_client[req.client_id] = req
            self._cond.notify_all()
        self._start()

    def abort(self, client_id: int) -> None:
        deliveries = []
        with self._cond:
            req = self._by_client.get(client_id)
            if req is None:
                return
            if req in self._waiting:  # never scheduled: cancel right away
                self._waiting.remove(req)
                req.finish_reason = tllm.FinishReason.CANCELLED
                self._by_client.pop(client_id, None)
                deliveries.append((req.queue, self._response(req)))
            else:
                req.cancelled = True
            self._cond.notify_all()
        for queue, resp in deliveries:
            queue.put(resp)

    # -- thread --------------------------------------------------------------------------------------------
    def _start(self) -> None:
        with self._cond:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._run, name="trtllm-double-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        deliveries = []
        with self._cond:  # fail whatever is still in flight
            for req in list(self._waiting) + list(self._active):
                deliveries.append((req.queue, tllm.Response(request_id=req.req_id, client_id=req.client_id,
                                                            error_msg=SHUTDOWN_ERROR)))
            self._waiting.clear()
            self._active.clear()
            self._by_client.clear()
        for queue, resp in deliveries:
            queue.put(resp)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._stop.is_set() and not self._waiting and not self._active:
                    self._cond.wait()
            if self._stop.is_set():
                break
            started = time.monotonic()
            self._step()
            remaining = self.step_s - (time.monotonic() - started)
            if remaining > 0:
                self._stop.wait(remaining)

    # -- one iteration -------------------------------------------------------------------------------------
    def _step(self) -> None:
        deliveries: list[tuple[Any, tllm.Response]] = []
        stats_json: Optional[str] = None
        with self._cond:
            started = time.monotonic()
            num_new = 0
            while self._waiting and len(self._active) < self.max_batch_size:
                req = self._waiting.popleft()
                req.first_scheduled = started
                self._active.append(req)
                num_new += 1
            if not self._active:
                return
            iteration = self._iter
            self._iter += 1
            num_active = len(self._active)
            ctx_reqs = gen_reqs = paused = 0
            ctx_tokens = 0
            finished: list[_Req] = []
            for req in list(self._active):
                if req.cancelled:
                    self._finish(req, tllm.FinishReason.CANCELLED)
                elif not req.context_done:
                    ctx_reqs += 1
                    ctx_tokens += len(req.prompt)
                    if not self._context_step(req, iteration, deliveries):
                        paused += 1
                        ctx_reqs -= 1
                        ctx_tokens -= len(req.prompt)
                        continue
                else:
                    gen_reqs += 1
                    if not self._generation_step(req, iteration):
                        paused += 1
                        gen_reqs -= 1
                        continue
                if req.finish_reason is not None or req.cancelled:
                    finished.append(req)
                if req.finish_reason is not None:
                    deliveries.append((req.queue, self._response(req)))
                    self._by_client.pop(req.client_id, None)
                elif req.streaming and len(req.generated) > req.sent and (
                        req.decoding_iter <= 1 or req.decoding_iter % self.stream_interval == 0):
                    # PyExecutor._handle_responses: stream every stream_interval iterations (and the first token)
                    deliveries.append((req.queue, self._response(req)))
            if self.stats_enabled:
                stats = self._iteration_stats(iteration, started, num_new, num_active, len(finished), ctx_reqs,
                                              gen_reqs, paused, ctx_tokens, finished)
                stats_json = json.dumps(stats)
            events = self.pool.drain_events()
        for queue, resp in deliveries:
            queue.put(resp)
        executor = self._executor()
        if executor is not None:
            if stats_json is not None:
                executor._put_stats(stats_json)
            for event in events:
                executor._put_kv_event(json.dumps(event))

    def _flush_events(self) -> None:
        executor = self._executor()
        for event in self.pool.drain_events():
            if executor is not None:
                executor._put_kv_event(json.dumps(event))

    def _context_step(self, req: _Req, iteration: int, deliveries: list) -> bool:
        pool = self.pool
        if req.request_type == "generation_only":
            if not _transfer_ok(req.disagg, req.prompt):
                self._fail(req, KV_TRANSFER_ERROR, deliveries)
                return True
            if not pool.ensure(req, len(req.prompt) + 1):
                return False
            pool.store(req, req.prompt)
            req.context_done = True
            req.first_iter = iteration
            # _prepare_disagg_gen_transmission_complete: decoding_iter = 1, then add first_gen_tokens[beam]
            # as the first new token; the request is decoded in the same iteration.
            req.decoding_iter = 1
            self._append(req, int(req.disagg.first_gen_tokens[0]), iteration)
            if len(req.generated) >= req.max_new:
                self._finish(req, tllm.FinishReason.LENGTH)
                return True
            return self._generation_step(req, iteration)

        matched = pool.match(req)
        prompt_blocks = math.ceil(len(req.prompt) / pool.tokens_per_block)
        if not pool.ensure(req, len(req.prompt) + 1):
            pool.release(req)
            req.hashes = []
            return False
        req.reused_blocks = matched
        req.missed_blocks = max(prompt_blocks - matched, 0)
        req.cached_tokens = matched * pool.tokens_per_block
        pool.reused += matched
        pool.missed += req.missed_blocks
        pool.alloc_total += matched
        pool.store(req, req.prompt)
        req.context_done = True
        req.first_iter = iteration
        req.decoding_iter += 1
        token = self._sample(req, 0)
        self._append(req, token, iteration)
        reason = self._stop_reason(req, token)
        if reason is None and req.request_type == "context_only":
            # A context-only request ends after its context phase; the LLM API forces max_tokens=1 on the
            # PyTorch backend (-> LENGTH), so NOT_FINISHED ('not_finished') only shows if that was bypassed.
            reason = tllm.FinishReason.NOT_FINISHED
        if reason is not None:
            self._finish(req, reason)
        return True

    def _generation_step(self, req: _Req, iteration: int) -> bool:
        if not self.pool.ensure(req, len(req.prompt) + len(req.generated) + 1):
            return False
        req.decoding_iter += 1
        token = self._sample(req, len(req.generated))
        self._append(req, token, iteration)
        reason = self._stop_reason(req, token)
        if reason is not None:
            self._finish(req, reason)
        return True

    def _append(self, req: _Req, token: int, iteration: int) -> None:
        now = time.monotonic()
        if req.first_token is None:
            req.first_token = now
        req.last_token = now
        req.last_iter = iteration
        req.generated.append(token)
        if req.logprobs_k:
            top = self._top_logprobs(req, len(req.generated) - 1, token)
            req.logprobs.append(top)
            req.cum_logprob += top[token].logprob

    def _stop_reason(self, req: _Req, token: int) -> Optional[tllm.FinishReason]:
        # TorchSampler._handle_stop_criteria: END_ID, then LENGTH, then STOP_WORDS.
        if req.end_id is not None and token == req.end_id:
            return tllm.FinishReason.END_ID
        if len(req.generated) >= req.max_new or len(req.prompt) + len(req.generated) >= self.max_seq_len:
            return tllm.FinishReason.LENGTH
        if req.stop_words:
            tokens = req.prompt + req.generated
            for word in req.stop_words:
                if word and len(word) <= len(tokens) and tokens[-len(word):] == word:
                    return tllm.FinishReason.STOP_WORDS
        return None

    def _finish(self, req: _Req, reason: tllm.FinishReason) -> None:
        req.finish_reason = reason
        # The KV of every token but the last sampled one exists: store its full blocks, then release.
        if req.context_done:
            self.pool.store(req, req.prompt + req.generated[:-1])
        self.pool.release(req)
        if req in self._active:
            self._active.remove(req)

    def _fail(self, req: _Req, message: str, deliveries: list) -> None:
        self.pool.release(req)
        if req in self._active:
            self._active.remove(req)
        self._by_client.pop(req.client_id, None)
        deliveries.append((req.queue, tllm.Response(request_id=req.req_id, client_id=req.client_id,
                                                    error_msg=message)))

    # -- tokens --------------------------------------------------------------------------------------------
    def _draw(self, req: _Req, pos: int) -> bytes:
        return hashlib.blake2b(req.key + req.prompt_digest + pos.to_bytes(8, "little"), digest_size=16).digest()

    def _guided_ids(self, sp: SamplingParams, req: _Req) -> Optional[list[int]]:
        """A guided request's output token ids (EOS follows them), or None."""
        if not self.guided or sp.guided_decoding is None:
            return None
        pick = int.from_bytes(hashlib.blake2b(req.key + req.prompt_digest, digest_size=8).digest(), "little")
        text = _double_guided.guided_text(sp.guided_decoding, pick)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _sample(self, req: _Req, pos: int) -> int:
        if req.forced is not None:
            if pos < len(req.forced):
                return req.forced[pos]
            if self.model_eos is not None:  # a completed guide allows only EOS
                return self.model_eos
        banned = req.end_id if (req.end_id is not None and pos < req.min_tokens) else None
        digest = self._draw(req, pos)
        eos = self.model_eos
        if eos is not None and eos != banned and int.from_bytes(digest[:8], "little") / 2**64 < self.eos_rate:
            return eos
        token = int.from_bytes(digest[8:], "little") % self.vocab_size
        for _ in range(self.vocab_size):
            if token != eos and token != banned:
                break
            token = (token + 1) % self.vocab_size
        return token

    def _top_logprobs(self, req: _Req, pos: int, token: int) -> dict[int, Logprob]:
        digest = self._draw(req, pos)
        best = -(0.05 + digest[0] / 255.0)
        top = {token: Logprob(logprob=best, rank=1)}
        alt = token
        while len(top) < min(req.logprobs_k, self.vocab_size):
            alt = (alt + 7919) % self.vocab_size
            if alt not in top:
                top[alt] = Logprob(logprob=best - 0.75 * len(top), rank=len(top) + 1)
        return top

    # -- responses -----------------------------------------------------------------------------------------
    def _response(self, req: _Req) -> tllm.Response:
        final = req.finish_reason is not None
        if req.streaming:
            new_tokens = req.generated[req.sent:]
        else:
            new_tokens = list(req.generated)
        req.sent = len(req.generated)
        context_phase_params = None
        if req.request_type == "context_only" and final and req.finish_reason is not tllm.FinishReason.CANCELLED \
                and req.generated:
            context_phase_params = tllm.ContextPhaseParams(first_gen_tokens=[req.generated[0]], req_id=req.req_id,
                                                           opaque_state=make_opaque_state(req.req_id, req.prompt),
                                                           draft_tokens=None)
        result = tllm.Result(
            is_final=final,
            output_token_ids=[new_tokens],
            finish_reasons=[req.finish_reason or tllm.FinishReason.NOT_FINISHED],
            is_sequence_final=final,
            decoding_iter=req.decoding_iter,
            cached_tokens=req.cached_tokens,
            avg_decoded_tokens_per_iter=(len(req.generated) / req.decoding_iter) if req.decoding_iter else None,
            context_phase_params=context_phase_params,
            cum_log_probs=[req.cum_logprob] if req.logprobs_k else None,
            log_probs=[list(req.logprobs)] if req.logprobs_k else None,
            request_perf_metrics=self._perf_metrics(req) if req.perf else None,
        )
        return tllm.Response(request_id=req.req_id, client_id=req.client_id, result=result)

    def _perf_metrics(self, req: _Req) -> tllm.RequestPerfMetrics:
        def td(t: Optional[float]) -> datetime.timedelta:
            return datetime.timedelta(seconds=t or 0.0)

        lookups = req.reused_blocks + req.missed_blocks
        return tllm.RequestPerfMetrics(
            timing_metrics=tllm.TimingMetrics(arrival_time=td(req.arrival), first_scheduled_time=td(req.first_scheduled),
                                              first_token_time=td(req.first_token),
                                              last_token_time=td(req.last_token)),
            kv_cache_metrics=tllm.KvCacheMetrics(num_total_allocated_blocks=req.reused_blocks + req.new_blocks,
                                                 num_new_allocated_blocks=req.new_blocks,
                                                 num_reused_blocks=req.reused_blocks,
                                                 num_missed_blocks=req.missed_blocks,
                                                 kv_cache_hit_rate=(req.reused_blocks / lookups) if lookups else 0.0),
            first_iter=req.first_iter, last_iter=req.last_iter, iter=req.last_iter)

    def _iteration_stats(self, iteration: int, started: float, num_new: int, num_active: int, num_completed: int,
                         ctx_reqs: int, gen_reqs: int, paused: int, ctx_tokens: int, finished: list[_Req]) -> dict:
        stats: dict[str, Any] = {
            "timestamp": datetime.datetime.now().strftime("%m-%d-%Y %H:%M:%S.%f"),
            "iter": iteration,
            "iterLatencyMS": (time.monotonic() - started) * 1e3,
            "newActiveRequestsQueueLatencyMS": 0.0,
            "numNewActiveRequests": num_new,
            "numActiveRequests": num_active,
            "numQueuedRequests": len(self._waiting),
            "numCompletedRequests": num_completed,
            "maxNumActiveRequests": self.max_batch_size,
            "maxBatchSizeStatic": self.max_batch_size,
            "maxBatchSizeTunerRecommended": 0,
            "maxBatchSizeRuntime": self.max_batch_size,
            "maxNumTokensStatic": self.max_num_tokens,
            "maxNumTokensTunerRecommended": 0,
            "maxNumTokensRuntime": self.max_num_tokens,
            "gpuMemUsage": 0,
            "cpuMemUsage": 0,
            "pinnedMemUsage": 0,
            "kvCacheStats": self.pool.stats(),
            "staticBatchingStats": {"numScheduledRequests": 0, "numContextRequests": 0, "numCtxTokens": 0,
                                    "numGenTokens": 0, "emptyGenSlots": 0},
            "inflightBatchingStats": {"numScheduledRequests": ctx_reqs + gen_reqs, "numContextRequests": ctx_reqs,
                                      "numGenRequests": gen_reqs, "numPausedRequests": paused,
                                      "numCtxTokens": ctx_tokens, "microBatchId": 0,
                                      "avgNumDecodedTokensPerIter": 0.0},
            "specDecodingStats": None,
        }
        if self.req_stats_enabled:
            stats["requestStats"] = ([self._request_stats(r, "GENERATION_IN_PROGRESS") for r in self._active]
                                     + [self._request_stats(r, "QUEUED") for r in self._waiting]
                                     + [self._request_stats(r, "GENERATION_COMPLETE") for r in finished])
        return stats

    def _request_stats(self, req: _Req, stage: str) -> dict:
        lookups = req.reused_blocks + req.missed_blocks
        disagg = req.request_type in ("context_only", "generation_only")
        return {
            "id": req.req_id,
            "stage": stage,
            "contextPrefillPosition": len(req.prompt) if req.context_done else 0,
            "numGeneratedTokens": len(req.generated),
            "avgNumDecodedTokensPerIter": 1.0 if req.generated else 0.0,
            "scheduled": stage == "GENERATION_IN_PROGRESS",
            "paused": False,
            "disServingStats": {"kvCacheTransferMS": 0.0, "kvCacheSize": 0} if disagg else None,
            "allocTotalBlocksPerRequest": req.reused_blocks + req.new_blocks,
            "allocNewBlocksPerRequest": req.new_blocks,
            "reusedBlocksPerRequest": req.reused_blocks,
            "missedBlocksPerRequest": req.missed_blocks,
            "kvCacheHitRatePerRequest": (req.reused_blocks / lookups) if lookups else 0.0,
        }


class DoubleExecutor(GenerationExecutor):
    """The executor behind ``LLM._executor`` in the double (real: GenerationExecutorProxy + PyExecutor)."""

    def __init__(self, args: "TorchLlmArgs", model: ModelInfo, tokenizer: Any = None) -> None:
        super().__init__(is_llm_executor=True)
        self._sink_lock = threading.Lock()
        kv = args.kv_cache_config
        self._pending_kv_events: deque[str] = deque(maxlen=max(kv.event_buffer_max_size, 1))
        self._engine = _Engine(args, model, self, tokenizer)

    def submit(self, request: GenerationRequest) -> GenerationResult:
        request.set_id(self._get_next_client_id())
        result = GenerationResult(request, background_error_handler=self._handle_background_error, executor=self,
                                  disaggregated_params=request.disaggregated_params)
        self._engine.add(request, result.queue)
        return result

    def abort_request(self, request_id: int) -> None:
        self._engine.abort(request_id)

    def shutdown(self) -> None:
        if self.doing_shutdown:
            return
        self.doing_shutdown = True
        self._engine.stop()

    def _maybe_initialize_iteration_results(self) -> None:
        with self._sink_lock:
            super()._maybe_initialize_iteration_results()
            events = self._iter_kv_events_result
            if events is not None:
                while self._pending_kv_events:
                    events.queue.put(self._pending_kv_events.popleft())

    # -- sinks for the engine thread -----------------------------------------------------------------------
    def _put_stats(self, item: str) -> None:
        with self._sink_lock:
            stats = self._iter_stats_result
            if stats is not None:
                stats.queue.put(item)

    def _put_kv_event(self, item: str) -> None:
        with self._sink_lock:
            events = self._iter_kv_events_result
            if events is None:
                self._pending_kv_events.append(item)  # buffered like the C++ event buffer
            else:
                events.queue.put(item)
