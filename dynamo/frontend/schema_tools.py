"""Tool calling in a chat request: `tools`, `tool_choice`, `parallel_tool_calls`, and the history's
assistant `tool_calls` and `tool` messages.

`tool_choice` "required" and a named function are enforced by the engine through a JSON-schema
constraint (the output is then the calls' JSON, not text for a parser), as vLLM does; "auto" leaves
the model free and a tool-call parser finds the calls in its text; "none" never parses.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from dynamo.llm.protocol import StructuredOutput

from .errors import invalid
from .schema_fields import bool_field, type_name
from .schema_structured import json_schema_constraint

log = logging.getLogger(__name__)

MAX_TOOLS = 128  # OpenAI's limit
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI: a-z, A-Z, 0-9, underscores and dashes (vLLM adds dots)


@dataclass
class ToolRequest:
    tools: list[dict[str, Any]] = field(default_factory=list)  # as sent (OpenAI's function tools)
    choice: str = "none"  # "none" | "auto" | "required" | "named"
    named: str | None = None  # with choice "named": the function the output must call
    parallel: bool = True

    def parameters_of(self, name: str) -> dict[str, Any]:
        for tool in self.tools:
            if tool["function"]["name"] == name:
                params = tool["function"].get("parameters")
                # No parameters still means the arguments are an object.
                return params if params else {"type": "object", "properties": {}}
        raise KeyError(name)

    def constraint(self) -> StructuredOutput | None:
        """What the engine must enforce: a named function's arguments object, or for "required" an
        array of {name, parameters} calls (one at most without parallel tool calls)."""
        if self.choice == "named":
            assert self.named is not None
            return json_schema_constraint(self.parameters_of(self.named), "tool_choice")
        if self.choice != "required":
            return None
        defs: dict[str, Any] = {}
        alternatives = []
        for tool in self.tools:
            name = tool["function"]["name"]
            params = dict(self.parameters_of(name))
            for def_name, def_schema in (params.pop("$defs", None) or {}).items():
                if defs.setdefault(def_name, def_schema) != def_schema:
                    raise invalid(f"tools define '$defs.{def_name}' twice with different schemas", "tools")
            alternatives.append({"properties": {"name": {"type": "string", "enum": [name]},
                                                "parameters": params},
                                 "required": ["name", "parameters"]})
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": {"type": "object", "anyOf": alternatives}}
        if not self.parallel:
            schema["maxItems"] = 1
        if defs:
            schema["$defs"] = defs
        return json_schema_constraint(schema, "tool_choice")


def _tool(tool: Any, i: int) -> dict[str, Any]:
    param = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise invalid(f"'{param}' must be a {{\"type\": \"function\", \"function\": {{...}}}} object",
                      param)
    function = tool.get("function")
    if not isinstance(function, dict):
        raise invalid(f"'{param}.function' must be an object with a 'name'", f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid(f"'{param}.function.name' must be 1-64 letters, digits, '_', '-' or '.', got "
                      f"{name!r}", f"{param}.function.name")
    params = function.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise invalid(f"'{param}.function.parameters' must be a JSON schema object, got "
                      f"{type_name(params)}", f"{param}.function.parameters")
    return {"type": "function", "function": function}


def parse_tools(body: dict[str, Any]) -> ToolRequest | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if choice is not None and choice != "none":
            raise invalid("'tool_choice' is only allowed when 'tools' are given", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array of function tools", "tools")
    if len(tools) > MAX_TOOLS:
        raise invalid(f"'tools' takes at most {MAX_TOOLS} tools, got {len(tools)}", "tools")
    req = ToolRequest(tools=[_tool(t, i) for i, t in enumerate(tools)],
                      parallel=bool_field(body, "parallel_tool_calls", default=True))
    names = [t["function"]["name"] for t in req.tools]
    if len(set(names)) != len(names):
        raise invalid("'tools' names must be unique", "tools")
    if not req.tools:  # an empty list is as if none were given
        req.choice = "none"
    elif choice is None:
        req.choice = "auto"
    elif choice in ("none", "auto", "required"):
        req.choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise invalid(f"'tool_choice' names function {name!r}, which is not in 'tools' "
                          f"({', '.join(names)})", "tool_choice.function.name")
        req.choice, req.named = "named", name
    else:
        raise invalid("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", "
                      "\"function\": {\"name\": ...}}", "tool_choice")
    return req


def history_tool_calls(message: dict[str, Any], i: int) -> list[dict[str, Any]] | None:
    """An assistant message's `tool_calls`, with arguments as objects: chat templates render
    arguments as a mapping (vLLM hands them over the same way)."""
    calls = message.get("tool_calls")
    if calls is None:
        return None
    param = f"messages[{i}].tool_calls"
    if message.get("role") != "assistant" or not isinstance(calls, list):
        raise invalid(f"'{param}' is an array, on assistant messages only", param)
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"'{param}[{j}].function' must be an object with 'name' and 'arguments'",
                          f"{param}[{j}].function")
        arguments = function.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = orjson.loads(arguments) if arguments else {}
            except orjson.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict):
            # Refusing would fail every later turn of the conversation too: like vLLM, render the
            # call with empty arguments and say so.
            log.warning("%s[%d]: arguments of %r are not a JSON object; rendered as {}", param, j,
                        function["name"])
            arguments = {}
        out.append({"id": call.get("id"), "type": "function",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out
