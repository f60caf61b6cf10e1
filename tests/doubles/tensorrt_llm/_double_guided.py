"""The test double's simulation of guided decoding -- NOT a mirror of any TensorRT-LLM module.

The real PyTorch executor builds a GuidedDecoder (xgrammar or llguidance) when the LLM has a
``guided_decoding_backend`` and masks the logits of each step to what the guide allows; without a
backend it builds none and a request's ``guided_decoding`` has no effect. The double has no logits:
with a backend (and a tokenizer, which the real backends need as well) it emits the token ids of one
text that satisfies the guide, then the model's EOS at every later position (the only token a
completed guide allows). The text is chosen by the request's sampling key and prompt:

- ``json_object``: ``{}``;
- ``json`` (a schema as JSON text, a dict or a pydantic model): a minimal instance of the schema
  (``dynamo.mocker.structured.minimal_instance``, the project's mocker's builder);
- ``regex``: a short match (``regex_witness``; an alternation picks its branch by the key, so a
  choice-style regex varies with the seed);
- ``grammar`` / ``structural_tag``: not simulated; the request is refused with ValueError at
  submission (the real engine would honour them).
"""

from __future__ import annotations

import json
import re
from typing import Any

try:  # re._parser is sre_parse's home since Python 3.11
    import re._parser as sre_parse  # type: ignore[import-not-found]
    from re import _constants as sre_constants  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

_MAX_REPEAT_WITNESS = 64  # a regex demanding more repetitions than this is refused


def guided_text(guide: Any, pick: int) -> str:
    """One text that satisfies `guide` (a GuidedDecodingParams); `pick` chooses among alternatives."""
    if guide.json_object:
        return "{}"
    if guide.json is not None:
        schema = guide.json
        if hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        elif isinstance(schema, str):
            schema = json.loads(schema)
        from dynamo.mocker.structured import minimal_instance

        return json.dumps(minimal_instance(schema, schema))
    if guide.regex is not None:
        return regex_witness(guide.regex, pick)
    kind = "grammar" if guide.grammar is not None else "structural_tag"
    raise ValueError(f"the TensorRT-LLM test double does not simulate {kind} guides (json, json_object and "
                     "regex only)")


def regex_witness(pattern: str, pick: int) -> str:
    """A short string that `pattern` fully matches (fewest repetitions; the branch of an alternation
    by `pick`). Raises ValueError for constructs it cannot satisfy (backreferences, lookarounds)."""
    text = _witness(sre_parse.parse(pattern), pick)
    if re.fullmatch(pattern, text) is None:  # e.g. anchors or classes that exclude what was picked
        raise ValueError(f"the TensorRT-LLM test double found no match for the regex guide {pattern!r}")
    return text


def _witness(parsed: Any, pick: int) -> str:
    out: list[str] = []
    for op, arg in parsed:
        out.append(_one(op, arg, pick))
    return "".join(out)


def _one(op: Any, arg: Any, pick: int) -> str:
    c = sre_constants
    if op is c.LITERAL:
        return chr(arg)
    if op is c.NOT_LITERAL:
        return "a" if arg != ord("a") else "b"
    if op is c.ANY:
        return "a"
    if op is c.IN:
        return _in_class(arg)
    if op is c.BRANCH:
        branches = arg[1]
        return _witness(branches[pick % len(branches)], pick)
    if op is c.SUBPATTERN:
        return _witness(arg[-1], pick)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
        low, _, body = arg
        if low > _MAX_REPEAT_WITNESS:
            raise ValueError(f"the TensorRT-LLM test double does not simulate {low} repetitions")
        return "".join(_witness(body, pick) for _ in range(low))
    if op is c.AT:
        return ""
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _witness(arg, pick)
    raise ValueError(f"the TensorRT-LLM test double cannot build a match for regex construct {op}")


def _in_class(items: list[tuple[Any, Any]]) -> str:
    """A character of a [...] class (a negated class: a letter it does not exclude)."""
    c = sre_constants
    if items and items[0][0] is c.NEGATE:
        excluded = re.compile("[" + "".join(re.escape(chr(a)) for op, a in items[1:] if op is c.LITERAL) + "]"
                              if any(op is c.LITERAL for op, _ in items[1:]) else "(?!)")
        return next(ch for ch in "abcxyz0123456789" if not excluded.match(ch))
    for op, arg in items:
        if op is c.LITERAL:
            return chr(arg)
        if op is c.RANGE:
            return chr(arg[0])
        if op is c.CATEGORY:
            return {c.CATEGORY_DIGIT: "0", c.CATEGORY_SPACE: " ", c.CATEGORY_WORD: "a"}.get(arg, "a")
    return "a"
