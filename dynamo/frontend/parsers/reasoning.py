"""Reasoning parsers: split `<think>...</think>` reasoning from the answer.

`parse()` returns (reasoning_content, content) for a whole output; `feed()`/`finish()` return
(reasoning delta, content delta) while streaming, and a stream adds up to `parse()` (None as ""):
text that may be the start of a tag is held back until it is known, and `finish()` emits the
rest of `parse()`'s result.

deepseek_r1 (vLLM `deepseek_r1`): the chat template usually puts `<think>` in the prompt, so the
output is `reasoning</think>content`, and without any `</think>` it is all reasoning (reasoning
"" rather than None for an empty output, content None when empty, as vLLM returns). vLLM's
non-streaming parser drops all text before the first `<think>` wherever it is, even after
`</think>`, which would take back text a stream has sent. Here only the first `<think>` before
`</think>` is removed, and the text before it is dropped only when it is blank; a `<think>`
after `</think>` is content. (For `<think>` at the start, or no `<think>`, this equals vLLM.)

qwen3 (vLLM 0.32 `qwen3`, a state machine that starts in reasoning when thinking is enabled):
in reasoning, `<think>` is dropped, `</think>` is dropped and ends the reasoning, and
`<tool_call>` ends it too but stays in the content (for the tool parser); in the content every
`</think>` is dropped. Empty reasoning or content is None. With `enable_thinking: false` in the
chat template kwargs the whole output is content (reasoning None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynamo.frontend.parsers.tool_calls import partial_suffix

REASONING_PARSERS: tuple[str, ...] = ("deepseek_r1", "qwen3")

THINK_START = "<think>"
THINK_END = "</think>"
TOOL_CALL_START = "<tool_call>"


def _first_tag(text: str, tags: tuple[str, ...]) -> tuple[int, str]:
    """Earliest occurrence of any of `tags` in `text`: (index, tag), or (-1, "")."""
    best, found = -1, ""
    for tag in tags:
        i = text.find(tag)
        if i >= 0 and (best < 0 or i < best):
            best, found = i, tag
    return best, found


class ReasoningParser:
    """Base class: one instance per request choice."""

    name: str = ""

    def __init__(self) -> None:
        self._chunks: list[str] = []  # the whole output, joined once at finish()
        self._sent = [0, 0]  # characters of reasoning and of content emitted
        self._finished = False

    def feed(self, text: str) -> tuple[str, str]:
        """New generated text -> (reasoning delta, content delta)."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        if not text:
            return "", ""
        self._chunks.append(text)
        reasoning, content = self._advance(text)
        self._sent[0] += len(reasoning)
        self._sent[1] += len(content)
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """End of generation: emit what was held back."""
        if self._finished:
            return "", ""
        self._finished = True
        reasoning, content = self.parse("".join(self._chunks))
        return (reasoning or "")[self._sent[0] :], (content or "")[self._sent[1] :]

    def parse(self, text: str) -> tuple[str | None, str | None]:
        """The whole output -> (reasoning_content, content)."""
        raise NotImplementedError

    def _advance(self, text: str) -> tuple[str, str]:
        """Streaming step: reasoning and content certain to continue what `parse()` will give."""
        raise NotImplementedError


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"

    def __init__(self) -> None:
        super().__init__()
        self._held = ""
        self._state = "before-open"  # "before-open" (no <think> yet), "reasoning" or "content"
        self._started = False  # non-blank reasoning was sent: a later <think> keeps what precedes it

    def parse(self, text: str) -> tuple[str | None, str | None]:
        end = text.find(THINK_END)
        head = text if end < 0 else text[:end]
        start = head.find(THINK_START)
        if start >= 0:
            before = head[:start]
            head = (before if before.strip() else "") + head[start + len(THINK_START) :]
        content = None if end < 0 else text[end + len(THINK_END) :] or None
        return head, content

    def _advance(self, text: str) -> tuple[str, str]:
        buf, reasoning = self._held + text, ""
        while self._state != "content":
            tags = (THINK_START, THINK_END) if self._state == "before-open" else (THINK_END,)
            at, tag = _first_tag(buf, tags)
            if at < 0:
                keep = partial_suffix(buf, *tags)
                out = buf[: len(buf) - keep]
                if self._state == "before-open" and not self._started and not out.strip():
                    self._held = buf  # blank so far: dropped if <think> follows
                    return reasoning, ""
                self._started = self._started or bool(out)
                self._held = buf[len(buf) - keep :]
                return reasoning + out, ""
            before, buf = buf[:at], buf[at + len(tag) :]
            if tag == THINK_START:
                self._state = "reasoning"
                if self._started or before.strip():
                    reasoning += before
                    self._started = True
            else:
                reasoning += before
                self._state = "content"
        self._held = ""
        return reasoning, buf


class _Qwen3Machine:
    """vLLM's qwen3 reasoning state machine over text pieces (used for streaming and parse)."""

    def __init__(self) -> None:
        self.reasoning = True  # the state: reasoning, or content
        self.held = ""

    def step(self, text: str) -> tuple[str, str]:
        buf, reasoning, content = self.held + text, "", ""
        while True:
            if self.reasoning:
                tags: tuple[str, ...] = (THINK_START, THINK_END, TOOL_CALL_START)
                at, tag = _first_tag(buf, tags)
                if at < 0:
                    break
                reasoning += buf[:at]
                if tag == TOOL_CALL_START:
                    self.reasoning, buf = False, buf[at:]  # ends reasoning, stays in the content
                else:  # both dropped; only </think> ends the reasoning
                    self.reasoning, buf = tag == THINK_START, buf[at + len(tag) :]
            else:
                tags = (THINK_END,)
                at = buf.find(THINK_END)
                if at < 0:
                    break
                content += buf[:at]
                buf = buf[at + len(THINK_END) :]
        keep = partial_suffix(buf, *tags)
        self.held = buf[len(buf) - keep :]
        if self.reasoning:
            return reasoning + buf[: len(buf) - keep], content
        return reasoning, content + buf[: len(buf) - keep]

    def flush(self) -> tuple[str, str]:
        held, self.held = self.held, ""
        return (held, "") if self.reasoning else ("", held)


class Qwen3ReasoningParser(ReasoningParser):
    name = "qwen3"

    def __init__(self, enable_thinking: bool = True) -> None:
        super().__init__()
        self._thinking = enable_thinking
        self._machine = _Qwen3Machine()

    def parse(self, text: str) -> tuple[str | None, str | None]:
        if not self._thinking:
            return None, text
        machine = _Qwen3Machine()
        r1, c1 = machine.step(text)
        r2, c2 = machine.flush()
        return (r1 + r2) or None, (c1 + c2) or None

    def _advance(self, text: str) -> tuple[str, str]:
        if not self._thinking:
            return "", text
        return self._machine.step(text)


def get_reasoning_parser(name: str, chat_template_kwargs: Mapping[str, Any] | None = None) -> ReasoningParser:
    """A new reasoning parser for one request; ValueError for an unknown name.

    `chat_template_kwargs` are the request's: qwen3 reads `enable_thinking` (default true) as vLLM does.
    """
    if name == "deepseek_r1":
        return DeepSeekR1ReasoningParser()
    if name == "qwen3":
        return Qwen3ReasoningParser(bool((chat_template_kwargs or {}).get("enable_thinking", True)))
    raise ValueError(f"unknown reasoning parser {name!r}; known parsers: {', '.join(REASONING_PARSERS)}")
