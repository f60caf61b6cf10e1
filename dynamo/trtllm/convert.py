"""Translate our generate protocol to TensorRT-LLM's LLM API types and its outputs back. Nothing else.

TensorRT-LLM's outputs are cumulative (`CompletionOutput.token_ids` holds every token so far); the
adapter sends the new ones. Its disaggregated params (`tensorrt_llm.DisaggregatedParams`) travel in
our protocol as JSON fields plus `opaque`, the raw bytes of its `opaque_state` (never pickled).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dynamo.llm.protocol import (
    DisaggregatedParams,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    StructuredKind,
    StructuredOutput,
    TokenLogprob,
)

ENGINE_NAME = "trtllm"


def choice_regex(choices: Sequence[str]) -> str:
    """A regex matching exactly one of `choices` (GuidedDecodingParams has no choice field)."""
    return "(" + "|".join(re.escape(c) for c in choices) + ")"


def guided_decoding_for(so: StructuredOutput, guided_decoding_params_cls: Any) -> Any:
    """A `tensorrt_llm.sampling_params.GuidedDecodingParams` for our constraint (one field set)."""
    kind = so.kind
    if kind is StructuredKind.JSON_SCHEMA:
        return guided_decoding_params_cls(json=so.value)  # a schema as JSON text, as trtllm-serve passes it
    if kind is StructuredKind.JSON_OBJECT:
        return guided_decoding_params_cls(json_object=True)
    if kind is StructuredKind.REGEX:
        return guided_decoding_params_cls(regex=so.value)
    if kind is StructuredKind.CHOICE:
        return guided_decoding_params_cls(regex=choice_regex(json.loads(so.value)))  # validated: strings
    if kind is StructuredKind.GRAMMAR:
        return guided_decoding_params_cls(grammar=so.value)  # EBNF, as its xgrammar / llguidance read it
    raise InvalidRequest(f"the TensorRT-LLM worker cannot honour a structured_output of kind {kind.value!r}")


def embedding_bias_for(logit_bias: Mapping[int, float], vocab_size: int) -> list[float]:
    """Our sparse logit_bias as TensorRT-LLM's dense `embedding_bias` ([vocab_size], added to the logits)."""
    bad = [t for t in logit_bias if not 0 <= t < vocab_size]
    if bad:
        raise InvalidRequest(f"logit_bias token id {bad[0]} is outside the vocabulary (valid ids are "
                             f"0..{vocab_size - 1})")
    dense = [0.0] * vocab_size
    for token_id, bias in logit_bias.items():
        dense[token_id] = float(bias)
    return dense


def sampling_params_for(request: GenerateRequest, sampling_params_cls: Any, *,
                        guided_decoding_params_cls: Any = None, embedding_bias: Any = None) -> Any:
    """A `tensorrt_llm.SamplingParams` for `request`; its ValueError/TypeError become InvalidRequest.

    `guided_decoding_params_cls` translates a structured_output (the caller checked that the engine
    has a guided decoding backend); `embedding_bias` is the request's logit_bias as the engine's
    tensor (embedding_bias_for, made a float32 tensor by the caller).
    """
    s, stop, out = request.sampling, request.stop, request.output
    kwargs: dict[str, Any] = {
        # Our None means greedy. TensorRT-LLM takes temperature 0 as greedy (its _is_greedy_decoding).
        "temperature": s.temperature or 0.0,
        "seed": s.seed,
        "max_tokens": stop.max_tokens,
        "min_tokens": stop.min_tokens,
        "stop_token_ids": list(stop.stop_token_ids) or None,
        "ignore_eos": stop.ignore_eos,
        # Our outputs end with the stop token that matched (as vLLM's); TensorRT-LLM trims a matched
        # stop word from token_ids unless asked not to (executor/result.py).
        "include_stop_str_in_output": True,
        "detokenize": False,  # the frontend detokenizes; the engine streams ids
    }
    if s.top_k is not None and s.top_k > 0:  # ours: -1 or 0 = off; TensorRT-LLM refuses negatives
        kwargs["top_k"] = s.top_k
    for name in ("top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(s, name)
        if value is not None:
            kwargs[name] = value
    if out.logprobs is not None:
        # TensorRT-LLM returns the top-N per position with the sampled token among them; we need at
        # least the sampled one.
        kwargs["logprobs"] = max(1, out.logprobs)
    if stop.max_tokens is None:
        kwargs.pop("max_tokens")  # the engine's default: up to the context
    if embedding_bias is not None:
        kwargs["embedding_bias"] = embedding_bias
    try:
        if request.structured_output is not None:
            if guided_decoding_params_cls is None:
                raise InvalidRequest("structured_output needs TensorRT-LLM's GuidedDecodingParams")
            kwargs["guided_decoding"] = guided_decoding_for(request.structured_output, guided_decoding_params_cls)
        return sampling_params_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"TensorRT-LLM rejected the sampling options: {exc}") from exc


def finish_reason_of(reason: str | None, stop_reason: int | str | None, stop_token_ids: Sequence[int],
                     context_only: bool = False) -> FinishReason | None:
    """TensorRT-LLM's CompletionOutput.finish_reason as ours.

    "stop" is EOS (the end_id) unless the matched stop_reason is one of the request's stop tokens.
    A context-only (prefill) request ends "not_finished" by design: its one token is all it owes.
    """
    if reason is None:
        return None
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "cancelled":
        return FinishReason.CANCELLED
    if reason == "not_finished":
        return FinishReason.LENGTH if context_only else None
    if reason == "stop":
        if stop_reason is not None and stop_reason in stop_token_ids:
            return FinishReason.STOP
        return FinishReason.EOS
    return FinishReason.ERROR  # "timeout", or anything newer


def logprobs_of(token_ids: Sequence[int], positions: Sequence[Any], num_top: int) -> list[TokenLogprob]:
    """TensorRT-LLM's per-token logprobs (a {token id: Logprob(logprob, rank)} dict per position, or a
    bare float on versions that return only the sampled token's) as our TokenLogprob list."""
    result: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, positions):
        if isinstance(position, Mapping):
            chosen = position.get(token_id)
            ranked = sorted(((tid, lp) for tid, lp in position.items() if getattr(lp, "rank", None)),
                            key=lambda item: item[1].rank)
            result.append(TokenLogprob(
                token_id=token_id,
                logprob=float(chosen.logprob) if chosen is not None else float("nan"),
                top=[(tid, float(lp.logprob)) for tid, lp in ranked[:num_top]]))
        else:
            result.append(TokenLogprob(token_id=token_id, logprob=float(position)))
    return result


# --- disaggregation ---------------------------------------------------------------------------

_REQUIRED_PAYLOAD: dict[str, type] = {"ctx_request_id": int, "first_gen_tokens": list}


def handoff_of(params: Any, first_token_ids: Sequence[int]) -> DisaggregatedParams:
    """A prefill's `tensorrt_llm.DisaggregatedParams` (context_only) as our protocol's."""
    opaque = params.opaque_state
    return DisaggregatedParams(
        engine=ENGINE_NAME,
        payload={"ctx_request_id": params.ctx_request_id,
                 "first_gen_tokens": list(params.first_gen_tokens or first_token_ids),
                 "draft_tokens": list(params.draft_tokens) if params.draft_tokens else None},
        first_token_ids=list(first_token_ids),
        opaque=bytes(opaque) if opaque is not None else b"")


def generation_params_for(handoff: DisaggregatedParams, disaggregated_params_cls: Any) -> Any:
    """The `generation_only` params a decode engine runs from a prefill's handoff."""
    if handoff.engine != ENGINE_NAME:
        raise InvalidRequest(f"disaggregated_params were made by a {handoff.engine!r} prefill worker; a "
                             "TensorRT-LLM decode worker can only continue a TensorRT-LLM prefill")
    payload = handoff.payload
    missing = [k for k in _REQUIRED_PAYLOAD if k not in payload]
    if missing:
        raise InvalidRequest(f"disaggregated_params.payload is not a TensorRT-LLM prefill result: missing "
                             f"{', '.join(missing)}")
    wrong = [f"{k} must be {t.__name__}" for k, t in _REQUIRED_PAYLOAD.items()
             if not isinstance(payload[k], t) or isinstance(payload[k], bool)]
    if wrong:
        raise InvalidRequest(f"disaggregated_params.payload is malformed: {'; '.join(wrong)}")
    if not all(isinstance(t, int) for t in payload["first_gen_tokens"]):
        raise InvalidRequest("disaggregated_params.payload.first_gen_tokens must be token ids")
    return disaggregated_params_cls(
        request_type="generation_only", first_gen_tokens=list(payload["first_gen_tokens"]),
        ctx_request_id=payload["ctx_request_id"], opaque_state=handoff.opaque or None,
        draft_tokens=payload.get("draft_tokens"))
