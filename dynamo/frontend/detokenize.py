"""Incremental detokenization: token ids in, new text out, O(1) work per token.

tokenizers' `DecodeStream` (>= 0.22 takes one id or a list of ids per step) keeps a small window of
ids and emits text once it is valid UTF-8. It holds back incomplete characters; `flush()` emits
what is left at the end of the stream (replacement characters included), so the concatenated
output equals a full `decode` of all ids.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream


class Detokenizer:
    """One request's detokenizer; tracks the undecoded tail only for `flush`."""

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


def make_detokenizer(tokenizer: Any, skip_special_tokens: bool = True) -> Detokenizer:
    """`tokenizer` is a ModelTokenizer (fast: tokenizers.Tokenizer; hf: transformers)."""
    return Detokenizer(tokenizer.fast, tokenizer.hf, skip_special_tokens)
