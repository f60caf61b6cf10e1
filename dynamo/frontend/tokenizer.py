"""Per-model tokenizers: loaded once from the model card, shared by every request of that model."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from dynamo.llm.model_card import ModelCard
from dynamo.runtime.gc_heap import freeze_startup_heap

from .errors import ApiError

log = logging.getLogger(__name__)

# Past this, a prompt is tokenized in a thread of its own (with `then`, the router's hashing, after it).
_BATCH_TOKENIZE_CHARS = 16_384
_RESERVED_TEMPLATE_ARGS = frozenset({"conversation", "messages", "tools", "chat_template", "tokenize",
                                     "add_generation_prompt", "return_dict", "documents"})


def chat_chars(messages: list[dict[str, Any]]) -> int:
    """The characters of a chat's message contents (the template adds a bounded few)."""
    return sum(len(m["content"]) for m in messages)


@dataclass
class ModelTokenizer:
    """A loaded tokenizer plus what requests need from it."""

    hf: Any  # transformers PreTrainedTokenizerFast
    chat_template: str | None
    fast: Any = None  # its tokenizers.Tokenizer: encode and incremental decode without Python overhead
    vocab_size: int = 0
    max_token_chars: int = 1  # the longest token's text: a prompt of N characters has >= N / this tokens
    _token_text: dict[int, str] = field(default_factory=dict)
    _batches: BatchEncoder | None = None

    def __post_init__(self) -> None:
        self.fast = getattr(self.hf, "backend_tokenizer", None)
        if self.fast is None:
            raise ValueError(f"{type(self.hf).__name__} is a slow (pure Python) tokenizer; the frontend "
                             "needs a fast one (a tokenizer.json, or a tokenizer transformers can "
                             "convert: AutoTokenizer.from_pretrained(..., use_fast=True))")
        self.vocab_size = len(self.hf)
        self.max_token_chars = max((len(t) for t in self.fast.get_vocab(with_added_tokens=True)), default=1)

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    template_kwargs: dict[str, Any] | None = None) -> str:
        if self.chat_template is None and getattr(self.hf, "chat_template", None) is None:
            raise ApiError(400, "this model has no chat template (neither in its model card nor in "
                           "its tokenizer); use /v1/completions instead", param="messages")
        # The client's template variables (e.g. enable_thinking) must not replace what we pass.
        extra = {k: v for k, v in (template_kwargs or {}).items() if k not in _RESERVED_TEMPLATE_ARGS}
        try:
            return self.hf.apply_chat_template(messages, tools=tools or None, chat_template=self.chat_template,
                                               add_generation_prompt=True, tokenize=False, **extra)
        except Exception as exc:  # the template raised (jinja's raise_exception, a bad variable)
            raise ApiError(400, f"the model's chat template cannot render these messages: {exc}",
                           param="messages") from None

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        return self.fast.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The text of one token (for logprobs); cached, the vocabulary is small."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.hf.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text

    async def prompt_ids_for_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                                  template_kwargs: dict[str, Any] | None = None,
                                  then: Callable[[list[int]], None] | None = None) -> list[int]:
        """`then`: run on the ids of a long prompt in the thread that tokenized it."""
        if chat_chars(messages) > _BATCH_TOKENIZE_CHARS:
            def work() -> list[int]:
                return self.encode(self.render_chat(messages, tools, template_kwargs), add_special_tokens=False)
            return await asyncio.to_thread(_and_then, work, then)
        # The template already writes BOS where the model wants it.
        return await self._batched(self.render_chat(messages, tools, template_kwargs), add_special_tokens=False)

    async def prompt_ids_for_text(self, text: str, then: Callable[[list[int]], None] | None = None) -> list[int]:
        if len(text) > _BATCH_TOKENIZE_CHARS:
            return await asyncio.to_thread(_and_then, lambda: self.encode(text, add_special_tokens=True), then)
        return await self._batched(text, add_special_tokens=True)

    def _batched(self, text: str, *, add_special_tokens: bool) -> asyncio.Future[list[int]]:
        if self._batches is None:
            self._batches = BatchEncoder(self.fast)
        return self._batches.encode(text, add_special_tokens)


_Waiting = tuple[str, bool, "asyncio.Future[list[int]]"]


class BatchEncoder:
    """Tokenizes prompts in one thread of its own, all the prompts waiting at the time in one call.

    The tokenizers library holds the GIL in `encode` but releases it in its batch calls, so the
    event loop goes on serving streams while prompts are tokenized (a ~150-token prompt is ~100 us of
    Rust, ~12% of the frontend's CPU per request under load), and under load one thread hop carries
    every prompt that arrived meanwhile. At most one batch is in flight; an idle loop waits ~0.1 ms more.
    """

    def __init__(self, fast: Any) -> None:
        self._fast = fast
        self._waiting: list[_Waiting] = []
        self._busy = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    def encode(self, text: str, add_special_tokens: bool) -> asyncio.Future[list[int]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._waiting.append((text, add_special_tokens, future))
        if not self._busy:
            self._start(loop)
        return future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._busy = True
        # submit, not run_in_executor: that would wake the loop a second time per batch
        self._thread.submit(self._work, loop, batch)

    def _work(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        answered: list[tuple[asyncio.Future[list[int]], list[int] | BaseException]] = []
        for add in (False, True):
            group = [(text, future) for text, a, future in batch if a is add]
            if not group:
                continue
            texts = [text for text, _ in group]
            try:
                encodings = self._fast.encode_batch_fast(texts, add_special_tokens=add)
                ids: list[list[int] | BaseException] = [e.ids for e in encodings]
            except Exception:  # tell which prompt failed: one at a time
                ids = [_encode_or_error(self._fast, text, add) for text in texts]
            answered.extend(zip((future for _, future in group), ids))
        try:
            loop.call_soon_threadsafe(self._done, loop, answered)
        except RuntimeError:  # the loop closed meanwhile: nobody waits for these any more
            pass

    def _done(self, loop: asyncio.AbstractEventLoop,
              answered: list[tuple[asyncio.Future[list[int]], list[int] | BaseException]]) -> None:
        self._busy = False
        for future, result in answered:
            if future.done():  # its request went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        if self._waiting:
            self._start(loop)


def _encode_or_error(fast: Any, text: str, add_special_tokens: bool) -> list[int] | BaseException:
    try:
        return fast.encode(text, add_special_tokens=add_special_tokens).ids
    except Exception as exc:
        return exc


def _and_then(work: Callable[[], list[int]], then: Callable[[list[int]], None] | None) -> list[int]:
    ids = work()
    if then is not None and ids:
        then(ids)
    return ids


def _load(card: ModelCard) -> ModelTokenizer:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from the request path
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(card.tokenizer)
    return ModelTokenizer(hf=hf, chat_template=card.chat_template)


class TokenizerCache:
    """Loads each (tokenizer source, chat template) once, in a thread; concurrent callers share it."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str | None], ModelTokenizer] = {}
        self._loading: dict[tuple[str, str | None], asyncio.Future[ModelTokenizer]] = {}

    def is_loaded(self, card: ModelCard) -> bool:
        return (card.tokenizer, card.chat_template) in self._loaded

    def is_loading(self, card: ModelCard) -> bool:
        return (card.tokenizer, card.chat_template) in self._loading

    async def get(self, card: ModelCard) -> ModelTokenizer:
        key = (card.tokenizer, card.chat_template)
        tokenizer = self._loaded.get(key)
        if tokenizer is not None:
            return tokenizer
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(card, key))
            self._loading[key] = pending
        # shield: one caller going away must not cancel the load the others wait for
        return await asyncio.shield(pending)

    async def _load(self, card: ModelCard, key: tuple[str, str | None]) -> ModelTokenizer:
        try:
            tokenizer = await asyncio.to_thread(_load, card)
        except Exception as exc:
            log.error("could not load the tokenizer of model %r from %r: %s",
                      card.served_model_name, card.tokenizer, exc)
            raise ApiError(500, f"could not load the tokenizer of model {card.served_model_name!r} "
                           f"from {card.tokenizer!r}: {exc}", type="internal_error") from exc
        finally:
            self._loading.pop(key, None)  # failures are retried by the next request
        self._loaded[key] = tokenizer
        freeze_startup_heap(collect=False)  # the tokenizer lives as long as the process
        log.info("loaded tokenizer of model %r from %s (vocab %d)", card.served_model_name,
                 card.tokenizer, tokenizer.vocab_size)
        return tokenizer
