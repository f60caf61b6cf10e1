"""Validate OpenAI request bodies by hand: one pass, no per-request model classes.

Every problem becomes an HTTP 400 naming the field (`param`) and what is wrong with it. Fields we do
not know are ignored (clients send vendor extensions); fields we know but cannot honour are refused,
so a client never silently gets something other than what it asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dynamo.llm.protocol import SamplingOptions, StructuredOutput

from .errors import invalid
from .schema_fields import bool_field, int_field, num_field, type_name
from .schema_structured import parse_structured_output
from .schema_tools import ToolRequest, history_tool_calls, parse_tools

MAX_STOP_STRINGS = 4
MAX_STOP_TOKEN_IDS = 256
MAX_LOGPROBS = 20
MAX_N = 128  # OpenAI's limit on choices per request
MAX_BEST_OF = 20
MAX_LOGIT_BIAS = 1024
# The widths of the protocol's fields (dynamo/llm/proto/worker.proto): a number past them is the
# client's error, said as such, not a server error when the message is built.
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass
class ParsedRequest:
    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict[str, Any]] | None = None  # chat: [{"role", "content": str}, ...]
    prompt_text: str | None = None  # completion, text prompt
    prompt_ids: list[int] | None = None  # completion, token-id prompt
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"  # the field the client used, for error messages
    min_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    logprobs: int | None = None  # None: none; N: the chosen token's plus the top N
    skip_special_tokens: bool = True
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: usage on every chunk
    n: int = 1  # choices to return
    best_of: int = 1  # completions: candidates generated, the n most likely returned
    echo: bool = False  # completions: the prompt's text precedes each choice's text
    structured_output: StructuredOutput | None = None
    tools: ToolRequest | None = None
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)


def model_of(body: dict[str, Any]) -> str:
    if "model" not in body or body["model"] is None:
        raise invalid("'model' is required: name the model to use (GET /v1/models lists them)",
                      "model")
    model = body["model"]
    if not isinstance(model, str) or not model:
        raise invalid(f"'model' must be a non-empty string, got {type_name(model)} {model!r}",
                      "model")
    return model


def _stop(body: dict[str, Any]) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid("'stop' must be a string or an array of strings", "stop")
    if len(value) > MAX_STOP_STRINGS:
        raise invalid(f"'stop' takes at most {MAX_STOP_STRINGS} strings, got {len(value)}", "stop")
    if any(not s for s in value):
        raise invalid("'stop' strings must not be empty", "stop")
    return value


def _stop_token_ids(body: dict[str, Any]) -> list[int]:
    value = body.get("stop_token_ids")
    if value is None:
        return []
    if not isinstance(value, list) or not all(type(t) is int and 0 <= t <= UINT32_MAX for t in value):
        raise invalid(f"'stop_token_ids' must be an array of token ids (integers 0..{UINT32_MAX})",
                      "stop_token_ids")
    if len(value) > MAX_STOP_TOKEN_IDS:
        raise invalid(f"'stop_token_ids' takes at most {MAX_STOP_TOKEN_IDS} ids, got {len(value)}",
                      "stop_token_ids")
    return value


def _logit_bias(body: dict[str, Any]) -> dict[int, float] | None:
    value = body.get("logit_bias")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("'logit_bias' must be an object mapping token ids to biases in [-100, 100]",
                      "logit_bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise invalid(f"'logit_bias' takes at most {MAX_LOGIT_BIAS} entries, got {len(value)}", "logit_bias")
    bias: dict[int, float] = {}
    for key, weight in value.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) <= UINT32_MAX):
            raise invalid(f"'logit_bias' keys must be token ids, got {key!r}", "logit_bias")
        if type(weight) not in (int, float) or not -100 <= weight <= 100:
            raise invalid(f"'logit_bias[{key}]' must be a number in [-100, 100], got {weight!r}",
                          "logit_bias")
        bias[int(key)] = float(weight)
    return bias or None


def _choices(body: dict[str, Any], req: ParsedRequest) -> None:
    req.n = int_field(body, "n", lo=1, hi=MAX_N) or 1
    if req.kind == "completion":
        best_of = int_field(body, "best_of", lo=1, hi=MAX_BEST_OF)
        req.best_of = best_of if best_of is not None else req.n
        if req.best_of < req.n:  # OpenAI: best_of must be greater than or equal to n
            raise invalid(f"'best_of' ({req.best_of}) must be >= 'n' ({req.n})", "best_of")
        if req.best_of > req.n and req.stream:  # OpenAI: best_of results cannot be streamed
            raise invalid("'best_of' > 'n' cannot be streamed: the best choices are known only at the end",
                          "best_of")
        req.echo = bool_field(body, "echo")
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise invalid("'suffix' must be a string", "suffix")
        if suffix:  # only OpenAI's insert-capable models take one; like vLLM, none of ours are
            raise invalid("'suffix' is not supported: the served models cannot insert text", "suffix")


def _common(body: dict[str, Any], req: ParsedRequest) -> None:
    _common_fields(body, req)
    _choices(body, req)
    req.structured_output = parse_structured_output(body)
    req.sampling.logit_bias = _logit_bias(body)


def _common_fields(body: dict[str, Any], req: ParsedRequest) -> None:
    max_tokens = int_field(body, "max_tokens", lo=1, hi=UINT32_MAX)
    max_completion = int_field(body, "max_completion_tokens", lo=1, hi=UINT32_MAX) if req.kind == "chat" else None
    req.max_tokens = max_completion if max_completion is not None else max_tokens
    if max_completion is not None:
        req.max_tokens_param = "max_completion_tokens"
    req.min_tokens = int_field(body, "min_tokens", lo=0, hi=UINT32_MAX)
    if req.min_tokens is not None and req.max_tokens is not None and req.min_tokens > req.max_tokens:
        raise invalid(f"'min_tokens' ({req.min_tokens}) must not exceed max_tokens "
                      f"({req.max_tokens})", "min_tokens")
    req.stop = _stop(body)
    req.stop_token_ids = _stop_token_ids(body)
    req.ignore_eos = bool_field(body, "ignore_eos")
    req.skip_special_tokens = bool_field(body, "skip_special_tokens", default=True)
    req.sampling = SamplingOptions(
        temperature=num_field(body, "temperature", 0.0, 2.0),
        top_p=num_field(body, "top_p", 0.0, 1.0, lo_open=True),
        top_k=int_field(body, "top_k", lo=-1, hi=INT32_MAX),
        min_p=num_field(body, "min_p", 0.0, 1.0),
        seed=int_field(body, "seed", lo=-(2**63), hi=2**63 - 1),
        presence_penalty=num_field(body, "presence_penalty", -2.0, 2.0),
        frequency_penalty=num_field(body, "frequency_penalty", -2.0, 2.0),
        repetition_penalty=num_field(body, "repetition_penalty", 0.0, lo_open=True),
    )
    req.stream = bool_field(body, "stream")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("'stream_options' must be an object", "stream_options")
        if not req.stream:
            raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
        req.include_usage = bool_field(options, "include_usage")
        req.continuous_usage = bool_field(options, "continuous_usage_stats")


def _content(message: dict[str, Any], index: int) -> str:
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        if message.get("role") == "assistant":
            return ""  # an assistant turn may carry no text
        raise invalid(f"'{param}' is required for role {message.get('role')!r}", param)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type_name(part)
                raise invalid(f"'{param}[{j}]' must be a {{\"type\": \"text\", \"text\": ...}} part; "
                              f"this server accepts text only, got {kind!r}", f"{param}[{j}]")
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid(f"'{param}[{j}].text' must be a string", f"{param}[{j}].text")
            texts.append(text)
        return "".join(texts)
    raise invalid(f"'{param}' must be a string or an array of text parts, got "
                  f"{type_name(content)}", param)


def messages_of(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise invalid("'messages' is required: a non-empty array of {role, content}", "messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array of {role, content}", "messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"'messages[{i}]' must be an object with 'role' and 'content'",
                          f"messages[{i}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in CHAT_ROLES:
            raise invalid(f"'messages[{i}].role' must be one of {sorted(CHAT_ROLES)}, got {role!r}",
                          f"messages[{i}].role")
        normalized: dict[str, Any] = {"role": role, "content": _content(message, i)}
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                normalized[key] = message[key]
        calls = history_tool_calls(message, i)
        if calls is not None:
            normalized["tool_calls"] = calls
        if role == "tool" and "tool_call_id" not in normalized:
            raise invalid(f"'messages[{i}].tool_call_id' is required for role 'tool': the id of the call "
                          "it answers", f"messages[{i}].tool_call_id")
        out.append(normalized)
    return out


def _is_token_list(value: Any) -> bool:
    # set(map(type, ...)) runs in C: a 2k-id prompt is checked in a fraction of a Python loop's time
    return isinstance(value, list) and bool(value) and set(map(type, value)) == {int}


def _prompt(body: dict[str, Any], req: ParsedRequest) -> None:
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid("'prompt' is required: a string or an array of token ids", "prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise invalid(f"only one prompt per request is supported, got {len(prompt)}", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise invalid("'prompt' must not be empty", "prompt")
        req.prompt_text = prompt
    elif _is_token_list(prompt):
        if min(prompt) < 0:
            raise invalid("'prompt' token ids must be non-negative", "prompt")
        req.prompt_ids = list(prompt)
    else:
        raise invalid("'prompt' must be a non-empty string or a non-empty array of token ids",
                      "prompt")


def parse_chat(body: Any) -> ParsedRequest:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    req = ParsedRequest(kind="chat", model=model_of(body))
    req.messages = messages_of(body)
    _common(body, req)
    req.tools = parse_tools(body)
    if req.tools is not None and req.tools.choice in ("required", "named"):
        if req.structured_output is not None:
            raise invalid("'tool_choice' required or a named function cannot be combined with a "
                          "structured-output constraint (response_format / structured_outputs)", "tool_choice")
        req.structured_output = req.tools.constraint()
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None:
        if not isinstance(kwargs, dict):
            raise invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        req.chat_template_kwargs = kwargs
    if bool_field(body, "logprobs"):
        top = int_field(body, "top_logprobs", lo=0, hi=MAX_LOGPROBS)
        req.logprobs = top or 0
    elif body.get("top_logprobs") is not None:
        int_field(body, "top_logprobs", lo=0, hi=MAX_LOGPROBS)
        raise invalid("'top_logprobs' requires 'logprobs': true", "top_logprobs")
    return req


def parse_completion(body: Any) -> ParsedRequest:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    req = ParsedRequest(kind="completion", model=model_of(body))
    _prompt(body, req)
    _common(body, req)
    req.logprobs = int_field(body, "logprobs", lo=0, hi=MAX_LOGPROBS)
    if req.echo and req.logprobs is not None:
        raise invalid("'echo' with 'logprobs' would need the prompt's logprobs, which this server does "
                      "not compute; drop one of them", "echo")
    return req
