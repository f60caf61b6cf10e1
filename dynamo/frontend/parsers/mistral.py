"""Mistral tool calls (`mistral`):

    optional text[TOOL_CALLS][{"name": "f", "arguments": {...}}, ...]      (pre-v11 tokenizers)
    optional text[TOOL_CALLS]f[ARGS]{...}[TOOL_CALLS]g{...}                (v11+ form)

Follows vLLM's `mistral` parser as it runs for a Hugging Face tokenizer without `[ARGS]` (its
"pre-v11" path, which is the one vLLM uses for non-tekken tokenizers):
- no `[TOOL_CALLS]`: the whole output is content;
- the text after the first `[TOOL_CALLS]` is cut at any further `[TOOL_CALLS]`; the first
  non-blank piece is decoded: its leading JSON value (trailing text ignored), or failing that the
  widest `[{...}]` in it; a single object counts as a one-call list; entries that are not objects
  with a "name" or "arguments" key are skipped; a missing or non-string name becomes "", missing
  or null arguments "{}", string arguments are kept as they are;
- content: the text before `[TOOL_CALLS]`, or None when it is blank.
Additions and differences, each because of streaming or to cover what vLLM covers elsewhere:
- the v11+ form (`name[ARGS]{json}` or `name{json}` after each `[TOOL_CALLS]`), which vLLM parses
  only with a v11+ tokenizer, is accepted when the pre-v11 decoding finds no call: each call's
  arguments are the raw text of its leading JSON object (trailing text dropped, as vLLM does);
- malformed input (no call found): vLLM returns the stripped text after the marker as the content
  and drops the text before it; here a non-blank text before the marker is kept in front of it,
  because a stream has already sent it. A v11+ call whose arguments are not JSON makes the output
  malformed here (vLLM would emit a call with the broken arguments text).
- vLLM also reads a marker-less JSON array when tool_choice is "required" or named; the parser
  does not see tool_choice, so that case is not covered.

A stream sends the text before the marker as it comes (holding back a blank start, which is
dropped when calls follow) and emits pre-v11 calls as soon as their JSON value is complete; the
v11+ form and malformed output are settled at `finish()`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from dynamo.frontend.parsers.tool_calls import RawCall, ToolParser, partial_suffix

MARKER = "[TOOL_CALLS]"
_DECODER = json.JSONDecoder()
_WIDEST_ARRAY = re.compile(r"\[\{.*\}\]", re.DOTALL)  # vLLM's fallback when the JSON does not start the text
_V11_HEAD = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*(?:\[ARGS\])?\s*(?=\{)")


def _leading_json(text: str) -> tuple[bool, Any]:
    try:
        return True, _DECODER.raw_decode(text)[0]
    except (ValueError, RecursionError):
        return False, None


def _calls_from_json(parsed: Any) -> list[RawCall]:
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        return []
    calls = []
    for item in parsed:
        if not isinstance(item, dict) or ("name" not in item and "arguments" not in item):
            continue
        name = item.get("name")
        args = item.get("arguments")
        if args is None:
            args = "{}"
        elif not isinstance(args, str):
            args = json.dumps(args, ensure_ascii=False)
        calls.append((name if isinstance(name, str) else "", args))
    return calls


def _pre_v11_calls(piece: str) -> list[RawCall]:
    ok, parsed = _leading_json(piece)
    if not ok:
        match = _WIDEST_ARRAY.search(piece)
        if match is not None:
            try:
                parsed = json.loads(match.group(0))
            except (ValueError, RecursionError):
                parsed = None
    return _calls_from_json(parsed)


def _v11_calls(pieces: list[str]) -> list[RawCall]:
    calls = []
    for piece in pieces:
        if not piece.strip():
            continue  # repeated markers
        head = _V11_HEAD.match(piece)
        if head is None:
            return []
        try:
            _, end = _DECODER.raw_decode(piece, head.end())
        except (ValueError, RecursionError):
            return []
        calls.append((head.group(1), piece[head.end() : end]))
    return calls


def _first_piece(pieces: list[str]) -> str:
    return next((p.strip() for p in pieces if p.strip()), "")


class MistralToolParser(ToolParser):
    name = "mistral"

    def __init__(self, tools: list[dict] | None = None) -> None:
        super().__init__(tools)
        self._held = ""  # unsent text before the marker: a blank start or a partial marker
        self._shown = False  # non-blank text before the marker has been sent
        self._after: str | None = None  # text after the first marker, once seen
        self._committed = False  # the calls have been emitted

    def _advance(self, text: str) -> tuple[str, list[RawCall]]:
        if self._after is not None:
            self._after += text
            return "", self._try_commit(text)
        buf = self._held + text
        at = buf.find(MARKER)
        if at >= 0:
            self._held, self._after = "", buf[at + len(MARKER) :]
            out = buf[:at] if self._shown or buf[:at].strip() else ""
            return out, self._try_commit(self._after)
        keep = partial_suffix(buf, MARKER)
        out = buf[: len(buf) - keep]
        if not self._shown and not out.strip():
            self._held = buf  # a blank start is dropped if calls follow
            return "", []
        self._shown, self._held = True, buf[len(buf) - keep :]
        return out, []

    def _try_commit(self, new: str) -> list[RawCall]:
        """The pre-v11 calls, once the leading JSON value of the first piece is complete.

        Such a value is final: later text only extends the piece past its end.
        """
        assert self._after is not None
        if self._committed or ("]" not in new and "}" not in new):
            return []
        piece = _first_piece(self._after.split(MARKER))
        if not piece or piece[0] not in "[{":
            return []
        ok, parsed = _leading_json(piece)
        calls = _calls_from_json(parsed) if ok else []
        self._committed = bool(calls)
        return calls

    def _parse(self, text: str) -> tuple[str | None, list[RawCall]]:
        at = text.find(MARKER)
        if at < 0:
            return text, []
        before = text[:at] if text[:at].strip() else ""
        pieces = text[at + len(MARKER) :].split(MARKER)
        first = _first_piece(pieces)
        calls = _pre_v11_calls(first) or _v11_calls(pieces)
        if calls:
            return before or None, calls
        return before + first, []
