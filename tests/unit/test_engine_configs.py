"""Every engine option file under engine_configs/ loads into valid engine arguments."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dynamo.trtllm import args as targs

CONFIGS = Path(__file__).resolve().parents[2] / "engine_configs"
TRTLLM_FILES = sorted((CONFIGS / "trtllm").glob("*/*.yaml"))
VLLM_FILES = sorted((CONFIGS / "vllm").glob("*/*.yaml"))


def test_every_model_has_every_role() -> None:
    for engine in ("trtllm", "vllm", "sglang"):
        models = sorted(p.name for p in (CONFIGS / engine).iterdir() if p.is_dir())
        assert models == ["deepseek-r1-distill-llama-8b", "llama-3.1-8b-instruct", "qwen3-0.6b"], engine
        for model in models:
            assert sorted(p.name for p in (CONFIGS / engine / model).glob("*.yaml")) == [
                "agg.yaml", "decode.yaml", "prefill.yaml"], (engine, model)


def trtllm_args(path: Path) -> dict[str, object]:
    p = argparse.ArgumentParser()
    targs.add_engine_args(p)
    return targs.engine_llm_args(p.parse_args(["--model-path", "/models/m", "--extra-engine-args", str(path)]))


@pytest.mark.parametrize("path", TRTLLM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_trtllm_files_merge_into_valid_llm_arguments(path: Path, trtllm_double: None) -> None:
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs  # the double mirrors TensorRT-LLM's fields

    args = trtllm_args(path)
    validated = TorchLlmArgs(**args)  # nested configs validated with extra="forbid", as TensorRT-LLM does
    assert validated.kv_cache_config.tokens_per_block == 32
    role = path.stem
    if role == "prefill":
        assert args["disable_overlap_scheduler"] is True and "cache_transceiver_config" in args
    if role == "decode":
        assert args.get("disable_overlap_scheduler") is False and "cache_transceiver_config" in args


def test_a_typo_in_a_trtllm_file_is_an_error_naming_it(tmp_path: Path, trtllm_double: None) -> None:
    bad = tmp_path / "agg.yaml"
    bad.write_text(TRTLLM_FILES[0].read_text().replace("enable_chunked_prefill", "enable_chunked_prefil"))
    with pytest.raises(ValueError, match=rf"{bad}: unknown TensorRT-LLM argument 'enable_chunked_prefil'.*"
                                         r"did you mean 'enable_chunked_prefill'"):
        trtllm_args(bad)


@pytest.mark.vllm
@pytest.mark.parametrize("path", VLLM_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_vllm_files_parse_with_vllms_own_parser(path: Path) -> None:
    pytest.importorskip("vllm", reason="needs vLLM")
    from dynamo.vllm.engine import VllmEngine

    parser = VllmEngine.make_parser("t")
    VllmEngine.add_cli_args(parser)
    ns = parser.parse_args(["--model", "/models/m", "--config", str(path)])
    assert ns.block_size == 32 and ns.enable_chunked_prefill is True and ns.max_model_len > 0
