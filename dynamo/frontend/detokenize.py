"""Incremental detokenization: token ids in, new text out, bounded work per output.

An output's ids are decoded together with the last ids already turned into text (the context), and
the context's own text is cut off the front: what is left is the new text. Decoding against a
context rather than alone keeps what depends on the neighbouring token right (a byte-level character
split over two tokens, a sentencepiece word's leading space, a WordPiece continuation). Text that ends
in an incomplete character (U+FFFD) is not emitted until the ids that complete it arrive; `flush()`
emits what is left at the end of the stream (replacement characters included), so the concatenated
output equals a full decode of all ids.

Two ways to step, by the output's size, sharing that state:
- a few ids (a token at a time: an idle frontend, a GPU engine's pace, the stop-string path):
  tokenizers' `DecodeStream`, one call into Rust per output, whose context is the previous output;
- more (under load outputs are joined and paced: tens of tokens each, dynamo/llm/stream_client.py):
  one decode of at most MAX_CONTEXT_IDS context ids plus the output, where DecodeStream decodes the
  previous output again along with it: 22-39% less time at 16-64 ids an output
  (`benchmarks/detokenize.py`). An output ending inside a character gives out its text up to the
  last whole one and holds back only the last few ids, not the whole output.
"""

from __future__ import annotations

from typing import Any

from tokenizers.decoders import DecodeStream

# Outputs of at least this many ids take the one-decode path; smaller ones DecodeStream.
WINDOW_FROM_IDS = 8
# Ids of emitted text kept as the context of the next decode (vLLM's incremental detokenizer keeps
# as many): enough for every decoder rule that looks at a neighbouring token.
CONTEXT_IDS = 5
# The ids just decoded stay the context while they are this few (their text is then already known);
# past it the context is cut back to CONTEXT_IDS, which costs one decode of those alone.
MAX_CONTEXT_IDS = 16
# Most ids one character's bytes can be split over (UTF-8: 4 bytes, a byte-level token at least one).
_MAX_CHAR_IDS = 4


class Detokenizer:
    """One request's detokenizer."""

    __slots__ = ("_fast", "_hf", "_skip", "_stream", "_context", "_context_text", "_pending")

    def __init__(self, fast: Any, hf: Any, skip_special_tokens: bool = True) -> None:
        self._fast = fast
        self._hf = hf
        self._skip = skip_special_tokens
        self._stream: DecodeStream | None = None  # None: to be rebuilt from the context when next used
        self._context: list[int] = []  # the last ids of the text emitted so far (never changed in place)
        self._context_text: str | None = ""  # their text decoded alone; None: not decoded yet
        self._pending: list[int] = []  # ids since the last emitted text (never changed in place)

    def step(self, token_id: int) -> str:
        return self._step_stream([token_id])

    def step_many(self, token_ids: list[int]) -> str:
        if len(token_ids) < WINDOW_FROM_IDS:
            return self._step_stream(token_ids)
        return self._step_window(token_ids)

    def _step_stream(self, token_ids: list[int]) -> str:
        pending = self._pending + token_ids if self._pending else token_ids
        stream, feed = self._stream, token_ids
        if stream is None:
            stream = self._stream = DecodeStream(skip_special_tokens=self._skip)
            if self._context:
                stream.step(self._fast, self._context)  # (that text is out already: this sets its prefix)
            feed = pending  # ids held back by the other path: the new stream has not seen them
        text = stream.step(self._fast, feed)
        if text is None:
            self._pending = pending
            return ""
        self._context, self._context_text, self._pending = pending, None, []
        return text

    def _step_window(self, token_ids: list[int]) -> str:
        self._stream = None  # it will not have seen these ids
        context_text = self._context_text
        if context_text is None:
            context_text = self._context_text = self._fast.decode(self._context, skip_special_tokens=self._skip)
        pending = self._pending + token_ids if self._pending else token_ids
        ids = self._context + pending
        text = self._fast.decode(ids, skip_special_tokens=self._skip)
        held: list[int] = []
        if text.endswith("\ufffd"):
            # The output ends inside a character: emit up to the last whole one, holding back the
            # last few ids (a character spans at most 4 byte-level tokens) rather than the output.
            for back in range(1, min(_MAX_CHAR_IDS, len(pending))):
                text = self._fast.decode(ids[:-back], skip_special_tokens=self._skip)
                if not text.endswith("\ufffd"):
                    ids, held = ids[:-back], pending[-back:]
                    break
        if len(text) <= len(context_text) or text.endswith("\ufffd"):
            self._pending = pending  # nothing new yet, or a character still incomplete
            return ""
        self._pending = held
        if len(ids) > MAX_CONTEXT_IDS:
            self._context, self._context_text = ids[-CONTEXT_IDS:], None
        else:
            self._context, self._context_text = ids, text
        return text[len(context_text):]

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
