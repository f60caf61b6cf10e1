"""Translate our generate protocol to `sglang.Engine.async_generate`'s arguments and its streamed
chunks back. Nothing else.

A chunk (incremental streaming, skip_tokenizer_init) is `{"output_ids": [new ids], "meta_info":
{"finish_reason": None | {"type": ..., ...}, "prompt_tokens", "completion_tokens", "cached_tokens",
"output_token_logprobs": [(logprob, id, text)], "output_top_logprobs": [[(logprob, id, text)]]}}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dynamo.llm.protocol import (
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    StructuredKind,
    StructuredOutput,
    TokenLogprob,
)

ENGINE_NAME = "sglang"

# What SGLang's own OpenAI server sends for response_format {"type": "json_object"}
# (sglang/srt/entrypoints/openai/serving_completions.py): any JSON object.
ANY_JSON_OBJECT_SCHEMA = '{"type": "object"}'


def choice_regex(choices: Sequence[str]) -> str:
    """A regex matching exactly one of `choices` (SGLang has no choice constraint of its own)."""
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def structured_params_for(so: StructuredOutput) -> dict[str, str]:
    """SGLang's one grammar key (json_schema, regex or ebnf) for our constraint."""
    kind = so.kind
    if kind is StructuredKind.JSON_SCHEMA:
        return {"json_schema": so.value}
    if kind is StructuredKind.JSON_OBJECT:
        return {"json_schema": ANY_JSON_OBJECT_SCHEMA}
    if kind is StructuredKind.REGEX:
        return {"regex": so.value}
    if kind is StructuredKind.CHOICE:
        return {"regex": choice_regex(json.loads(so.value))}  # validated: a JSON array of strings
    if kind is StructuredKind.GRAMMAR:
        return {"ebnf": so.value}
    raise InvalidRequest(f"the SGLang worker cannot honour a structured_output of kind {kind.value!r}")


def sampling_params_for(request: GenerateRequest) -> dict[str, Any]:
    """SGLang's sampling_params dict. Its own checks run on the stream's first step (ValueError)."""
    s, stop = request.sampling, request.stop
    if stop.min_tokens:
        # SGLang applies min_new_tokens through its tokenizer's EOS ids, and a worker that streams
        # token ids runs it without one (skip_tokenizer_init): it would refuse the request anyway.
        raise InvalidRequest("min_tokens is not supported by the SGLang worker (SGLang honours it only with "
                             "its own tokenizer, which a token-in/token-out worker does not load)")
    params: dict[str, Any] = {
        # our None means greedy; SGLang takes temperature < 1e-6 as greedy
        "temperature": s.temperature or 0.0,
        # an explicit None means "until EOS or the context"; a missing key would mean 128
        "max_new_tokens": stop.max_tokens,
        "ignore_eos": stop.ignore_eos,
    }
    if stop.stop_token_ids:
        params["stop_token_ids"] = list(stop.stop_token_ids)
    if s.top_k is not None and s.top_k > 0:  # ours: -1 or 0 = off
        params["top_k"] = s.top_k
    for name in ("top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(s, name)
        if value is not None:
            params[name] = value
    if s.seed is not None:
        params["sampling_seed"] = s.seed  # honoured with --enable-deterministic-inference (not on CPU)
    if s.logit_bias:
        params["logit_bias"] = {str(t): b for t, b in s.logit_bias.items()}  # SGLang's keys are strings
    if request.structured_output is not None:
        params.update(structured_params_for(request.structured_output))
    return params


def finish_reason_of(reason: Mapping[str, Any] | None, stop_token_ids: Sequence[int]) -> FinishReason | None:
    """SGLang's meta_info.finish_reason as ours. "stop" matched on a token is EOS unless that token
    is one of the request's stop tokens; an abort without a status is a cancellation."""
    if reason is None:
        return None
    kind = reason.get("type")
    if kind == "length":
        return FinishReason.LENGTH
    if kind == "stop":
        matched = reason.get("matched")
        return FinishReason.STOP if isinstance(matched, int) and matched in stop_token_ids else FinishReason.EOS
    if kind == "abort":
        return FinishReason.CANCELLED if reason.get("status_code") is None else FinishReason.ERROR
    return FinishReason.ERROR


def abort_message(reason: Mapping[str, Any]) -> str:
    return str(reason.get("message") or reason.get("err_type") or "aborted by SGLang")


def logprobs_of(meta: Mapping[str, Any], token_ids: Sequence[int], num_top: int) -> list[TokenLogprob]:
    """The chunk's per-token logprobs ((logprob, id, text) tuples, already sliced to its tokens)."""
    chosen = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    result: list[TokenLogprob] = []
    for i, token_id in enumerate(token_ids):
        logprob = float(chosen[i][0]) if i < len(chosen) and chosen[i][0] is not None else float("nan")
        top = [(int(t[1]), float(t[0])) for t in (tops[i] if i < len(tops) and tops[i] else [])][:num_top]
        result.append(TokenLogprob(token_id=token_id, logprob=logprob, top=top))
    return result
