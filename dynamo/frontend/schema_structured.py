"""Structured-output requests -> one `StructuredOutput` constraint for the engine.

Accepted spellings: OpenAI's `response_format` (`text`, `json_object`, `json_schema`), vLLM's
`structured_outputs` object (`json`, `regex`, `choice`, `grammar`, `json_object`) and its older
`guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` extras. A request may carry one
constraint; two are refused rather than one silently winning.
"""

from __future__ import annotations

from typing import Any

import orjson

from dynamo.llm.protocol import StructuredKind, StructuredOutput

from .errors import invalid
from .schema_fields import type_name

_GUIDED = {"guided_json": StructuredKind.JSON_SCHEMA, "guided_regex": StructuredKind.REGEX,
           "guided_choice": StructuredKind.CHOICE, "guided_grammar": StructuredKind.GRAMMAR}
_STRUCTURED = {"json": StructuredKind.JSON_SCHEMA, "regex": StructuredKind.REGEX,
               "choice": StructuredKind.CHOICE, "grammar": StructuredKind.GRAMMAR}


def json_schema_constraint(schema: Any, param: str) -> StructuredOutput:
    if isinstance(schema, str):  # vLLM takes a schema as JSON text too
        try:
            schema = orjson.loads(schema)
        except orjson.JSONDecodeError as exc:
            raise invalid(f"'{param}' is not valid JSON: {exc}", param) from None
    if not isinstance(schema, dict):
        raise invalid(f"'{param}' must be a JSON schema object, got {type_name(schema)}", param)
    return StructuredOutput(StructuredKind.JSON_SCHEMA, orjson.dumps(schema).decode())


def _value(kind: StructuredKind, value: Any, param: str) -> StructuredOutput:
    if kind is StructuredKind.JSON_SCHEMA:
        return json_schema_constraint(value, param)
    if kind is StructuredKind.CHOICE:
        if not (isinstance(value, list) and value and all(isinstance(c, str) for c in value)):
            raise invalid(f"'{param}' must be a non-empty array of strings", param)
        return StructuredOutput(kind, orjson.dumps(value).decode())
    if not isinstance(value, str) or not value:
        raise invalid(f"'{param}' must be a non-empty string", param)
    return StructuredOutput(kind, value)


def _response_format(fmt: Any) -> StructuredOutput | None:
    if not isinstance(fmt, dict):
        raise invalid("'response_format' must be an object with a 'type'", "response_format")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutput(StructuredKind.JSON_OBJECT)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise invalid("'response_format.json_schema' is required for type json_schema: "
                          "{\"name\": ..., \"schema\": {...}}", "response_format.json_schema")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("'response_format.json_schema.name' must be a non-empty string",
                          "response_format.json_schema.name")
        schema = spec.get("schema")
        if schema is None:  # OpenAI: a schema-less json_schema format is any JSON object
            return StructuredOutput(StructuredKind.JSON_OBJECT)
        return json_schema_constraint(schema, "response_format.json_schema.schema")
    raise invalid(f"'response_format.type' must be one of 'text', 'json_object', 'json_schema'; got "
                  f"{kind!r}", "response_format.type")


def parse_structured_output(body: dict[str, Any]) -> StructuredOutput | None:
    found: list[tuple[str, StructuredOutput | None]] = []
    if body.get("response_format") is not None:
        found.append(("response_format", _response_format(body["response_format"])))
    for name, kind in _GUIDED.items():
        if body.get(name) is not None:
            found.append((name, _value(kind, body[name], name)))
    spec = body.get("structured_outputs")
    if spec is not None:
        if not isinstance(spec, dict):
            raise invalid("'structured_outputs' must be an object", "structured_outputs")
        for name, kind in _STRUCTURED.items():
            if spec.get(name) is not None:
                found.append((f"structured_outputs.{name}", _value(kind, spec[name],
                                                                   f"structured_outputs.{name}")))
        if spec.get("json_object") is True:
            found.append(("structured_outputs.json_object", StructuredOutput(StructuredKind.JSON_OBJECT)))
    constraints = [(name, c) for name, c in found if c is not None]
    if len(constraints) > 1:
        names = ", ".join(f"'{name}'" for name, _ in constraints)
        raise invalid(f"a request takes one structured-output constraint; got {names}", constraints[1][0])
    return constraints[0][1] if constraints else None
