"""A chat choice's text -> OpenAI's message fields: reasoning, content and tool calls.

Runs after detokenization and stop strings, only for requests that need it (a reasoning parser is
configured, or tools were given): the plain path never builds one.

- reasoning: the model's `<think>` part goes to `reasoning_content` (and vLLM's `reasoning`).
- tool_choice "auto": a tool-call parser finds calls in the content.
- tool_choice "required" / a named function: the engine was constrained to the calls' JSON, so the
  whole output is the calls (required: an array of {name, parameters}; named: the arguments).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

from .parsers import (
    ReasoningParser,
    ToolCall,
    ToolCallDelta,
    ToolParser,
    get_reasoning_parser,
    get_tool_parser,
)
from .parsers.tool_calls import make_tool_call_id
from .schema_tools import ToolRequest


@dataclass
class MessageDelta:
    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.reasoning or self.tool_calls)

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.reasoning:
            out["reasoning_content"] = out["reasoning"] = self.reasoning
        if self.content:
            out["content"] = self.content
        if self.tool_calls:
            out["tool_calls"] = [d.to_openai() for d in self.tool_calls]
        return out


class ChatParsing:
    """Per chat choice. `feed` while streaming, `finish` at the end; `message` for a whole output."""

    def __init__(self, tools: ToolRequest | None, tool_parser: str | None,
                 reasoning_parser: str | None, template_kwargs: dict[str, Any] | None = None) -> None:
        # the template's variables (qwen3's enable_thinking) decide whether there is reasoning at all
        self._reasoning: ReasoningParser | None = (
            get_reasoning_parser(reasoning_parser, template_kwargs) if reasoning_parser else None)
        self._mode = tools.choice if tools is not None else "none"
        self._named = tools.named if tools is not None else None
        self._tools: ToolParser | None = None
        if self._mode == "auto" and tool_parser:
            self._tools = get_tool_parser(tool_parser, tools.tools if tools else [])
        self._constrained: list[str] = []  # required / named: the output's JSON, parsed at the end
        self._named_started = False
        self.called = False  # whether any tool call came out (finish_reason "tool_calls")

    def feed(self, text: str) -> MessageDelta:
        out = MessageDelta()
        if self._reasoning is not None:
            out.reasoning, text = self._reasoning.feed(text)
        self._content(text, out)
        return out

    def finish(self) -> MessageDelta:
        out = MessageDelta()
        text = ""
        if self._reasoning is not None:
            out.reasoning, text = self._reasoning.finish()
        self._content(text, out)
        if self._tools is not None:
            content, calls = self._tools.finish()
            out.content += content
            out.tool_calls.extend(calls)
            self.called = self.called or bool(calls)
        elif self._mode == "required":
            out.tool_calls.extend(_required_deltas("".join(self._constrained)))
            self.called = bool(out.tool_calls)
        return out

    def _content(self, text: str, out: MessageDelta) -> None:
        if not text:
            return
        if self._tools is not None:
            content, calls = self._tools.feed(text)
            out.content += content
            out.tool_calls.extend(calls)
            self.called = self.called or bool(calls)
        elif self._mode == "required":
            self._constrained.append(text)
        elif self._mode == "named":
            # The output is the named function's arguments: stream them as they come, like vLLM.
            assert self._named is not None
            if not self._named_started:
                self._named_started = True
                out.tool_calls.append(ToolCallDelta(index=0, id=make_tool_call_id(), name=self._named,
                                                    arguments=text))
            else:
                out.tool_calls.append(ToolCallDelta(index=0, arguments=text))
        else:
            out.content += text

    def message(self, text: str) -> dict[str, Any]:
        """The whole output as a non-streaming `message` (role set by the caller)."""
        reasoning: str | None = None
        content: str | None = text
        if self._reasoning is not None:
            reasoning, content = self._reasoning.parse(text)
        calls: list[ToolCall] = []
        if self._tools is not None:
            content, calls = self._tools.parse(content or "")
        elif self._mode == "required":
            calls = [_call(d) for d in _required_deltas(content or "")]
            content = None
        elif self._mode == "named":
            assert self._named is not None
            calls = [ToolCall(id=make_tool_call_id(), name=self._named, arguments=content or "")]
            content = None
        self.called = bool(calls) and self._mode != "named"
        message: dict[str, Any] = {"content": content}
        if reasoning is not None:
            message["reasoning_content"] = message["reasoning"] = reasoning
        if calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in calls]
        return message

    def finish_reason(self, engine_reason: str) -> str:
        """OpenAI's: "tool_calls" when the model called tools (not for a forced named function,
        where OpenAI answers "stop"); a length cut stays "length"."""
        return "tool_calls" if self.called and engine_reason != "length" else engine_reason


def _complete_items(text: str) -> list[Any]:
    """The items of a JSON array that are complete, also when the array was cut short (length)."""
    try:
        whole = orjson.loads(text)
        return whole if isinstance(whole, list) else []
    except orjson.JSONDecodeError:
        pass
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = text.find("[") + 1
    while pos:
        while pos < len(text) and text[pos] in " \t\n\r,":
            pos += 1
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        items.append(item)
    return items


def _required_deltas(text: str) -> list[ToolCallDelta]:
    """The engine-constrained array of {name, parameters} as complete tool-call deltas (the
    complete ones when a length limit cut the array, as vLLM's streaming does)."""
    calls = _complete_items(text)
    # json.dumps with ensure_ascii=False writes arguments as vLLM's server does
    return [ToolCallDelta(index=i, id=make_tool_call_id(), name=c["name"],
                          arguments=json.dumps(c.get("parameters", {}), ensure_ascii=False))
            for i, c in enumerate(calls) if isinstance(c, dict) and isinstance(c.get("name"), str)]


def _call(delta: ToolCallDelta) -> ToolCall:
    assert delta.id is not None and delta.name is not None
    return ToolCall(id=delta.id, name=delta.name, arguments=delta.arguments)
