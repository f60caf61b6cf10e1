"""The frontend's OpenAPI 3.1 description, served at GET /openapi.json.

Written by hand to say what the app really does (schemas.py validates by hand, not from models):
the request fields it reads, every status it answers with, and the error shape of every failure.
tests/fuzz/test_schemathesis.py runs schemathesis against a live frontend with it.
"""

from __future__ import annotations

from typing import Any

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "integer", "null"]}}}},
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_ERRORS = {
    "400": _error("the request is invalid; `param` names the field"),
    "401": _error("missing or wrong API key (with --api-key)"),
    "404": _error("no such model"),
    "413": _error("the body is larger than --max-body-bytes"),
    "429": _error("every worker of the model is at --max-inflight-per-worker (Retry-After)"),
    "499": _error("the client went away (recorded in metrics; a client never reads it)"),
    "500": _error("an internal error"),
    "502": _error("the worker failed and the request could not be migrated"),
    "503": _error("no live worker, or the frontend is at --max-inflight (Retry-After)"),
    "504": _error("the worker sent nothing for --request-progress-timeout"),
}

_STOP = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]}
_SAMPLING: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "min_tokens": {"type": ["integer", "null"], "minimum": 0},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": ["integer", "null"], "minimum": -1},
    "min_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "seed": {"type": ["integer", "null"]},
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2},
    "repetition_penalty": {"type": ["number", "null"], "exclusiveMinimum": 0},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
    "stop": _STOP,
    "stop_token_ids": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0}},
    "ignore_eos": {"type": ["boolean", "null"]},
    "logit_bias": {"type": ["object", "null"], "additionalProperties": {"type": "number", "minimum": -100,
                                                                         "maximum": 100}},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {"type": ["object", "null"], "properties": {
        "include_usage": {"type": "boolean"}, "continuous_usage_stats": {"type": "boolean"}}},
    "response_format": {"type": ["object", "null"], "properties": {
        "type": {"enum": ["text", "json_object", "json_schema"]}, "json_schema": {"type": "object"}}},
    "structured_outputs": {"type": ["object", "null"]},
}
_CHAT = {
    "type": "object", "required": ["model", "messages"],
    "properties": {
        **_SAMPLING,
        "messages": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["role"],
            "properties": {"role": {"enum": ["system", "user", "assistant", "tool", "developer"]},
                           "content": {"oneOf": [{"type": "string"}, {"type": "null"}, {"type": "array", "items": {
                               "type": "object", "required": ["type", "text"],
                               "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]},
                           "name": {"type": "string"}, "tool_call_id": {"type": "string"},
                           "tool_calls": {"type": "array", "items": {"type": "object"}}}}},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "logprobs": {"type": ["boolean", "null"]},
        "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "tools": {"type": ["array", "null"], "items": {"type": "object"}},
        "tool_choice": {"oneOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}, {"type": "null"}]},
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "chat_template_kwargs": {"type": ["object", "null"]},
    },
}
_COMPLETION = {
    "type": "object", "required": ["model", "prompt"],
    "properties": {
        **_SAMPLING,
        "prompt": {"oneOf": [{"type": "string", "minLength": 1},
                             {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}]},
        "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
        "echo": {"type": ["boolean", "null"]},
        "best_of": {"type": ["integer", "null"], "minimum": 1, "maximum": 20},
        "suffix": {"type": ["string", "null"]},
    },
}
_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
          "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                         "total_tokens": {"type": "integer"}}}
_GENERATED = {
    "type": "object", "required": ["id", "object", "created", "model", "choices"],
    "properties": {"id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
                   "model": {"type": "string"},
                   "choices": {"type": "array", "items": {"type": "object", "required": ["index", "finish_reason"]}},
                   "usage": _USAGE},
}
# One server-sent event's data: a chunk, or the error that ends a stream that had started (the
# stream's last event is the literal [DONE]).
_CHUNK = {"type": "object", "anyOf": [{"required": ["id", "object", "created", "model", "choices"]},
                                      {"required": ["error"]}],
          "properties": {"choices": {"type": "array", "items": {"type": "object", "required": ["index"]}},
                         "usage": {"anyOf": [_USAGE, {"type": "null"}]}, "error": _ERROR["properties"]["error"]}}  # type: ignore[index]
# One server-sent event as a client reads it (the event model OpenAPI 3.2 and schemathesis validate
# against a text/event-stream schema): its data is a JSON chunk, or [DONE] to end the stream.
_CHUNK_EVENT = {"type": "object", "required": ["data"],
                "properties": {"event": {"const": "message"},
                               "data": {"anyOf": [{"const": "[DONE]"},
                                                  {"type": "string", "contentMediaType": "application/json",
                                                   "contentSchema": {"$ref": "#/components/schemas/Chunk"}}]}}}
_MODEL = {"type": "object", "required": ["id", "object"],
          "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                         "max_model_len": {"type": "integer"}}}


def _generate(summary: str, body: str) -> dict[str, Any]:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}},
        "responses": {"200": {"description": "the answer (JSON), or its chunks as server-sent events with stream: true",
                              "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Generated"}},
                                          "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChunkEvent"}}}},
                      **_ERRORS}}}


def _json_get(summary: str, schema: dict[str, Any], errors: tuple[str, ...] = ("401",)) -> dict[str, Any]:
    return {"get": {"summary": summary,
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
                                  **{code: _ERRORS[code] for code in errors}}}}


def _json_post(summary: str, body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    return {"post": {"summary": summary,
                     "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
                     "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": answer}}},
                                   **{code: _ERRORS[code] for code in ("400", "401", "404", "413", "500", "503")}}}}


def openapi_document() -> dict[str, Any]:
    health = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dynamo frontend", "version": "1",
                 "description": "OpenAI-compatible serving over the workers of a Dynamo namespace."},
        "paths": {
            "/v1/chat/completions": _generate("Chat completion", "ChatCompletionRequest"),
            "/v1/completions": _generate("Text completion", "CompletionRequest"),
            "/v1/models": _json_get("Models that can be served now", {
                "type": "object", "required": ["object", "data"],
                "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}}}),
            "/v1/models/{model}": {"get": {
                "summary": "One model",
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _MODEL}}},
                              **{code: _ERRORS[code] for code in ("401", "404", "503")}}}},
            "/tokenize": _json_post("Token ids of a prompt or of chat messages", {
                "type": "object", "required": ["model"],
                "properties": {"model": {"type": "string"}, "prompt": {"type": "string"},
                               "messages": _CHAT["properties"]["messages"],  # type: ignore[index]
                               "add_special_tokens": {"type": "boolean"}, "return_token_strs": {"type": "boolean"}}},
                {"type": "object", "required": ["count", "max_model_len", "tokens"],
                 "properties": {"count": {"type": "integer"}, "max_model_len": {"type": "integer"},
                                "tokens": {"type": "array", "items": {"type": "integer"}},
                                "token_strs": {"type": ["array", "null"], "items": {"type": "string"}}}}),
            "/detokenize": _json_post("Text of token ids", {
                "type": "object", "required": ["model", "tokens"],
                "properties": {"model": {"type": "string"},
                               "tokens": {"type": "array", "items": {"type": "integer", "minimum": 0}}}},
                {"type": "object", "required": ["prompt"], "properties": {"prompt": {"type": "string"}}}),
            "/health": {"get": {"summary": "Whether a model can be served", "responses": {
                "200": {"description": "serving", "content": {"application/json": {"schema": health}}},
                "503": {"description": "nothing to serve yet", "content": {"application/json": {"schema": health}}}}}},
            "/live": _json_get("The process is up", health, ()),
        },
        "components": {"schemas": {"Error": _ERROR, "ChatCompletionRequest": _CHAT,
                                   "CompletionRequest": _COMPLETION, "Generated": _GENERATED,
                                   "Chunk": _CHUNK, "ChunkEvent": _CHUNK_EVENT}},
    }
