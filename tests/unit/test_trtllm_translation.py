"""The TensorRT-LLM adapter's pure translations: flags and engine files, outputs, KV events, stats.

Runs without TensorRT-LLM: where the adapter reads TensorRT-LLM's own argument models, these tests
use the TensorRT-LLM test double in tests/doubles (a mirror of its LlmArgs fields).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from dynamo.llm.protocol import DisaggregatedParams, FinishReason, GenerateRequest, InvalidRequest, KvEventKind
from dynamo.trtllm import args as targs
from dynamo.trtllm.convert import finish_reason_of, generation_params_for, handoff_of, logprobs_of
from dynamo.trtllm.events import KvEventTranslator, stats_of


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    targs.add_engine_args(p)
    return p.parse_args(argv)


def test_flags_build_llm_arguments() -> None:
    ns = parse(["--model-path", "/m", "--tensor-parallel-size", "2", "--kv-block-size", "64",
                "--max-num-tokens", "4096", "--free-gpu-memory-fraction", "0.5"])
    assert targs.flag_llm_args(ns) == {
        "model": "/m", "backend": "pytorch", "tensor_parallel_size": 2, "pipeline_parallel_size": 1,
        "trust_remote_code": False, "max_num_tokens": 4096,
        "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 64}}
    with pytest.raises(ValueError, match="--model"):
        targs.flag_llm_args(parse([]))


def test_deep_merge_lets_the_file_win_key_by_key() -> None:
    base = {"kv_cache_config": {"free_gpu_memory_fraction": 0.9, "tokens_per_block": 32}, "max_num_tokens": 8}
    over = {"kv_cache_config": {"free_gpu_memory_fraction": 0.5}, "max_num_tokens": 16, "enable_chunked_prefill": True}
    assert targs.deep_merge(base, over) == {
        "kv_cache_config": {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 32}, "max_num_tokens": 16,
        "enable_chunked_prefill": True}
    assert base["kv_cache_config"]["free_gpu_memory_fraction"] == 0.9  # inputs untouched


class _Kv(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens_per_block: int = 32
    free_gpu_memory_fraction: float | None = None


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = ""
    kv_cache_config: _Kv | None = None
    max_num_tokens: int | None = None


def test_unknown_keys_are_named_with_their_file_and_a_suggestion() -> None:
    targs.check_keys({"max_num_tokens": 1, "kv_cache_config": {"tokens_per_block": 16}}, _Args, "a.yaml")
    with pytest.raises(ValueError, match=r"a\.yaml: unknown TensorRT-LLM argument 'max_num_token'.*'max_num_tokens'"):
        targs.check_keys({"max_num_token": 1}, _Args, "a.yaml")
    with pytest.raises(ValueError, match=r"'kv_cache_config\.tokens_per_blok'"):
        targs.check_keys({"kv_cache_config": {"tokens_per_blok": 16}}, _Args, "a.yaml")


def test_engine_file_and_override_layer_over_the_flags(tmp_path: Path, trtllm_double: None) -> None:
    config = tmp_path / "agg.yaml"
    config.write_text("enable_chunked_prefill: true\nkv_cache_config:\n  free_gpu_memory_fraction: 0.5\n"
                      "max_num_tokens: 2048\n")
    ns = parse(["--model", "/m", "--kv-block-size", "16", "--max-num-tokens", "8192", "--extra-engine-args",
                str(config), "--override-engine-args", '{"kv_cache_config": {"event_buffer_max_size": 0}}'])
    args = targs.engine_llm_args(ns)
    assert args["max_num_tokens"] == 2048 and args["enable_chunked_prefill"] is True  # the file wins
    assert args["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5, "tokens_per_block": 16,
                                       "event_buffer_max_size": 0}  # nested keys merge; 0: no KV events
    assert args["enable_iter_perf_stats"] is True
    config.write_text("kv_cache_config:\n  free_gpu_memory_fractoin: 0.5\n")
    with pytest.raises(ValueError, match=f"{config}: unknown TensorRT-LLM argument 'kv_cache_config.free_gpu_memory_fractoin'"):
        targs.engine_llm_args(ns)
    config.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        targs.engine_llm_args(ns)
    with pytest.raises(ValueError, match="valid JSON"):
        targs.engine_llm_args(parse(["--model", "/m", "--override-engine-args", "{nope"]))
    with pytest.raises(ValueError, match="PyTorch backend only"):
        targs.engine_llm_args(parse(["--model", "/m", "--override-engine-args", '{"backend": "tensorrt"}']))


@pytest.mark.parametrize("reason,stop_reason,context_only,expected", [
    (None, None, False, None),
    ("length", None, False, FinishReason.LENGTH),
    ("stop", None, False, FinishReason.EOS),
    ("stop", 7, False, FinishReason.STOP),
    ("stop", 2, False, FinishReason.EOS),  # a stop id the request did not ask for: the model's EOS
    ("cancelled", None, False, FinishReason.CANCELLED),
    ("timeout", None, False, FinishReason.ERROR),
    ("not_finished", None, True, FinishReason.LENGTH),
    ("not_finished", None, False, None),
])
def test_finish_reasons(reason: str | None, stop_reason: int | None, context_only: bool,
                        expected: FinishReason | None) -> None:
    assert finish_reason_of(reason, stop_reason, [7], context_only) is expected


class _Lp:
    def __init__(self, logprob: float, rank: int | None) -> None:
        self.logprob, self.rank = logprob, rank


def test_logprobs_keep_the_sampled_token_and_the_top_n_by_rank() -> None:
    positions = [{5: _Lp(-0.1, 1), 9: _Lp(-2.0, 2), 3: _Lp(-3.0, 3)}, {4: _Lp(-1.5, 2), 8: _Lp(-0.5, 1)}]
    out = logprobs_of([5, 4], positions, num_top=2)
    assert [(lp.token_id, lp.logprob, lp.top) for lp in out] == [
        (5, -0.1, [(5, -0.1), (9, -2.0)]), (4, -1.5, [(8, -0.5), (4, -1.5)])]
    assert [lp.logprob for lp in logprobs_of([1, 2], [-0.3, -0.7], 0)] == [-0.3, -0.7]  # bare floats


class _Params:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def test_the_handoff_carries_the_opaque_state_byte_for_byte() -> None:
    state = bytes(range(256))
    prefill = _Params(request_type="context_only", first_gen_tokens=[11], ctx_request_id=77, opaque_state=state,
                      draft_tokens=None)
    ours = handoff_of(prefill, [11])
    assert ours.engine == "trtllm" and ours.opaque == state and ours.first_token_ids == [11]
    back = generation_params_for(ours, _Params)
    assert (back.request_type, back.ctx_request_id, back.first_gen_tokens, back.opaque_state) == (
        "generation_only", 77, [11], state)
    with pytest.raises(InvalidRequest, match="'vllm' prefill worker"):
        generation_params_for(DisaggregatedParams("vllm", {}), _Params)
    with pytest.raises(InvalidRequest, match="missing ctx_request_id"):
        generation_params_for(DisaggregatedParams("trtllm", {"first_gen_tokens": [1]}), _Params)
    with pytest.raises(InvalidRequest, match="ctx_request_id must be int"):
        generation_params_for(DisaggregatedParams("trtllm", {"ctx_request_id": "7", "first_gen_tokens": [1]}),
                              _Params)


def _block(h: int, tokens: list[int]) -> dict[str, object]:
    return {"type": "stored_block", "block_hash": h, "tokens": [{"type": "unique_token", "token_id": t} for t in tokens]}


def test_kv_events_keep_full_blocks_and_the_largest_window() -> None:
    t = KvEventTranslator(block_size=2)
    assert t.translate({"event_id": 0, "window_size": 64, "data": {"type": "created"}}) == []
    assert t.translate({"event_id": 1, "window_size": 128, "data": {"type": "created"}}) == []
    big = (1 << 64) - 5  # unsigned 64-bit hashes stay unsigned
    [stored] = t.translate({"event_id": 2, "window_size": 128, "data": {
        "type": "stored", "parent_hash": None, "blocks": [_block(big, [1, 2]), _block(20, [3, 4]), _block(30, [5])]}})
    assert (stored.kind, stored.block_hashes, stored.token_ids, stored.block_size, stored.parent_hash) == (
        KvEventKind.STORED, [big, 20], [1, 2, 3, 4], 2, None)
    assert t.translate({"event_id": 3, "window_size": 64, "data": {  # another window's pool: not relayed
        "type": "stored", "parent_hash": 20, "blocks": [_block(40, [6, 7])]}}) == []
    [removed] = t.translate({"event_id": 4, "window_size": 128, "data": {"type": "removed", "block_hashes": [30, 20]}})
    assert removed.kind is KvEventKind.REMOVED and removed.block_hashes == [20]  # the partial block was never told
    assert t.translate({"event_id": 5, "window_size": 128, "data": {"type": "updated", "block_hash": 20}}) == []


def test_iteration_stats() -> None:
    s = stats_of({"numActiveRequests": 3, "numQueuedRequests": 2,
                  "kvCacheStats": {"maxNumBlocks": 100, "usedNumBlocks": 25, "freeNumBlocks": 75}})
    assert (s.running_requests, s.waiting_requests, s.kv_usage, s.kv_total_blocks, s.kv_active_blocks) == (
        3, 2, 0.25, 100, 25)
    assert stats_of({}).kv_usage == 0.0


def test_sampling_params_translation(trtllm_double: None) -> None:
    from tensorrt_llm import SamplingParams

    from dynamo.llm.protocol import OutputOptions, SamplingOptions, StopConditions
    from dynamo.trtllm.convert import sampling_params_for

    greedy = sampling_params_for(GenerateRequest("r", [1, 2], stop=StopConditions(
        max_tokens=9, min_tokens=2, stop_token_ids=[4], ignore_eos=True), output=OutputOptions(logprobs=0)),
        SamplingParams)
    assert (greedy.temperature, greedy.max_tokens, greedy.min_tokens, greedy.stop_token_ids, greedy.ignore_eos,
            greedy.logprobs, greedy.detokenize) == (0.0, 9, 2, [4], True, 1, False)
    sampled = sampling_params_for(GenerateRequest("r", [1], sampling=SamplingOptions(
        temperature=0.7, top_k=-1, top_p=0.5, seed=3)), SamplingParams)
    assert (sampled.temperature, sampled.top_k, sampled.top_p, sampled.seed) == (0.7, None, 0.5, 3)
    with pytest.raises(InvalidRequest, match="top_p"):
        sampling_params_for(GenerateRequest("r", [1], sampling=SamplingOptions(temperature=1.0, top_p=1.5)),
                            SamplingParams)


def test_guided_decoding_flag_reaches_the_llm_arguments() -> None:
    args = targs.flag_llm_args(parse(["--model-path", "/m", "--guided-decoding-backend", "xgrammar"]))
    assert args["guided_decoding_backend"] == "xgrammar"
    assert "guided_decoding_backend" not in targs.flag_llm_args(parse(["--model-path", "/m"]))


@pytest.mark.parametrize("kind, value, expected", [
    ("json_schema", '{"type": "object"}', {"json": '{"type": "object"}'}),
    ("json_object", "", {"json_object": True}),
    ("regex", "[a-c]{3}", {"regex": "[a-c]{3}"}),
    ("choice", '["yes", "n.o"]', {"regex": "(yes|n\\.o)"}),
    ("grammar", 'root ::= "hi"', {"grammar": 'root ::= "hi"'}),
])
def test_structured_output_becomes_guided_decoding(trtllm_double: None, kind: str, value: str,
                                                   expected: dict[str, object]) -> None:
    from tensorrt_llm import SamplingParams
    from tensorrt_llm.sampling_params import GuidedDecodingParams

    from dynamo.llm.protocol import StructuredKind, StructuredOutput
    from dynamo.trtllm.convert import sampling_params_for

    request = GenerateRequest("r", [1], structured_output=StructuredOutput(StructuredKind(kind), value))
    params = sampling_params_for(request, SamplingParams, guided_decoding_params_cls=GuidedDecodingParams)
    assert params.guided_decoding == GuidedDecodingParams(**expected)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="GuidedDecodingParams"):
        sampling_params_for(request, SamplingParams)


def test_logit_bias_becomes_a_dense_embedding_bias(trtllm_double: None) -> None:
    import torch
    from tensorrt_llm import SamplingParams

    from dynamo.llm.protocol import SamplingOptions
    from dynamo.trtllm.convert import embedding_bias_for, sampling_params_for

    dense = embedding_bias_for({2: 100.0, 5: -1.5}, 8)
    assert dense == [0.0, 0.0, 100.0, 0.0, 0.0, -1.5, 0.0, 0.0]
    with pytest.raises(InvalidRequest, match="logit_bias token id 8 is outside the vocabulary"):
        embedding_bias_for({8: 1.0}, 8)
    request = GenerateRequest("r", [1], sampling=SamplingOptions(logit_bias={2: 100.0}))
    params = sampling_params_for(request, SamplingParams, embedding_bias=torch.tensor(dense, dtype=torch.float32))
    assert params.embedding_bias.dtype == torch.float32 and params.embedding_bias.tolist() == dense
