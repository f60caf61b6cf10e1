"""Conversions between dynamo.llm.protocol dataclasses and the worker protobuf messages.

This is the only place that knows both; keep the hot paths (GenerateOutput) cheap.
"""

from __future__ import annotations

import json

from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import (
    Bootstrap,
    DisaggregatedParams,
    EngineStats,
    FinishReason,
    GenerateOutput,
    GenerateRequest,
    InvalidRequest,
    KvEvent,
    KvEventKind,
    OutputOptions,
    SamplingOptions,
    StopConditions,
    StructuredKind,
    StructuredOutput,
    TokenLogprob,
    Usage,
)

_FINISH_TO_PB = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.CANCELLED: pb.FINISH_REASON_CANCELLED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}
_FINISH_FROM_PB = {v: k for k, v in _FINISH_TO_PB.items()}

_KV_TO_PB = {KvEventKind.STORED: pb.KV_EVENT_KIND_STORED, KvEventKind.REMOVED: pb.KV_EVENT_KIND_REMOVED,
             KvEventKind.CLEARED: pb.KV_EVENT_KIND_CLEARED}
_KV_FROM_PB = {v: k for k, v in _KV_TO_PB.items()}

_STRUCTURED_TO_PB = {
    StructuredKind.JSON_SCHEMA: pb.StructuredOutput.KIND_JSON_SCHEMA,
    StructuredKind.JSON_OBJECT: pb.StructuredOutput.KIND_JSON_OBJECT,
    StructuredKind.REGEX: pb.StructuredOutput.KIND_REGEX,
    StructuredKind.CHOICE: pb.StructuredOutput.KIND_CHOICE,
    StructuredKind.GRAMMAR: pb.StructuredOutput.KIND_GRAMMAR,
}
_STRUCTURED_FROM_PB = {v: k for k, v in _STRUCTURED_TO_PB.items()}

_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                    "frequency_penalty", "repetition_penalty")


def _opt(msg: object, name: str) -> object | None:
    return getattr(msg, name) if msg.HasField(name) else None  # type: ignore[attr-defined]


# --- disaggregated params --------------------------------------------------------------------

def disagg_to_pb(p: DisaggregatedParams, out: pb.DisaggregatedParams) -> None:
    out.engine = p.engine
    out.payload_json = json.dumps(p.payload)
    out.prefill_instance_id = p.prefill_instance_id
    out.first_token_ids.extend(p.first_token_ids)
    out.opaque = p.opaque


def disagg_from_pb(m: pb.DisaggregatedParams) -> DisaggregatedParams:
    try:
        payload = json.loads(m.payload_json) if m.payload_json else {}
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"disaggregated_params.payload_json is not valid JSON: {e}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("disaggregated_params.payload_json must be a JSON object")
    if not m.engine:
        raise InvalidRequest("disaggregated_params.engine must name the engine that produced it")
    return DisaggregatedParams(engine=m.engine, payload=payload, prefill_instance_id=m.prefill_instance_id,
                               first_token_ids=list(m.first_token_ids), opaque=m.opaque)


# --- structured output ------------------------------------------------------------------------

def structured_to_pb(so: StructuredOutput, out: pb.StructuredOutput) -> None:
    out.kind = _STRUCTURED_TO_PB[so.kind]
    out.value = so.value


def structured_from_pb(m: pb.StructuredOutput) -> StructuredOutput:
    kind = _STRUCTURED_FROM_PB.get(m.kind)
    if kind is None:  # unset (0) or a kind newer than this worker
        raise InvalidRequest(f"structured_output.kind {m.kind} is not a constraint this worker knows "
                             f"(known: {', '.join(f'{v} ({k.value})' for k, v in _STRUCTURED_TO_PB.items())})")
    return StructuredOutput(kind=kind, value=m.value)


# --- requests --------------------------------------------------------------------------------

def request_to_pb(r: GenerateRequest) -> pb.GenerateRequest:
    m = pb.GenerateRequest(request_id=r.request_id, model=r.model, token_ids=r.token_ids)
    s = r.sampling
    for name in _SAMPLING_FIELDS:
        value = getattr(s, name)
        if value is not None:
            setattr(m.sampling, name, value)
    if s.logit_bias:
        m.sampling.logit_bias.update(s.logit_bias)
    if r.structured_output is not None:
        structured_to_pb(r.structured_output, m.structured_output)
    if r.stop.max_tokens is not None:
        m.stop.max_tokens = r.stop.max_tokens
    if r.stop.min_tokens is not None:
        m.stop.min_tokens = r.stop.min_tokens
    m.stop.stop_token_ids.extend(r.stop.stop_token_ids)
    m.stop.ignore_eos = r.stop.ignore_eos
    if r.output.logprobs is not None:
        m.output.logprobs = r.output.logprobs
    m.output.skip_special_tokens = r.output.skip_special_tokens
    if r.disaggregated_params is not None:
        disagg_to_pb(r.disaggregated_params, m.disaggregated_params)
    m.annotations.update(r.annotations)
    if r.bootstrap is not None:
        m.bootstrap.host, m.bootstrap.port, m.bootstrap.room = r.bootstrap.host, r.bootstrap.port, r.bootstrap.room
    return m


def request_from_pb(m: pb.GenerateRequest) -> GenerateRequest:
    sampling = SamplingOptions(**{name: _opt(m.sampling, name) for name in _SAMPLING_FIELDS})  # type: ignore[arg-type]
    if m.sampling.logit_bias:
        sampling.logit_bias = dict(m.sampling.logit_bias)
    stop = StopConditions(
        max_tokens=_opt(m.stop, "max_tokens"),  # type: ignore[arg-type]
        min_tokens=_opt(m.stop, "min_tokens"),  # type: ignore[arg-type]
        stop_token_ids=list(m.stop.stop_token_ids), ignore_eos=m.stop.ignore_eos)
    output = OutputOptions(logprobs=_opt(m.output, "logprobs"),  # type: ignore[arg-type]
                           skip_special_tokens=m.output.skip_special_tokens)
    disagg = disagg_from_pb(m.disaggregated_params) if m.HasField("disaggregated_params") else None
    bootstrap = (Bootstrap(m.bootstrap.host, m.bootstrap.port, m.bootstrap.room)
                 if m.HasField("bootstrap") else None)
    structured = structured_from_pb(m.structured_output) if m.HasField("structured_output") else None
    return GenerateRequest(request_id=m.request_id, token_ids=list(m.token_ids), model=m.model,
                           sampling=sampling, stop=stop, output=output, disaggregated_params=disagg,
                           annotations=dict(m.annotations), bootstrap=bootstrap, structured_output=structured)


# --- outputs ---------------------------------------------------------------------------------

def output_to_pb(o: GenerateOutput, m: pb.GenerateResponse | None = None) -> pb.GenerateResponse:
    """`o` as a message; filled into `m` when given (a field of a batch: no copy)."""
    if m is None:
        m = pb.GenerateResponse(token_ids=o.token_ids)
    else:
        m.token_ids.extend(o.token_ids)
    if o.finish_reason is not None:
        m.finish_reason = _FINISH_TO_PB[o.finish_reason]
    if o.text is not None:
        m.text = o.text
    if o.logprobs:
        for lp in o.logprobs:
            e = m.logprobs.add(token_id=lp.token_id, logprob=lp.logprob)
            for tid, val in lp.top:
                e.top.add(token_id=tid, logprob=val)
    if o.usage is not None:
        m.usage.prompt_tokens = o.usage.prompt_tokens
        m.usage.completion_tokens = o.usage.completion_tokens
        m.usage.cached_tokens = o.usage.cached_tokens
    if o.disaggregated_params is not None:
        disagg_to_pb(o.disaggregated_params, m.disaggregated_params)
    if o.error:
        m.error = o.error
    return m


def output_from_pb(m: pb.GenerateResponse) -> GenerateOutput:
    o = GenerateOutput(token_ids=list(m.token_ids),
                       finish_reason=_FINISH_FROM_PB.get(m.finish_reason))
    if m.HasField("text"):
        o.text = m.text
    if m.logprobs:
        o.logprobs = [TokenLogprob(e.token_id, e.logprob, [(t.token_id, t.logprob) for t in e.top])
                      for e in m.logprobs]
    if m.HasField("usage"):
        o.usage = Usage(m.usage.prompt_tokens, m.usage.completion_tokens, m.usage.cached_tokens)
    if m.HasField("disaggregated_params"):
        o.disaggregated_params = disagg_from_pb(m.disaggregated_params)
    if m.error:
        o.error = m.error
    return o


# --- KV events and stats ---------------------------------------------------------------------

def kv_event_to_pb(e: KvEvent, out: pb.KvEvent) -> None:
    out.event_id = e.event_id
    out.kind = _KV_TO_PB[e.kind]
    out.block_hashes.extend(h & 0xFFFF_FFFF_FFFF_FFFF for h in e.block_hashes)
    if e.parent_hash is not None:
        out.parent_hash = e.parent_hash & 0xFFFF_FFFF_FFFF_FFFF
    out.token_ids.extend(e.token_ids)
    out.block_size = e.block_size


def kv_event_from_pb(m: pb.KvEvent) -> KvEvent:
    return KvEvent(kind=_KV_FROM_PB[m.kind], block_hashes=list(m.block_hashes),
                   parent_hash=m.parent_hash if m.HasField("parent_hash") else None,
                   token_ids=list(m.token_ids), block_size=m.block_size, event_id=m.event_id)


def stats_to_pb(s: EngineStats, instance_id: str, inflight: int, unfinished: int) -> pb.WorkerStats:
    return pb.WorkerStats(instance_id=instance_id, running_requests=s.running_requests,
                          waiting_requests=s.waiting_requests, kv_usage=s.kv_usage,
                          kv_total_blocks=s.kv_total_blocks, kv_active_blocks=s.kv_active_blocks,
                          inflight_requests=inflight, unfinished_requests=unfinished)
