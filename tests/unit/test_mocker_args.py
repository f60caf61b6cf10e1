"""The mocker's flags and how MockerConfig is resolved from a model directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dynamo.mocker.args import MockerConfig, add_mocker_args, mocker_config_from_namespace


def parse(*argv: str) -> MockerConfig:
    parser = argparse.ArgumentParser()
    add_mocker_args(parser)
    return mocker_config_from_namespace(parser.parse_args(list(argv)))


def write_model(tmp_path: Path, **cfg: object) -> Path:
    model = tmp_path / "tiny-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(cfg))
    return model


def test_defaults_without_a_model() -> None:
    cfg = parse()
    assert (cfg.num_gpu_blocks, cfg.block_size, cfg.max_num_seqs, cfg.max_num_batched_tokens) == (16384, 64, 256, 8192)
    assert cfg.enable_prefix_caching is True
    assert cfg.speedup_ratio == 1.0 and cfg.kv_transfer_bandwidth == 64.0 and cfg.mocker_seed == 0
    assert cfg.served_model_name == "mocker" and cfg.vocab_size == 32000 and cfg.eos_token_ids == []


def test_model_dir_supplies_vocab_context_and_eos(tmp_path: Path) -> None:
    model = write_model(tmp_path, vocab_size=1024, max_position_embeddings=2048, eos_token_id=[2, 3])
    cfg = parse("--model", str(model), "--no-enable-prefix-caching", "--speedup-ratio", "50")
    assert (cfg.vocab_size, cfg.max_model_len, cfg.eos_token_ids) == (1024, 2048, [2, 3])
    assert cfg.served_model_name == "tiny-model"
    assert cfg.enable_prefix_caching is False and cfg.speedup_ratio == 50


def test_flags_override_the_model(tmp_path: Path) -> None:
    model = write_model(tmp_path, vocab_size=1024, max_position_embeddings=2048, eos_token_id=2)
    cfg = parse("--model", str(model), "--max-model-len", "512", "--served-model-name", "m")
    assert (cfg.max_model_len, cfg.served_model_name, cfg.eos_token_ids) == (512, "m", [2])


def test_context_is_capped_at_the_kv_capacity(tmp_path: Path) -> None:
    model = write_model(tmp_path, vocab_size=100, max_position_embeddings=4096)
    assert parse("--model", str(model), "--num-gpu-blocks", "4", "--block-size", "16").max_model_len == 64
    with pytest.raises(ValueError, match="--num-gpu-blocks"):
        parse("--model", str(model), "--num-gpu-blocks", "4", "--block-size", "16", "--max-model-len", "128")


def test_bad_inputs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config.json"):
        parse("--model", str(tmp_path))
    with pytest.raises(ValueError, match="speedup-ratio"):
        parse("--speedup-ratio", "0")
    model = write_model(tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="contradicts"):
        parse("--model", str(model), "--vocab-size", "50")
