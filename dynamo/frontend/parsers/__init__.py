"""Tool-call and reasoning parsers for the OpenAI frontend, streaming and non-streaming,
matching vLLM's parsers of the same names (see each module for where and why they differ)."""

from dynamo.frontend.parsers.reasoning import REASONING_PARSERS, ReasoningParser, get_reasoning_parser
from dynamo.frontend.parsers.tool_calls import TOOL_PARSERS, ToolCall, ToolCallDelta, ToolParser, get_tool_parser

__all__ = [
    "REASONING_PARSERS",
    "TOOL_PARSERS",
    "ReasoningParser",
    "ToolCall",
    "ToolCallDelta",
    "ToolParser",
    "get_reasoning_parser",
    "get_tool_parser",
]
