"""Tool-call parsing for the OpenAI frontend: common types, the streaming base class, the registry.

A parser turns a model's raw output into OpenAI `tool_calls` plus the remaining `content`, in two
ways that must agree: `parse()` on the whole output, and `feed()`/`finish()` over the output in
pieces of any size. Each format module implements two things:

- `_parse(text)`: the non-streaming result, following vLLM's parser of the same name;
- `_advance(text)`: the streaming step, which returns only content and calls that are already
  certain to be part of `_parse()`'s result for every possible continuation of the text.

`finish()` then runs `_parse()` on the whole output and emits whatever the stream had not yet
emitted, so the concatenation of a stream always equals the non-streaming result.
"""

from __future__ import annotations

import importlib
import secrets
from dataclasses import dataclass
from typing import Any

TOOL_PARSERS: tuple[str, ...] = ("hermes", "llama3_json", "mistral", "pythonic")

# parser name -> (module in this package, class); imported on first use
_REGISTRY: dict[str, tuple[str, str]] = {
    "hermes": ("hermes", "HermesToolParser"),
    "llama3_json": ("llama3_json", "Llama3JsonToolParser"),
    "mistral": ("mistral", "MistralToolParser"),
    "pythonic": ("pythonic", "PythonicToolParser"),
}

RawCall = tuple[str, str]  # (name, arguments JSON text): a call before it is given an id


def make_tool_call_id() -> str:
    """An OpenAI-style tool call id: "call_" and 24 random hex characters."""
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    """A complete tool call."""

    id: str
    name: str
    arguments: str  # JSON text of the arguments (json.dumps(obj, ensure_ascii=False), as vLLM does)


@dataclass
class ToolCallDelta:
    """One streamed piece of a tool call: an entry of OpenAI's `choices[].delta.tool_calls`."""

    index: int
    id: str | None = None  # only on the first delta of a call
    name: str | None = None  # only on the first delta of a call
    arguments: str = ""  # a fragment of the arguments JSON text

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {}
        if self.name is not None:
            function["name"] = self.name
        function["arguments"] = self.arguments
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        out["function"] = function
        return out


def partial_suffix(text: str, *tags: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `tags`.

    That much text must be held back: the next piece may complete it into a tag.
    """
    best = 0
    for tag in tags:
        for k in range(min(len(tag) - 1, len(text)), best, -1):
            if text.endswith(tag[:k]):
                best = k
                break
    return best


class ToolParser:
    """Base class: one instance per request choice. Subclasses define `_advance` and `_parse`."""

    name: str = ""

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        self.tools: list[dict[str, Any]] = list(tools or [])  # the request's tools (OpenAI format)
        self._chunks: list[str] = []  # the whole output, joined once at finish()
        self._content_sent = 0  # characters of content emitted so far
        self._calls: list[ToolCall] = []  # calls emitted so far, in index order
        self._finished = False

    # -- public interface ------------------------------------------------------------------

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        """New generated text -> (content to emit now, tool-call deltas)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return "", []
        self._chunks.append(text)
        content, calls = self._advance(text)
        self._content_sent += len(content)
        return content, self._deltas(calls)

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        """End of generation: emit what was held back, so the stream adds up to `parse()`."""
        if self._finished:
            return "", []
        self._finished = True
        content, calls = self._parse("".join(self._chunks))
        rest = (content or "")[self._content_sent :]
        self._content_sent += len(rest)
        return rest, self._deltas(calls[len(self._calls) :])

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """Non-streaming: the whole output -> (content or None, calls)."""
        content, calls = self._parse(text)
        return content, [ToolCall(make_tool_call_id(), name, args) for name, args in calls]

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls emitted so far while streaming."""
        return list(self._calls)

    # -- for subclasses ----------------------------------------------------------------------

    def _advance(self, text: str) -> tuple[str, list[RawCall]]:
        """Streaming step: (content certain to begin the final content's unsent part,
        calls certain to be the next calls of the final result)."""
        raise NotImplementedError

    def _parse(self, text: str) -> tuple[str | None, list[RawCall]]:
        raise NotImplementedError

    def _deltas(self, calls: list[RawCall]) -> list[ToolCallDelta]:
        # Each call is emitted whole, in one delta, once it is certain: simple, and the
        # arguments text is exactly parse()'s.
        deltas = []
        for name, arguments in calls:
            call = ToolCall(make_tool_call_id(), name, arguments)
            deltas.append(ToolCallDelta(index=len(self._calls), id=call.id, name=name, arguments=arguments))
            self._calls.append(call)
        return deltas


def get_tool_parser(name: str, tools: list[dict[str, Any]] | None = None) -> ToolParser:
    """A new parser of the named format for one request; ValueError for an unknown name."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown tool call parser {name!r}; known parsers: {', '.join(TOOL_PARSERS)}")
    module = importlib.import_module(f"{__package__}.{entry[0]}")
    parser: ToolParser = getattr(module, entry[1])(tools)
    return parser


class DecidedAtStartParser(ToolParser):
    """For formats whose output is either all calls or all content, told apart from how it begins:
    the text is held while undecided, then passed through as content, or kept for finish()."""

    def __init__(self, tools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(tools)
        self._held = ""  # the output so far, while undecided
        self._mode: str | None = None  # None (undecided), "content" or "calls" (held to the end)

    def _decide(self, held: str) -> str | None:
        """"content", "calls", or None while `held` (the output so far) could still be either."""
        raise NotImplementedError

    def _advance(self, text: str) -> tuple[str, list[RawCall]]:
        if self._mode == "content":
            return text, []
        if self._mode == "calls":
            return "", []
        self._held += text
        self._mode = self._decide(self._held)
        out = self._held if self._mode == "content" else ""
        if self._mode is not None:
            self._held = ""
        return out, []
