"""Tests of the TensorRT-LLM test double itself (tests/doubles/tensorrt_llm), not of any adapter.

They check that the double behaves as the real TensorRT-LLM LLM API (~v1.1/1.2, PyTorch backend) is
documented to: constructor validation, SamplingParams, streaming results, stop handling, abort, KV events
and prefix reuse, iteration stats, disaggregated context/generation requests, shutdown.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pydantic
import pytest

DOUBLES = Path(__file__).resolve().parents[1] / "doubles"
_DOUBLE_MODULES = ("tensorrt_llm", "tensorrt_llm.executor", "tensorrt_llm.executor.result", "tensorrt_llm.llmapi",
                   "tensorrt_llm.llmapi.llm_args", "tensorrt_llm.llmapi.llm_utils")


def _is_trtllm(name: str) -> bool:
    return name == "tensorrt_llm" or name.startswith("tensorrt_llm.")


def _import_double() -> dict[str, ModuleType]:
    """Import the double from tests/doubles, then restore sys.path and sys.modules.

    Nothing leaks into the rest of the session: other tests that probe for an installed TensorRT-LLM (or
    load the double their own way) see the interpreter as it was.
    """
    saved_path = list(sys.path)
    saved = {name: mod for name, mod in sys.modules.items() if _is_trtllm(name)}
    try:
        for name in saved:
            del sys.modules[name]
        sys.path.insert(0, str(DOUBLES))
        modules = {name: importlib.import_module(name) for name in _DOUBLE_MODULES}
    finally:
        sys.path[:] = saved_path
        for name in [name for name in sys.modules if _is_trtllm(name)]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert Path(modules["tensorrt_llm"].__file__).is_relative_to(DOUBLES)
    return modules


_trt = _import_double()
tensorrt_llm = _trt["tensorrt_llm"]
LLM = tensorrt_llm.LLM
DisaggregatedParams = tensorrt_llm.DisaggregatedParams
SamplingParams = tensorrt_llm.SamplingParams
RequestError = _trt["tensorrt_llm.executor"].RequestError
Logprob = _trt["tensorrt_llm.executor.result"].Logprob
_llmapi = _trt["tensorrt_llm.llmapi"]
CacheTransceiverConfig = _llmapi.CacheTransceiverConfig
CapacitySchedulerPolicy = _llmapi.CapacitySchedulerPolicy
DynamicBatchConfig = _llmapi.DynamicBatchConfig
KvCacheConfig = _llmapi.KvCacheConfig
RequestOutput = _llmapi.RequestOutput
SchedulerConfig = _llmapi.SchedulerConfig
LlmArgs = _trt["tensorrt_llm.llmapi.llm_args"].LlmArgs
TorchLlmArgs = _trt["tensorrt_llm.llmapi.llm_args"].TorchLlmArgs
update_llm_args_with_extra_options = _trt["tensorrt_llm.llmapi.llm_utils"].update_llm_args_with_extra_options

EOS = 1  # the tiny model's </s>
PROMPT = list(range(100, 120))  # 20 token ids


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's config and tokenizer, without weights (the double never reads weights)."""
    from dynamo.llm.tiny_model import MODEL_CONFIG, _build_tokenizer

    out = tmp_path_factory.mktemp("tiny-trtllm-double")
    ids = _build_tokenizer(out)
    special = {"bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"]}
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **MODEL_CONFIG, **special}
    (out / "config.json").write_text(json.dumps(config))
    (out / "generation_config.json").write_text(json.dumps(special))
    return out


@pytest.fixture(autouse=True)
def _fast_no_eos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTLLM_DOUBLE_STEP_MS", "1")
    monkeypatch.setenv("TRTLLM_DOUBLE_EOS_RATE", "0")


def make_llm(model_dir: Path, **kwargs: object):
    kwargs.setdefault("skip_tokenizer_init", True)
    return LLM(str(model_dir), **kwargs)


def params(**kwargs: object) -> SamplingParams:
    kwargs.setdefault("end_id", EOS)
    return SamplingParams(**kwargs)  # type: ignore[arg-type]


# -- construction and args ---------------------------------------------------------------------------------


def test_package_says_it_is_a_double() -> None:
    assert "TEST DOUBLE" in (tensorrt_llm.__doc__ or "")
    assert tensorrt_llm.IS_TEST_DOUBLE
    assert tensorrt_llm.llmapi.LLM is LLM


def test_constructor_rejects_bad_arguments_as_real(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"^LLM got invalid argument: no_such_arg$"):
        make_llm(model_dir, no_such_arg=1)
    with pytest.raises(ValueError, match=r"specific to TensorRT backend .*\['quant_config'\]"):
        make_llm(model_dir, quant_config={})
    with pytest.raises(pydantic.ValidationError, match="extra_forbidden") as nested:
        make_llm(model_dir, kv_cache_config={"no_such_key": 1})
    assert isinstance(nested.value, ValueError)
    with pytest.raises(pydantic.ValidationError, match="free_gpu_memory_fraction must be a float between 0 and 1"):
        make_llm(model_dir, kv_cache_config={"free_gpu_memory_fraction": 1.5})
    with pytest.raises(pydantic.ValidationError):
        make_llm(model_dir, cache_transceiver_config={"backend": "ucx"})  # the 1.1+ literals are upper case
    with pytest.raises(pydantic.ValidationError):
        CacheTransceiverConfig(backend="UCX", kv_transfer_timeout_ms=0)


def test_args_are_validated_torch_llm_args(model_dir: Path) -> None:
    scheduler = SchedulerConfig(capacity_scheduler_policy=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT,
                                dynamic_batch_config=DynamicBatchConfig(enable_batch_size_tuning=True,
                                                                        enable_max_num_tokens_tuning=False,
                                                                        dynamic_batch_moving_average_window=128))
    with make_llm(model_dir, kv_cache_config={"free_gpu_memory_fraction": 0.5, "event_buffer_max_size": 16},
                  scheduler_config=scheduler, cache_transceiver_config={"backend": "DEFAULT"},
                  cuda_graph_config={"max_batch_size": 16}, max_batch_size=16) as llm:
        args = llm.args
        assert LlmArgs is TorchLlmArgs and isinstance(args, TorchLlmArgs)
        assert isinstance(args.kv_cache_config, KvCacheConfig)
        assert args.kv_cache_config.tokens_per_block == 32 and args.kv_cache_config.enable_block_reuse
        assert args.scheduler_config.dynamic_batch_config.dynamic_batch_moving_average_window == 128
        assert args.cache_transceiver_config.backend == "DEFAULT"
        assert args.cuda_graph_config.batch_sizes[-1] == 16
        assert (args.max_batch_size, args.max_num_tokens, args.max_beam_width, args.backend) == (16, 8192, 1, "pytorch")
        assert llm.tokenizer is None
    for name in ("kv_cache_config", "enable_chunked_prefill", "cache_transceiver_config", "enable_iter_perf_stats",
                 "disable_overlap_scheduler", "return_perf_metrics", "orchestrator_type", "kv_connector_config",
                 "stream_interval", "moe_expert_parallel_size", "gpus_per_node", "load_format", "build_config"):
        assert name in TorchLlmArgs.model_fields


def test_extra_options_merge_is_shallow(tmp_path: Path) -> None:
    yaml_path = tmp_path / "extra.yaml"
    yaml_path.write_text("kv_cache_config:\n  free_gpu_memory_fraction: 0.5\nmax_num_tokens: 4096\n")
    base = {"model": "m", "kv_cache_config": KvCacheConfig(event_buffer_max_size=1024), "max_num_tokens": 8192}
    merged = update_llm_args_with_extra_options(base, str(yaml_path))
    assert merged["kv_cache_config"] == {"free_gpu_memory_fraction": 0.5}  # the whole sub-config is replaced
    assert merged["max_num_tokens"] == 4096 and merged["model"] == "m"
    assert update_llm_args_with_extra_options(base, None) is base


def test_sampling_params_as_real() -> None:
    with pytest.raises(TypeError):
        SamplingParams(8)  # type: ignore[misc]  # kw_only
    with pytest.raises(TypeError):
        SamplingParams(random_seed=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="require 0 <= top_p <= 1, got top_p=2"):
        SamplingParams(top_p=2)
    with pytest.raises(ValueError, match="require top_k >= 0"):
        SamplingParams(top_k=-1)
    with pytest.raises(ValueError, match="require temperature >= 0"):
        SamplingParams(temperature=-0.5)
    with pytest.raises(ValueError, match="best_of"):
        SamplingParams(n=2, best_of=1)
    sp = SamplingParams(end_id=7, logprobs=True, seed=3)
    assert (sp.max_tokens, sp.pad_id, sp.logprobs, sp.best_of, sp.seed) == (32, 7, 1, 1, 3)
    assert not hasattr(sp, "__dict__")  # slots
    with pytest.raises(ValueError, match="Unknown request type: bogus"):
        DisaggregatedParams(request_type="bogus")
    assert DisaggregatedParams(request_type="CONTEXT_ONLY").request_type == "context_only"


# -- generation ----------------------------------------------------------------------------------------------


async def test_streaming_yields_the_same_object_with_cumulative_tokens(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        result = llm.generate_async(PROMPT, params(max_tokens=6), streaming=True)
        assert isinstance(result, RequestOutput) and result.prompt_token_ids == PROMPT
        seen: list[int] = []
        steps = 0
        async for step in result:
            assert step is result
            out = step.outputs[0]
            assert out.token_ids == seen + out.token_ids_diff
            seen = list(out.token_ids)
            steps += 1
        assert steps == 6 and len(seen) == 6
        assert result.finished and result.outputs[0].finish_reason == "length"
        assert result.outputs[0].stop_reason is None
        again = await llm.generate_async(PROMPT, params(max_tokens=6))
        assert again.outputs[0].token_ids == seen
        assert all(0 <= t < 1024 for t in seen)


async def test_greedy_is_deterministic_and_seeds_matter(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        greedy = [(await llm.generate_async(PROMPT, params(max_tokens=8))).outputs[0].token_ids for _ in range(2)]
        assert greedy[0] == greedy[1]
        other_prompt = (await llm.generate_async(PROMPT[1:], params(max_tokens=8))).outputs[0].token_ids
        assert other_prompt != greedy[0]
        seeded = [(await llm.generate_async(PROMPT, params(max_tokens=8, temperature=0.8, seed=s))).outputs[0].token_ids
                  for s in (1, 1, 2)]
        assert seeded[0] == seeded[1] != seeded[2]
        assert seeded[0] != greedy[0]
        result = await llm.generate_async(PROMPT, params(max_tokens=3, logprobs=2))
        out = result.outputs[0]
        assert len(out.logprobs) == 3 and out.cumulative_logprob is not None
        for token, top in zip(out.token_ids, out.logprobs):
            assert isinstance(top[token], Logprob) and top[token].rank == 1
            assert sorted(lp.rank for lp in top.values()) == [1, 2]


async def test_stop_token_is_trimmed_and_reported(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        full = (await llm.generate_async(PROMPT, params(max_tokens=10))).outputs[0].token_ids
        stop = full[3]
        first = full.index(stop)
        out = (await llm.generate_async(PROMPT, params(max_tokens=10, stop_token_ids=[stop]))).outputs[0]
        assert (out.finish_reason, out.stop_reason) == ("stop", stop)
        assert out.token_ids == full[:first]
        kept = (await llm.generate_async(PROMPT, params(max_tokens=10, stop_token_ids=[stop],
                                                        include_stop_str_in_output=True))).outputs[0]
        assert kept.token_ids == full[:first + 1]


async def test_eos_min_tokens_and_ignore_eos(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRTLLM_DOUBLE_EOS_RATE", "1")
    with make_llm(model_dir) as llm:
        out = (await llm.generate_async(PROMPT, params(max_tokens=5))).outputs[0]
        assert (out.token_ids, out.finish_reason, out.stop_reason) == ([EOS], "stop", None)
        out = (await llm.generate_async(PROMPT, params(max_tokens=10, min_tokens=3))).outputs[0]
        assert len(out.token_ids) == 4 and out.token_ids[-1] == EOS and EOS not in out.token_ids[:3]
        out = (await llm.generate_async(PROMPT, params(max_tokens=4, ignore_eos=True))).outputs[0]
        assert (out.token_ids, out.finish_reason) == ([EOS] * 4, "length")


async def test_abort_ends_the_stream_promptly(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        result = llm.generate_async(PROMPT, params(max_tokens=100_000), streaming=True)
        chunks = 0
        async for step in result:
            chunks += 1
            if chunks == 3:
                step.abort()
        assert result.finished and result.aborted()
        assert result.outputs[0].finish_reason == "cancelled"
        assert 3 <= len(result.outputs[0].token_ids) < 100


async def test_kv_events_prefix_reuse_and_eviction(model_dir: Path) -> None:
    kv = KvCacheConfig(tokens_per_block=4, event_buffer_max_size=1024, max_tokens=64)  # 16 blocks
    with make_llm(model_dir, kv_cache_config=kv) as llm:
        first = await llm.generate_async(PROMPT, params(max_tokens=2))
        second = await llm.generate_async(PROMPT, params(max_tokens=2))
        assert first.cached_tokens == 0
        assert second.cached_tokens == 16  # full blocks of prompt[:-1]
        events = [e async for e in llm.get_kv_cache_events_async(timeout=0.05)]
        assert events[0]["data"] == {"type": "created", "num_blocks_per_cache_level": [16, 0]}
        assert [e["event_id"] for e in events] == list(range(len(events)))
        stored = [e["data"] for e in events if e["data"]["type"] == "stored"]
        assert stored[0]["parent_hash"] is None
        blocks = stored[0]["blocks"]
        assert [t["token_id"] for b in blocks for t in b["tokens"]] == PROMPT
        assert all(b["type"] == "stored_block" and len(b["tokens"]) == 4 for b in blocks)
        assert all(events[0]["window_size"] == e["window_size"] for e in events)
        # More distinct prompts than the pool holds: LRU leaves are evicted with "removed" events.
        for i in range(6):
            await llm.generate_async([500 + i] * 20, params(max_tokens=2))
        later = [e async for e in llm.get_kv_cache_events_async(timeout=0.05)]
        removed = [h for e in later if e["data"]["type"] == "removed" for h in e["data"]["block_hashes"]]
        all_stored = [b["block_hash"] for e in events + later if e["data"]["type"] == "stored"
                      for b in e["data"]["blocks"]]
        assert removed and set(removed) <= set(all_stored)
        assert all(0 <= h < 2**64 for h in all_stored) and any(h >= 2**63 for h in all_stored)


async def test_no_kv_events_without_buffer(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        with pytest.raises(AssertionError):
            llm.get_kv_cache_events_async(timeout=0.05)  # no request submitted yet
        await llm.generate_async(PROMPT, params(max_tokens=2))
        assert [e async for e in llm.get_kv_cache_events_async(timeout=0.05)] == []


async def test_iteration_stats(model_dir: Path) -> None:
    with make_llm(model_dir, enable_iter_perf_stats=True) as llm:
        assert [s async for s in llm.get_stats_async(timeout=0.05)] == []  # nothing submitted yet
        await llm.generate_async(PROMPT, params(max_tokens=3))
        stats_stream = llm.get_stats_async(timeout=0.05)
        stats = [s async for s in stats_stream]
        assert len(stats) == 3 and stats_stream is llm.get_stats_async(timeout=0.05)
        first = stats[0]
        assert first["numActiveRequests"] == 1 and first["maxNumActiveRequests"] == 2048
        assert first["kvCacheStats"]["maxNumBlocks"] == 4096 and first["kvCacheStats"]["tokensPerBlock"] == 32
        assert first["inflightBatchingStats"]["numContextRequests"] == 1
        assert stats[-1]["numCompletedRequests"] == 1
        assert [s["iter"] for s in stats] == sorted(s["iter"] for s in stats)
    with make_llm(model_dir) as quiet:
        await quiet.generate_async(PROMPT, params(max_tokens=2))
        assert [s async for s in quiet.get_stats_async(timeout=0.05)] == []


# -- disaggregation -------------------------------------------------------------------------------------------


async def test_context_then_generation_equals_aggregated(model_dir: Path) -> None:
    with make_llm(model_dir) as agg, make_llm(model_dir) as prefill, make_llm(model_dir) as decode:
        expected = (await agg.generate_async(PROMPT, params(max_tokens=8))).outputs[0].token_ids

        ctx_params = params(max_tokens=8)
        ctx = await prefill.generate_async(PROMPT, ctx_params,
                                           disaggregated_params=DisaggregatedParams(request_type="context_only"))
        assert ctx_params.max_tokens == 1  # the caller's object is mutated
        out = ctx.outputs[0]
        assert out.token_ids == expected[:1] and out.finish_reason == "length"
        dp = out.disaggregated_params
        assert dp is ctx.disaggregated_params
        assert (dp.request_type, dp.first_gen_tokens, dp.draft_tokens) == ("context_only", expected[:1], None)
        assert isinstance(dp.ctx_request_id, int) and isinstance(dp.opaque_state, bytes)
        assert b"\x00\xff" in dp.opaque_state

        dp.request_type = "generation_only"
        gen = await decode.generate_async(PROMPT, params(max_tokens=8), disaggregated_params=dp)
        assert gen.outputs[0].token_ids == expected  # first_gen_tokens[0] is the first output token
        assert gen.outputs[0].finish_reason == "length"

        streamed = decode.generate_async(PROMPT, params(max_tokens=8), disaggregated_params=dp, streaming=True)
        diffs = [list(step.outputs[0].token_ids_diff) async for step in streamed]
        assert diffs[0] == expected[:2] and sum(diffs, []) == expected


async def test_tampered_opaque_state_fails_like_a_kv_transfer(model_dir: Path) -> None:
    with make_llm(model_dir) as prefill, make_llm(model_dir) as decode:
        ctx = await prefill.generate_async(PROMPT, params(), disaggregated_params=DisaggregatedParams(
            request_type="context_only"))
        dp = ctx.outputs[0].disaggregated_params
        state = bytearray(dp.opaque_state)
        state[-1] ^= 0x01
        bad = DisaggregatedParams(request_type="generation_only", first_gen_tokens=dp.first_gen_tokens,
                                  ctx_request_id=dp.ctx_request_id, opaque_state=bytes(state))
        with pytest.raises(RequestError, match="^Error in kv cache transfer for generation requests$"):
            await decode.generate_async(PROMPT, params(), disaggregated_params=bad)
        streamed = decode.generate_async(PROMPT, params(), disaggregated_params=bad, streaming=True)
        with pytest.raises(RequestError):
            async for _ in streamed:
                pass
        ok = DisaggregatedParams(request_type="generation_only", first_gen_tokens=dp.first_gen_tokens,
                                 ctx_request_id=dp.ctx_request_id, opaque_state=dp.opaque_state)
        assert (await decode.generate_async(PROMPT, params(), disaggregated_params=ok)).finished


# -- argument checks and lifecycle ------------------------------------------------------------------------------


async def test_generate_async_argument_errors(model_dir: Path) -> None:
    with make_llm(model_dir, max_num_tokens=16) as llm:
        with pytest.raises(ValueError, match="tokenizer is required to reset end_id"):
            llm.generate_async(PROMPT, SamplingParams())
        with pytest.raises(TypeError, match="must be type SamplingParams or None"):
            llm.generate_async(PROMPT, {"max_tokens": 2})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Invalid type of inputs"):
            llm.generate_async((1, 2, 3), params())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"The sum of prompt length \(20.0\), query length \(0\) should not "
                                             r"exceed max_num_tokens \(16\)"):
            llm.generate_async(PROMPT, params())
        with pytest.raises(RuntimeError, match="is not processed by tokenizer"):
            llm.generate_async(PROMPT[:4], params(stop="x"))
        # generation-only requests skip the max_num_tokens check (then this one fails its KV transfer)
        gen_only = llm.generate_async({"prompt_token_ids": PROMPT}, params(max_tokens=1),
                                      disaggregated_params=DisaggregatedParams(
                                          request_type="generation_only", first_gen_tokens=[5],
                                          ctx_request_id=1, opaque_state=b"x"))
        with pytest.raises(RequestError):
            await gen_only
        assert not gen_only.finished  # as real: the error is raised before the result is marked done
    with make_llm(model_dir, max_num_tokens=16, enable_chunked_prefill=True) as chunked:
        assert (await chunked.generate_async(PROMPT, params(max_tokens=2))).finished


async def test_shutdown_is_idempotent_and_final(model_dir: Path) -> None:
    llm = make_llm(model_dir)
    pending = llm.generate_async(PROMPT, params(max_tokens=100_000), streaming=True)
    llm.shutdown()
    llm.shutdown()
    with pytest.raises(RuntimeError, match="^LLM is shutting down$"):
        llm.generate_async(PROMPT, params())
    with pytest.raises(RequestError):
        await pending
    with pytest.raises(RuntimeError, match="can not be pickled"):
        llm.__getstate__()


@pytest.mark.slow  # transformers.AutoTokenizer's first import (torch included) takes 5-10 s
def test_tokenizer_text_prompt_and_sync_generate(model_dir: Path) -> None:
    llm = LLM(str(model_dir))
    try:
        assert llm.tokenizer is not None and llm.tokenizer.eos_token_id == EOS
        sp = SamplingParams(max_tokens=6, stop=["\n\n\n\n\n\n\n\n"])  # end_id/pad_id come from the tokenizer
        out = llm.generate("def main():", sp, use_tqdm=False)
        assert (sp.end_id, sp.pad_id) == (EOS, 2)
        assert out.prompt == "def main():" and out.prompt_token_ids == llm.tokenizer.encode("def main():")
        assert len(out.outputs[0].token_ids) == 6
        assert out.outputs[0].text == llm.tokenizer.decode(out.outputs[0].token_ids, skip_special_tokens=True)
        batch = llm.generate([PROMPT, PROMPT[:5]], SamplingParams(max_tokens=2), use_tqdm=False)
        assert [len(r.outputs[0].token_ids) for r in batch] == [2, 2]
    finally:
        llm.shutdown()


async def test_concurrent_requests(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        results = await asyncio.gather(*(llm.generate_async([200 + i] * 5, params(max_tokens=5)) for i in range(8)))
        assert len({r.request_id for r in results}) == 8
        assert all(len(r.outputs[0].token_ids) == 5 for r in results)


# -- guided decoding (simulated: _double_guided) -----------------------------------------------------------

GuidedDecodingParams = _llmapi.GuidedDecodingParams
SCHEMA = {"type": "object", "required": ["ok", "n"], "additionalProperties": False,
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 2}}}


def test_guided_decoding_params_as_real() -> None:
    g = GuidedDecodingParams(regex="[ab]+")
    assert (g.json, g.regex, g.grammar, g.json_object, g.structural_tag) == (None, "[ab]+", None, False, None)
    with pytest.raises(ValueError, match="Only one guide can be used for a request, but got 2"):
        params(guided_decoding=GuidedDecodingParams(json="{}", regex="a"))
    with pytest.raises(TypeError):
        GuidedDecodingParams("[ab]+")  # keyword-only, as the real dataclass


async def test_a_guided_backend_makes_the_output_satisfy_the_guide(model_dir: Path) -> None:
    import jsonschema

    with make_llm(model_dir, skip_tokenizer_init=False, guided_decoding_backend="xgrammar") as llm:
        tok = llm.tokenizer

        async def text(guide: object, **kw: object) -> tuple[str, str | None]:
            out = (await llm.generate_async(PROMPT, params(max_tokens=64, guided_decoding=guide, **kw))).outputs[0]
            return tok.decode(out.token_ids, skip_special_tokens=True), out.finish_reason

        value, reason = await text(GuidedDecodingParams(json=json.dumps(SCHEMA)))
        jsonschema.validate(json.loads(value), SCHEMA)
        assert reason == "stop"  # then EOS, the only token a completed guide allows
        assert await text(GuidedDecodingParams(json_object=True)) == ("{}", "stop")
        picks = {(await text(GuidedDecodingParams(regex="(red|green|blue)"), temperature=1.0, seed=s))[0]
                 for s in range(10)}
        assert picks <= {"red", "green", "blue"} and len(picks) > 1
        matched, _ = await text(GuidedDecodingParams(regex=r"[a-c]{3}\d+x?"))
        assert __import__("re").fullmatch(r"[a-c]{3}\d+x?", matched)
        with pytest.raises(ValueError, match="does not simulate grammar guides"):
            llm.generate_async(PROMPT, params(guided_decoding=GuidedDecodingParams(grammar='root ::= "a"')))


async def test_without_a_guided_backend_the_guide_has_no_effect(model_dir: Path) -> None:
    with make_llm(model_dir) as llm:
        guided = await llm.generate_async(PROMPT, params(max_tokens=8, guided_decoding=GuidedDecodingParams(
            json_object=True)))
        plain = await llm.generate_async(PROMPT, params(max_tokens=8))
        assert guided.outputs[0].token_ids == plain.outputs[0].token_ids
