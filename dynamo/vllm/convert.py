"""Translate our generate protocol to vLLM's types and vLLM's outputs back. Nothing else."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from dynamo.llm.model_card import Role
from dynamo.llm.protocol import (
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    StructuredKind,
    StructuredOutput,
    TokenLogprob,
)

ENGINE_NAME = "vllm"


def kv_transfer_params_for(request: GenerateRequest, role: Role) -> dict[str, Any] | None:
    """The `kv_transfer_params` vLLM's NIXL connector reads for this request, if any.

    A prefill worker asks vLLM to keep the prompt's KV blocks for a remote decode; a request that
    carries a prefill's result hands vLLM that prefill's own `kv_transfer_params`. (Which requests
    a role accepts is the worker shell's rule, dynamo.llm.disagg, not checked again here.)
    """
    params = request.disaggregated_params
    if params is not None:
        if params.engine != ENGINE_NAME:
            raise InvalidRequest(
                f"disaggregated_params were made by a {params.engine!r} prefill worker; a vLLM decode "
                "worker can only continue a vLLM prefill (route prefill and decode to the same backend)")
        if not isinstance(params.payload, Mapping) or not params.payload:
            raise InvalidRequest("disaggregated_params.payload is empty; expected vLLM's kv_transfer_params")
        check_kv_transfer_params(params.payload)
        return dict(params.payload)
    if role is Role.PREFILL:
        return {"do_remote_decode": True}
    return None


# What vLLM's NIXL connector needs to pull a prefill's KV blocks, and the JSON type of each.
_REQUIRED_KV_PARAMS: dict[str, type | tuple[type, ...]] = {
    "do_remote_prefill": bool, "remote_block_ids": list, "remote_engine_id": str,
    "remote_request_id": str, "remote_host": str, "remote_port": int,
}


def check_kv_transfer_params(payload: Mapping[str, Any]) -> None:
    """Refuse a payload that is not a vLLM prefill's kv_transfer_params before vLLM sees it."""
    missing = [k for k in _REQUIRED_KV_PARAMS if k not in payload]
    if missing:
        raise InvalidRequest(f"disaggregated_params.payload is not a vLLM prefill result: missing "
                             f"{', '.join(missing)}")
    wrong = [f"{k} must be {t.__name__}" for k, t in _REQUIRED_KV_PARAMS.items()  # type: ignore[union-attr]
             if not isinstance(payload[k], t) or (t is int and isinstance(payload[k], bool))]
    if wrong:
        raise InvalidRequest(f"disaggregated_params.payload is malformed: {'; '.join(wrong)}")
    if not payload["do_remote_prefill"]:
        raise InvalidRequest("disaggregated_params.payload has do_remote_prefill=false: it is not a "
                             "prefill worker's result")


def structured_outputs_for(so: StructuredOutput) -> StructuredOutputsParams:
    """vLLM's StructuredOutputsParams for our constraint: every kind maps to a field of its own
    (vLLM's structured-output backend, --structured-outputs-config, compiles it)."""
    kind, value = so.kind, so.value
    if kind is StructuredKind.JSON_SCHEMA:
        return StructuredOutputsParams(json=value)
    if kind is StructuredKind.JSON_OBJECT:
        return StructuredOutputsParams(json_object=True)
    if kind is StructuredKind.REGEX:
        return StructuredOutputsParams(regex=value)
    if kind is StructuredKind.CHOICE:
        return StructuredOutputsParams(choice=list(json.loads(value)))  # validated: a JSON array of strings
    if kind is StructuredKind.GRAMMAR:
        return StructuredOutputsParams(grammar=value)
    raise InvalidRequest(f"the vLLM worker cannot honour a structured_output of kind {kind.value!r}")


def sampling_params_for(request: GenerateRequest, role: Role = Role.AGGREGATED) -> SamplingParams:
    """vLLM SamplingParams for `request`; vLLM's own validation errors become InvalidRequest."""
    s, stop, out = request.sampling, request.stop, request.output
    kwargs: dict[str, Any] = {
        # Our None means greedy; vLLM's default temperature is 1.0.
        "temperature": s.temperature or 0.0,
        "seed": s.seed,
        "max_tokens": stop.max_tokens,
        "min_tokens": stop.min_tokens or 0,
        "stop_token_ids": list(stop.stop_token_ids),
        "ignore_eos": stop.ignore_eos,
        "logprobs": out.logprobs,
        "skip_special_tokens": out.skip_special_tokens,
        # The frontend detokenizes; vLLM only streams token ids, each only once.
        "detokenize": False,
        "output_kind": RequestOutputKind.DELTA,
    }
    for name in ("top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty"):
        value = getattr(s, name)
        if value is not None:
            kwargs[name] = value
    if s.logit_bias:
        kwargs["logit_bias"] = dict(s.logit_bias)
    transfer = kv_transfer_params_for(request, role)
    if transfer is not None:
        kwargs["extra_args"] = {"kv_transfer_params": transfer}
    try:
        if request.structured_output is not None:
            kwargs["structured_outputs"] = structured_outputs_for(request.structured_output)
        return SamplingParams(**kwargs)
    except Exception as exc:
        if is_client_error(exc) or isinstance(exc, TypeError):
            raise InvalidRequest(f"vLLM rejected the sampling options: {exc}") from exc
        raise


def is_client_error(exc: BaseException) -> bool:
    """Whether vLLM blames the request (its VLLMClientError family, or a plain ValueError)."""
    from vllm.exceptions import VLLMClientError

    return isinstance(exc, (VLLMClientError, ValueError))


def finish_reason_of(vllm_reason: str | None, stop_reason: int | str | None,
                     stop_token_ids: Iterable[int]) -> FinishReason | None:
    """Map vLLM's finish reason; "stop" means EOS unless one of the request's stop tokens matched."""
    if vllm_reason is None:
        return None
    if vllm_reason == "length":
        return FinishReason.LENGTH
    if vllm_reason == "abort":
        return FinishReason.CANCELLED
    if vllm_reason == "error":
        return FinishReason.ERROR
    if vllm_reason == "stop":
        # stop_reason is None for the tokenizer's EOS; an int for a stop token id (which includes
        # extra EOS ids vLLM takes from generation_config); a str for a stop string.
        if stop_reason is None:
            return FinishReason.EOS
        if isinstance(stop_reason, int) and stop_reason not in set(stop_token_ids):
            return FinishReason.EOS
        return FinishReason.STOP
    # "repetition" (vLLM's repetition detector) and anything newer: the engine chose to stop.
    return FinishReason.STOP


def logprobs_of(token_ids: Iterable[int], positions: Iterable[Mapping[int, Any] | None] | None,
                num_top: int) -> list[TokenLogprob] | None:
    """vLLM's per-position {token id: Logprob(logprob, rank)} dicts as our TokenLogprob list.

    vLLM puts the sampled token and the top `num_top` alternatives in each dict (the sampled one
    once, even when it is also in the top); ranks start at 1.
    """
    if positions is None:
        return None
    result: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, positions):
        if position is None:
            continue
        chosen = position.get(token_id)
        top = sorted(((tid, lp) for tid, lp in position.items()
                      if lp.rank is not None and 1 <= lp.rank <= num_top),
                     key=lambda item: item[1].rank)
        result.append(TokenLogprob(
            token_id=token_id,
            logprob=float(chosen.logprob) if chosen is not None else float("nan"),
            top=[(tid, float(lp.logprob)) for tid, lp in top],
        ))
    return result
