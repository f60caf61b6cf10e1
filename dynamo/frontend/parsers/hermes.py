"""Hermes-style tool calls (Hermes 2 Pro, Qwen2.5/Qwen3):

    optional text<tool_call>
    {"name": "f", "arguments": {...}}
    </tool_call><tool_call>...</tool_call>

Follows vLLM's `hermes` parser (non-streaming `extract_tool_calls`):
- no `<tool_call>` at all: the whole output is content;
- otherwise every block is decoded; the content is the text before the first `<tool_call>`
  (None if empty), and text between or after blocks is dropped;
- a last `<tool_call>` without `</tool_call>` runs to the end of the output;
- malformed input (a block that is not a JSON object with a string "name" and an "arguments"
  key, or an empty block) makes vLLM give up on the whole output: no calls, and the entire
  output, markers included, is the content.

Because one bad block anywhere voids every call, a stream cannot commit a call before the end;
it streams the content before the first `<tool_call>` and emits the calls at `finish()`.
"""

from __future__ import annotations

import json
import re

from dynamo.frontend.parsers.tool_calls import RawCall, ToolParser, partial_suffix

START = "<tool_call>"
# a closed block, or an unclosed one running to the end (the same two alternatives vLLM matches)
_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)", re.DOTALL)


def decode_call(body: str | None) -> RawCall | None:
    """One block's JSON -> (name, arguments JSON text), or None if it is not a valid call."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or "arguments" not in obj:
        return None
    return obj["name"], json.dumps(obj["arguments"], ensure_ascii=False)


class HermesToolParser(ToolParser):
    name = "hermes"

    def __init__(self, tools: list[dict] | None = None) -> None:
        super().__init__(tools)
        self._held = ""  # unsent text that may be the start of `<tool_call>`
        self._in_calls = False  # a `<tool_call>` has been seen: the rest waits for finish()

    def _advance(self, text: str) -> tuple[str, list[RawCall]]:
        if self._in_calls:
            return "", []
        buf = self._held + text
        start = buf.find(START)
        if start >= 0:
            self._in_calls, self._held = True, ""
            return buf[:start], []
        keep = partial_suffix(buf, START)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep], []

    def _parse(self, text: str) -> tuple[str | None, list[RawCall]]:
        first = text.find(START)
        if first < 0:
            return text, []
        calls = []
        for match in _BLOCK.finditer(text):
            call = decode_call(match.group(1) or match.group(2))
            if call is None:
                return text, []
            calls.append(call)
        return text[:first] or None, calls
