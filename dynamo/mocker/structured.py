"""Structured output in the mocker: the deterministic text it emits for a constraint.

The mocker has no logits to mask, so it honours a constraint the other way round: it builds one
value that satisfies it and emits that value's token ids (then EOS). Routing and frontend tests can
then send constrained requests to mocker workers and check what comes back.

- choice: one of the choices, picked by the request's seed (so a prefill and its decode agree);
- json_object: "{}";
- json_schema: a minimal instance of the schema (`minimal_instance`);
- regex, grammar: refused; the mocker has no generator for them.
"""

from __future__ import annotations

import json
import math
from typing import Any

from dynamo.llm.protocol import InvalidRequest, StructuredKind, StructuredOutput

_MAX_DEPTH = 32  # a schema whose required part recurses deeper than this has no finite instance here


class _Unsupported(InvalidRequest):
    """A schema keyword the mocker cannot satisfy."""


def constrained_text(so: StructuredOutput, pick: int) -> str:
    """The text the mocker emits for `so` (`pick`: the request's seed, to choose among choices)."""
    if so.kind is StructuredKind.CHOICE:
        choices = json.loads(so.value)  # validated: a non-empty JSON array of strings
        return str(choices[pick % len(choices)])
    if so.kind is StructuredKind.JSON_OBJECT:
        return "{}"
    if so.kind is StructuredKind.JSON_SCHEMA:
        schema = json.loads(so.value)
        try:
            return json.dumps(minimal_instance(schema, schema))
        except InvalidRequest:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
            # a keyword of the wrong type ("minLength": "x", "properties": []): the schema's fault
            raise InvalidRequest(f"the json_schema is malformed ({type(e).__name__}: {e})") from None
    raise InvalidRequest(f"the mocker cannot honour a {so.kind.value} constraint (it emits a value it builds "
                         "itself: json_schema, json_object and choice only)")


def minimal_instance(schema: Any, root: Any, depth: int = 0) -> Any:
    """A small value valid under JSON schema `schema` (`root`: the document its "#/..." refs point into).

    Required properties only, empty or minimal-length strings and arrays, numbers at 0 or the nearest
    bound, the first enum value or the const, the first branch of anyOf / oneOf. Keywords it cannot
    satisfy by construction (a string "pattern", "not") are refused, never ignored.
    """
    if depth > _MAX_DEPTH:
        raise _Unsupported("the json_schema's required part recurses without end; the mocker cannot build "
                           "an instance of it")
    if schema is True or schema == {}:
        return {}
    if schema is False:
        raise _Unsupported("the json_schema is `false`: no value satisfies it")
    if not isinstance(schema, dict):
        raise _Unsupported(f"the json_schema has a non-schema value {schema!r}")
    if "not" in schema:
        raise _Unsupported("the mocker cannot build an instance of a json_schema that uses 'not'")
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        if not schema["enum"]:
            raise _Unsupported("the json_schema has an empty enum: no value satisfies it")
        return schema["enum"][0]
    if "$ref" in schema:
        return minimal_instance(_resolve(schema["$ref"], root), root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], root, depth + 1)
    if schema.get("allOf"):
        merged = _merge_all_of(schema, root)
        return minimal_instance(merged, root, depth + 1)
    return _typed_instance(schema, _type_of(schema), root, depth)


def _type_of(schema: dict[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):  # e.g. ["string", "null"]: the first non-null type
        declared = next((t for t in declared if t != "null"), declared[0] if declared else None)
    if declared:
        return str(declared)
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "object"  # unconstrained: an object is what a caller of a JSON schema most likely expects


def _typed_instance(schema: dict[str, Any], kind: str, root: Any, depth: int) -> Any:
    if kind == "object":
        return _object_instance(schema, root, depth)
    if kind == "array":
        return _array_instance(schema, root, depth)
    if kind == "string":
        if "pattern" in schema:
            raise _Unsupported("the mocker cannot build a string for a json_schema 'pattern'")
        return "a" * int(schema.get("minLength", 0))
    if kind in ("integer", "number"):
        return _number_instance(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    raise _Unsupported(f"the json_schema has an unknown type {kind!r}")


def _object_instance(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    properties: dict[str, Any] = schema.get("properties") or {}
    names = list(schema.get("required") or [])
    extra = [n for n in properties if n not in names]
    names += extra[:max(0, int(schema.get("minProperties", 0)) - len(names))]
    return {name: minimal_instance(properties.get(name, {}), root, depth + 1) for name in names}


def _array_instance(schema: dict[str, Any], root: Any, depth: int) -> list[Any]:
    prefix = list(schema.get("prefixItems") or [])
    count = max(int(schema.get("minItems", 0)), len(prefix) if schema.get("minItems") else 0)
    items = schema.get("items", {})
    out = [minimal_instance(prefix[i] if i < len(prefix) else items, root, depth + 1) for i in range(count)]
    if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in out}) < len(out):
        raise _Unsupported("the mocker cannot build distinct items for a json_schema with uniqueItems")
    return out


def _number_instance(schema: dict[str, Any], *, integer: bool) -> int | float:
    """0, or the bound nearest to it (exclusive bounds as numbers, or draft-4 booleans)."""
    low, low_excl = _bound(schema, "minimum", "exclusiveMinimum")
    high, high_excl = _bound(schema, "maximum", "exclusiveMaximum")
    step = schema.get("multipleOf") or (1 if integer else None)
    value: float = 0
    if low is not None and (value < low or (low_excl and value <= low)):
        value = _above(low, low_excl, step, high)
    elif high is not None and (value > high or (high_excl and value >= high)):
        value = -_above(-high, high_excl, step, None if low is None else -low)
    if integer and not float(value).is_integer():
        raise _Unsupported("the mocker cannot find an integer multiple of the json_schema's multipleOf")
    if ((low is not None and (value < low or (low_excl and value <= low)))
            or (high is not None and (value > high or (high_excl and value >= high)))):
        raise _Unsupported("the mocker cannot find a number within the json_schema's bounds")
    return int(value) if integer or float(value).is_integer() else value


def _above(bound: float, exclusive: bool, step: float | None, other: float | None) -> float:
    """The smallest value >= `bound` (> when exclusive) on the `step` grid (any real when None)."""
    if step is None:
        if not exclusive:
            return bound
        return (bound + other) / 2 if other is not None else bound + 1
    value = math.ceil(bound / step) * step
    return value + step if exclusive and value <= bound else value


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float | None, bool]:
    """(the bound, whether it is exclusive) of one side of a number schema."""
    excl = schema.get(exclusive)
    if isinstance(excl, bool):  # draft 4: a flag on the inclusive keyword
        return schema.get(inclusive), excl
    if excl is not None:
        return excl, True
    return schema.get(inclusive), False


def _resolve(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        raise _Unsupported(f"the mocker resolves only local json_schema refs ('#/...'), not {ref!r}")
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _Unsupported(f"the json_schema ref {ref!r} points nowhere")
    return node


def _merge_all_of(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """allOf's branches and the schema's own keys as one schema (properties and required united)."""
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    for branch in schema["allOf"]:
        part = _resolve(branch["$ref"], root) if isinstance(branch, dict) and "$ref" in branch else branch
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = list(dict.fromkeys([*merged.get("required", []), *value]))
            else:
                merged.setdefault(key, value)
    return merged
