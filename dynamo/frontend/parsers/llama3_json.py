"""Llama 3.x JSON tool calls (`llama3_json`):

    <|python_tag|>{"name": "f", "parameters": {...}}; {"name": "g", "arguments": {...}}

Follows vLLM's `llama3_json` parser, with one deliberate difference. vLLM's non-streaming parser
looks for a JSON object at every `{` anywhere in the output and, if it finds calls, drops all
other text (content None); its streaming parser only treats the output as tool calls when it
starts with `<|python_tag|>` or `{`. A stream cannot take back text it has already sent, so here
both modes use the streaming rule: the output is a tool call output only when it starts (after
whitespace) with `<|python_tag|>` or `{`; otherwise all of it is content.

In a tool call output, as in vLLM:
- every `{` not inside an object decoded before it starts a JSON object (vLLM also skips a `{`
  right after the previous object's closing brace; kept, so results match);
- each object needs a string "name" and "arguments" (or else "parameters"); text around and
  between the objects (`;`, the python tag) is dropped and the content is None;
- malformed input (invalid JSON at any `{`, a missing key) gives no calls, and the whole output
  is the content.

A stream holds the whole output back once it is known to be a tool call output (any later `{`
may still void the calls) and emits everything at `finish()`.
"""

from __future__ import annotations

import json

from dynamo.frontend.parsers.tool_calls import DecidedAtStartParser, RawCall

PYTHON_TAG = "<|python_tag|>"
_DECODER = json.JSONDecoder()


def _is_call_output(head: str) -> bool:
    return head.startswith("{") or head.startswith(PYTHON_TAG)


class Llama3JsonToolParser(DecidedAtStartParser):
    name = "llama3_json"

    def _decide(self, held: str) -> str | None:
        head = held.lstrip()
        if _is_call_output(head):
            return "calls"
        if not head or PYTHON_TAG.startswith(head):
            return None  # leading whitespace or a partial python tag
        return "content"

    def _parse(self, text: str) -> tuple[str | None, list[RawCall]]:
        if not _is_call_output(text.lstrip()):
            return text, []
        calls: list[RawCall] = []
        start = text.find("{")
        while start >= 0:
            try:
                obj, end = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):
                return text, []
            name = obj.get("name")
            key = "arguments" if "arguments" in obj else "parameters"
            if not isinstance(name, str) or key not in obj:
                return text, []
            calls.append((name, json.dumps(obj[key], ensure_ascii=False)))
            # skip the braces inside this object, and (like vLLM) one right after it
            start = text.find("{", end + 1)
        if not calls:
            return text, []
        return None, calls
