"""Pythonic tool calls (`pythonic`, Llama 3.2 / Llama 4 / ToolACE style):

    [get_weather(city="Paris", days=3), get_time()]

Follows vLLM's `pythonic` parser (non-streaming `extract_tool_calls`):
- the output must start with a call list that vLLM's pattern accepts: `[`, then `name(` with a
  name of ASCII letters then word characters, then either `)` or `keyword=`; once a keyword
  argument is seen, the pattern only needs a later `)` + optional whitespace + `]`; calls
  without arguments are followed by `,` + whitespace and another call, or whitespace and `]`
  (or another call). `_scan` decides that in one pass (the pattern itself backtracks badly);
- the whole output must then parse as Python, and its first statement be a list of calls;
  names may be dotted (`a.b`), positional arguments are ignored (as in vLLM), keyword values
  must be literals: numbers, strings, None/True/False, null/true/false, lists, tuples and sets
  (as lists), dicts with literal keys, f-strings without placeholders, signed numbers;
- then every call is returned with its keywords as a JSON object and the content is None;
- malformed input (anything else) gives no calls, and the whole output is the content.

A stream passes text through as soon as it cannot start such a list (it does not start with `[`,
or the pattern has failed); otherwise it holds the output back and settles it at `finish()`.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

from dynamo.frontend.parsers.tool_calls import DecidedAtStartParser, RawCall

_NAME = re.compile(r"[a-zA-Z]\w*")
_CALL_START = re.compile(r"[a-zA-Z]\w*\(")
_KEYWORD = re.compile(r"[a-zA-Z]\w*=")
_LIST_END = re.compile(r"\)\s*\]")
_COMMA = re.compile(r",\s*")
_SPACE = re.compile(r"\s*")

# _scan verdicts
NO = "no"  # the pattern cannot match, whatever follows
MAYBE = "maybe"  # it may match once more text comes
OPEN_ENDED = "open-ended"  # a keyword argument was reached: it can no longer fail, only wait for `)]`
YES = "yes"  # it matches


def _scan(text: str) -> str:
    """How vLLM's call-list pattern fares on `text` (matched at its start), in one pass."""
    if not text:
        return MAYBE
    if text[0] != "[":
        return NO
    pos, commas = 1, True  # commas: still in the part of the list where `),` may follow a call
    while True:
        call = _CALL_START.match(text, pos)
        if call is None:
            rest = text[pos:]
            return MAYBE if not rest or _NAME.fullmatch(rest) else NO
        pos = call.end()
        keyword = _KEYWORD.match(text, pos)
        if keyword is not None:
            return YES if _LIST_END.search(text, keyword.end()) else OPEN_ENDED
        rest = text[pos:]
        if not rest or _NAME.fullmatch(rest):
            return MAYBE
        if rest[0] != ")":
            return NO
        pos += 1
        comma = _COMMA.match(text, pos) if commas else None
        if comma is not None:
            pos = comma.end()
            continue
        space = _SPACE.match(text, pos)  # always matches, maybe empty
        pos = space.end() if space else pos
        if pos == len(text):
            return MAYBE
        if text[pos] == "]":
            return YES
        commas = False  # a call not followed by a comma: only more such calls, then `]`


class _Unsupported(Exception):
    """A call or argument that vLLM rejects: the output is then content."""


_JSON_NAMES: dict[str, Any] = {"null": None, "true": True, "false": False}


def _literal(node: ast.expr) -> Any:
    """A keyword argument's value, as vLLM accepts it."""
    if isinstance(node, ast.Constant):
        if node.value is None or isinstance(node.value, (str, int, float)):
            return node.value
        raise _Unsupported  # bytes, Ellipsis, complex: no JSON form
    if isinstance(node, ast.Dict):
        keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]  # `**x` has no key
        if len(keys) != len(node.keys):
            raise _Unsupported
        return {k: _literal(v) for k, v in zip(keys, node.values)}
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e) for e in node.elts]  # JSON has lists only
    if isinstance(node, ast.JoinedStr):  # an f-string without placeholders is a plain string
        parts = [v.value for v in node.values if isinstance(v, ast.Constant)]
        if len(parts) == len(node.values):
            return "".join(str(p) for p in parts)
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    raise _Unsupported


def _dotted_name(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise _Unsupported
    parts.append(node.id)
    return ".".join(reversed(parts))


def _call(node: ast.Call) -> RawCall:
    # keyword.arg is None for `**x`: json.dumps then writes the key as "null", as in vLLM
    args = {kw.arg: _literal(kw.value) for kw in node.keywords}
    return _dotted_name(node.func), json.dumps(args, ensure_ascii=False)


class PythonicToolParser(DecidedAtStartParser):
    name = "pythonic"

    def _decide(self, held: str) -> str | None:
        verdict = _scan(held)
        if verdict == NO:
            return "content"
        return None if verdict == MAYBE else "calls"

    def _parse(self, text: str) -> tuple[str | None, list[RawCall]]:
        if _scan(text) != YES:
            return text, []
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "\d" in a string
                module = ast.parse(text)
            value = getattr(module.body[0], "value", None)
            if not isinstance(value, ast.List) or not all(isinstance(e, ast.Call) for e in value.elts):
                return text, []
            return None, [_call(e) for e in value.elts if isinstance(e, ast.Call)]
        except Exception:  # SyntaxError, ValueError (NUL), RecursionError, _Unsupported, TypeError (json)
            return text, []
