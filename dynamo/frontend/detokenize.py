"""Incremental detokenization: token ids in, new text out, O(1) work per token.

`DecodeStream` (tokenizers >= 0.21) keeps a small window of ids and emits text once it is valid
UTF-8. Where it is missing (old tokenizers, slow tokenizers), a prefix-offset decoder does the same
with windowed `decode` calls. Both hold back incomplete characters; `flush()` emits what is left
at the end of the stream (replacement characters included), so the concatenated output equals a
full `decode` of all ids.
"""

from __future__ import annotations

from typing import Any, Protocol

try:
    from tokenizers.decoders import DecodeStream
except ImportError:  # tokenizers < 0.21
    DecodeStream = None  # type: ignore[assignment,misc]


class Detokenizer(Protocol):
    def step(self, token_id: int) -> str: ...
    def step_many(self, token_ids: list[int]) -> str: ...
    def flush(self) -> str: ...


class StreamDetokenizer:
    """Uses tokenizers' DecodeStream; tracks the undecoded tail only for `flush`."""

    __slots__ = ("_fast", "_hf", "_stream", "_skip", "_context", "_pending")

    def __init__(self, fast: Any, hf: Any, skip_special_tokens: bool = True) -> None:
        self._fast = fast
        self._hf = hf
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._context: list[int] = []  # ids of the last emitted text (decoding context for flush)
        self._pending: list[int] = []  # ids since the last emitted text

    def step(self, token_id: int) -> str:
        text = self._stream.step(self._fast, token_id)
        if text is None:
            self._pending.append(token_id)
            return ""
        if self._pending:
            self._pending.append(token_id)
            self._context, self._pending = self._pending, []
        else:
            self._context = [token_id]
        return text

    def step_many(self, token_ids: list[int]) -> str:
        text = self._stream.step(self._fast, token_ids)
        if text is None:
            self._pending.extend(token_ids)
            return ""
        self._context = self._pending + token_ids if self._pending else token_ids
        self._pending = []
        return text

    def flush(self) -> str:
        if not self._pending:
            return ""
        context, pending = self._context, self._pending
        self._pending = []
        prefix = self._hf.decode(context, skip_special_tokens=self._skip)
        full = self._hf.decode(context + pending, skip_special_tokens=self._skip)
        return full[len(prefix):]


class PrefixOffsetDetokenizer:
    """Fallback: decode a sliding window [prefix_offset:] and emit what grew past read_offset."""

    __slots__ = ("_hf", "_skip", "_ids", "_prefix_offset", "_read_offset", "_prefix_text")

    def __init__(self, hf: Any, skip_special_tokens: bool = True) -> None:
        self._hf = hf
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._prefix_text = ""

    def _advance(self, final: bool) -> str:
        window = self._hf.decode(self._ids[self._prefix_offset:], skip_special_tokens=self._skip)
        if len(window) <= len(self._prefix_text) or (window.endswith("\ufffd") and not final):
            return ""
        new = window[len(self._prefix_text):]
        # The next window starts at the tokens just emitted: enough context for spacing rules.
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        self._prefix_text = self._hf.decode(self._ids[self._prefix_offset:],
                                            skip_special_tokens=self._skip)
        return new

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._advance(final=False)

    def step_many(self, token_ids: list[int]) -> str:
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        if self._read_offset == len(self._ids):
            return ""
        return self._advance(final=True)


def make_detokenizer(tokenizer: Any, skip_special_tokens: bool = True) -> Detokenizer:
    """`tokenizer` is a ModelTokenizer (fast: tokenizers.Tokenizer or None; hf: transformers)."""
    if DecodeStream is not None and tokenizer.fast is not None:
        return StreamDetokenizer(tokenizer.fast, tokenizer.hf, skip_special_tokens)
    return PrefixOffsetDetokenizer(tokenizer.hf, skip_special_tokens)
