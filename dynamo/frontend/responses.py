"""OpenAI response bodies and SSE chunks for chat and text completions.

Streaming chunks are assembled from bytes prebuilt once per request, so a chunk costs one
`orjson.dumps` of its text (plus its logprobs when asked for).
"""

from __future__ import annotations

from typing import Any

import orjson

from dynamo.llm.protocol import TokenLogprob

from .postprocess import Delta
from .tokenizer import ModelTokenizer

DONE = b"data: [DONE]\n\n"


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


class LogprobFormatter:
    """OpenAI's two logprob shapes: chat's `content` list and completions' parallel arrays."""

    def __init__(self, tokenizer: ModelTokenizer, chat: bool, top: int) -> None:
        self._tok = tokenizer
        self._chat = chat
        self._top = top
        self._text_offset = 0  # completions: where the next token starts in the generated text

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self._tok.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def format(self, logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if logprobs is None:
            return None
        if self._chat:
            content = []
            for lp in logprobs:
                entry = self._entry(lp.token_id, lp.logprob)
                entry["top_logprobs"] = [self._entry(t, p) for t, p in lp.top[:self._top]]
                content.append(entry)
            return {"content": content}
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for lp in logprobs:
            text = self._tok.token_text(lp.token_id)
            tokens.append(text)
            token_logprobs.append(lp.logprob)
            top = {self._tok.token_text(t): p for t, p in lp.top[:self._top]}
            top.setdefault(text, lp.logprob)
            tops.append(top)
            offsets.append(self._text_offset)
            self._text_offset += len(text)
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops,
                "text_offset": offsets}

    @staticmethod
    def merge(chat: bool, parts: list[dict[str, Any]]) -> dict[str, Any]:
        """Join per-output logprobs into the one object of a non-streaming response."""
        if chat:
            return {"content": [e for p in parts for e in p["content"]]}
        return {key: [v for p in parts for v in p[key]]
                for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


class ChunkWriter:
    """Per streaming choice: bytes for each SSE event of that choice."""

    def __init__(self, *, chat: bool, request_id: str, model: str, created: int,
                 include_usage: bool, logprobs: LogprobFormatter | None, index: int = 0) -> None:
        self.chat = chat
        self._logprobs = logprobs
        head = (b'data: {"id":' + orjson.dumps(request_id) + b',"object":'
                + (b'"chat.completion.chunk"' if chat else b'"text_completion"')
                + b',"created":' + str(created).encode() + b',"model":' + orjson.dumps(model)
                + b',"choices":[{"index":' + str(index).encode() + b',')
        self._head = head
        self._text_open = head + (b'"delta":{"content":' if chat else b'"text":')
        self._text_close = b'},"logprobs":' if chat else b',"logprobs":'
        self._tail_usage = b',"usage":null}\n\n' if include_usage else b'}\n\n'
        self._usage_head = head[:head.index(b'"choices":[')] + b'"choices":[],"usage":'

    def _tail(self, usage: bytes | None) -> bytes:
        return self._tail_usage if usage is None else b',"usage":' + usage + b'}\n\n'

    def role(self, usage: bytes | None = None) -> bytes:
        """Chat's first event: the assistant role with empty content."""
        return (self._head + b'"delta":{"role":"assistant","content":""},"logprobs":null,'
                b'"finish_reason":null}]' + self._tail(usage))

    def _logprob_bytes(self, logprobs: list[TokenLogprob] | None) -> bytes:
        return (b"null" if self._logprobs is None or logprobs is None
                else orjson.dumps(self._logprobs.format(logprobs)))

    @staticmethod
    def _finish(reason: str | None) -> bytes:
        return b',"finish_reason":null}]' if reason is None else b',"finish_reason":"' + reason.encode() + b'"}]'

    def delta(self, delta: Delta, usage: bytes | None = None) -> bytes:
        logprobs = self._logprob_bytes(delta.logprobs)
        finish = self._finish(delta.finish_reason)
        if self.chat and not delta.text:
            return self._head + b'"delta":{},"logprobs":' + logprobs + finish + self._tail(usage)
        return (self._text_open + orjson.dumps(delta.text) + self._text_close + logprobs + finish
                + self._tail(usage))

    def message_delta(self, fields: dict[str, Any], logprobs: list[TokenLogprob] | None,
                      finish_reason: str | None, usage: bytes | None = None) -> bytes:
        """A chat delta with more than text in it (reasoning, tool calls)."""
        return (self._head + b'"delta":' + orjson.dumps(fields) + b',"logprobs":'
                + self._logprob_bytes(logprobs) + self._finish(finish_reason) + self._tail(usage))

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> bytes:
        return self._usage_head + usage_bytes(prompt_tokens, completion_tokens, cached_tokens) + b"}\n\n"


def usage_bytes(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> bytes:
    return orjson.dumps(usage_dict(prompt_tokens, completion_tokens, cached_tokens))


def error_event(body: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def full_response(*, chat: bool, request_id: str, model: str, created: int,
                  choices: list[dict[str, Any]], usage: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": request_id, "object": "chat.completion" if chat else "text_completion",
                         "created": created, "model": model, "choices": choices, "usage": usage})
