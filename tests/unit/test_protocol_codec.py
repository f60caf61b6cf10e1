"""Protocol validation and the protobuf round trip."""

from __future__ import annotations

import math

import pytest

from dynamo.llm import codec
from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.protocol import (
    DisaggregatedParams,
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
from dynamo.runtime.identity import EndpointAddress


def test_request_round_trip() -> None:
    r = GenerateRequest("r1", [1, 2, 3], model="m",
                        sampling=SamplingOptions(temperature=0.5, top_p=0.9, top_k=5, min_p=0.1, seed=-7,
                                                 presence_penalty=0.5, frequency_penalty=-0.5,
                                                 repetition_penalty=1.1),
                        stop=StopConditions(max_tokens=4, min_tokens=2, stop_token_ids=[9], ignore_eos=True),
                        output=OutputOptions(logprobs=0),
                        disaggregated_params=DisaggregatedParams("vllm", {"a": [1, 2]}, "i1", [5], b"\x00\xff opaque"),
                        annotations={"k": "v"})
    back = codec.request_from_pb(pb.GenerateRequest.FromString(codec.request_to_pb(r).SerializeToString()))
    assert back.sampling.temperature == pytest.approx(0.5)
    back.sampling = r.sampling  # floats travel as float32
    assert back == r


@pytest.mark.parametrize("structured", [
    StructuredOutput(StructuredKind.JSON_SCHEMA, '{"type": "object", "required": ["a"]}'),
    StructuredOutput(StructuredKind.JSON_OBJECT),
    StructuredOutput(StructuredKind.REGEX, "[a-z]+\\d"),
    StructuredOutput(StructuredKind.CHOICE, '["yes", "no"]'),
    StructuredOutput(StructuredKind.GRAMMAR, 'root ::= "a" | "b"'),
], ids=lambda s: s.kind.value)
def test_structured_output_and_logit_bias_round_trip(structured: StructuredOutput) -> None:
    r = GenerateRequest("r", [1, 2], sampling=SamplingOptions(logit_bias={0: -100.0, 17: 2.5, 2**32 - 1: 100.0}),
                        structured_output=structured)
    back = codec.request_from_pb(pb.GenerateRequest.FromString(codec.request_to_pb(r).SerializeToString()))
    assert back == r  # the biases are exact in float32


def test_no_structured_output_and_no_bias_stay_none() -> None:
    back = codec.request_from_pb(codec.request_to_pb(GenerateRequest("r", [1], sampling=SamplingOptions(logit_bias={}))))
    assert back.structured_output is None and back.sampling.logit_bias is None


@pytest.mark.parametrize("kind", [pb.StructuredOutput.KIND_UNSPECIFIED, 99])
def test_unknown_structured_kind_is_invalid(kind: int) -> None:
    m = pb.GenerateRequest(request_id="r", token_ids=[1])
    m.structured_output.kind = kind  # type: ignore[assignment]  # an enum value a newer client may send
    m.structured_output.value = "x"
    with pytest.raises(InvalidRequest, match=f"structured_output.kind {kind} is not a constraint .*known: 1 \\(json_schema\\)"):
        codec.request_from_pb(m)


def test_unset_options_stay_unset() -> None:
    back = codec.request_from_pb(codec.request_to_pb(GenerateRequest("r", [1])))
    assert back.sampling == SamplingOptions() and back.stop == StopConditions()
    assert back.output.logprobs is None and back.disaggregated_params is None


def test_output_round_trip() -> None:
    o = GenerateOutput([1, 2], finish_reason=FinishReason.EOS, usage=Usage(3, 2, 1),
                       logprobs=[TokenLogprob(1, -0.5, [(1, -0.5), (7, -1.5)]), TokenLogprob(2, -1.0)],
                       disaggregated_params=DisaggregatedParams("mocker", {"x": 1}))
    assert codec.output_from_pb(codec.output_to_pb(o)) == o


def test_kv_event_round_trip_masks_to_64_bits() -> None:
    e = KvEvent(KvEventKind.STORED, [2**70 + 5], parent_hash=2**64 + 1, token_ids=[1, 2], block_size=2, event_id=9)
    m = pb.KvEvent()
    codec.kv_event_to_pb(e, m)
    back = codec.kv_event_from_pb(m)
    assert back.block_hashes == [5] and back.parent_hash == 1 and back.event_id == 9


def test_garbage_disaggregated_params_are_invalid() -> None:
    m = pb.GenerateRequest(request_id="r", token_ids=[1])
    m.disaggregated_params.engine = "vllm"
    m.disaggregated_params.payload_json = "{not json"
    with pytest.raises(InvalidRequest, match="payload_json"):
        codec.request_from_pb(m)
    m.disaggregated_params.payload_json = "[1]"
    with pytest.raises(InvalidRequest, match="JSON object"):
        codec.request_from_pb(m)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: setattr(r, "token_ids", []), "prompt is empty"),
    (lambda r: setattr(r, "token_ids", [1, 5000]), "token id 5000 is outside the vocabulary"),
    (lambda r: setattr(r, "token_ids", [-1]), "outside the vocabulary"),
    (lambda r: setattr(r, "token_ids", [1] * 2048), "prompt has 2048 tokens; this model's context is 2048"),
    (lambda r: setattr(r.stop, "max_tokens", 2046), "exceeds this model's context"),
    (lambda r: setattr(r.stop, "max_tokens", 0), "max_tokens must be >= 1"),
    (lambda r: setattr(r.sampling, "temperature", -1.0), "temperature must be >= 0"),
    (lambda r: setattr(r.sampling, "temperature", math.nan), "finite"),
    (lambda r: setattr(r.sampling, "top_p", 0.0), "top_p"),
    (lambda r: setattr(r.sampling, "top_p", math.inf), "finite"),
    (lambda r: setattr(r.sampling, "min_p", 2.0), "min_p"),
    (lambda r: setattr(r.sampling, "top_k", -5), "top_k"),
    (lambda r: setattr(r.sampling, "presence_penalty", 3.0), "presence_penalty"),
    (lambda r: setattr(r.sampling, "repetition_penalty", 0.0), "repetition_penalty"),
    (lambda r: setattr(r.stop, "min_tokens", 50), "min_tokens"),
    (lambda r: setattr(r.output, "logprobs", 21), "logprobs"),
    (lambda r: setattr(r, "model", "other"), "unknown model 'other'"),
    (lambda r: setattr(r, "request_id", ""), "request_id"),
    (lambda r: setattr(r.sampling, "logit_bias", {5: 101.0}), r"logit_bias\[5\] = 101.0"),
    (lambda r: setattr(r.sampling, "logit_bias", {5: math.nan}), "logit_bias"),
    (lambda r: setattr(r.sampling, "logit_bias", {1024: 1.0}), "logit_bias token id 1024 is outside the vocabulary"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.JSON_SCHEMA, "{nope")),
     "must be JSON for json_schema"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.JSON_SCHEMA, "[1]")),
     "json_schema must be a JSON object"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.CHOICE, "[]")), "non-empty JSON array"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.CHOICE, '["a", 1]')), "of strings"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.REGEX, "")), "regex must not be empty"),
    (lambda r: setattr(r, "structured_output", StructuredOutput(StructuredKind.GRAMMAR, "")), "grammar must not be empty"),
])
def test_validation_messages(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    r = GenerateRequest("r", [1, 2, 3], model="tiny", stop=StopConditions(max_tokens=10))
    mutate(r)
    with pytest.raises(InvalidRequest, match=message):
        r.validate_common(vocab_size=1024, context_length=2048, served_model="tiny")


def test_valid_request_passes() -> None:
    GenerateRequest("r", [1, 2, 3], stop=StopConditions(max_tokens=10)).validate_common(
        vocab_size=1024, context_length=2048, served_model="tiny")


@pytest.mark.parametrize("text", ["dyn://ns.comp.ep", "ns.comp.ep"])
def test_endpoint_address_parse(text: str) -> None:
    a = EndpointAddress.parse(text)
    assert (a.namespace, a.component, a.endpoint) == ("ns", "comp", "ep")
    assert str(a) == "dyn://ns.comp.ep"
    assert a.instances_prefix == "v1/instances/ns/comp/ep/"


@pytest.mark.parametrize("bad", ["dyn://ns.comp", "a.b.c.d", "dyn://ns/x.comp.ep", "ns..ep"])
def test_endpoint_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        EndpointAddress.parse(bad)
