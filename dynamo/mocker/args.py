"""The mocker's own flags and the MockerConfig they produce.

The common worker flags (--namespace, --component, --endpoint, --discovery-backend, --grpc-port,
--is-prefill-worker, --disaggregation-mode, --system-port) belong to the worker shell, not here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 32000
DEFAULT_MAX_MODEL_LEN = 8192
# A nominal 8B Llama: 2 (K and V) x 32 layers x 8 KV heads x 128 head dim x 2 bytes (bf16).
DEFAULT_KV_BYTES_PER_TOKEN = 2 * 32 * 8 * 128 * 2
HANDOFF_MODES = ("pull", "bootstrap")


@dataclass
class TimingModel:
    """Simulated cost of one engine step (one batch), in milliseconds at speedup 1.

    step = step_overhead_ms
         + prefill_ms_per_token * max(0, T - memory_bound_tokens)
         + prefill_attn_ms_per_token_pair * P
         + decode_ms_per_seq * D
         + decode_ms_per_context_token * K

    T: tokens the step computes (new prompt tokens + one per decoding sequence): the linear layers
       read the weights once a step (the overhead), so the first `memory_bound_tokens` are free;
    P: causal (query, key) pairs of the prefill chunks (a chunk of n tokens after k computed ones:
       n*k + n*(n+1)/2);
    D, K: decoding sequences and the KV tokens they read (their contexts, summed).

    The defaults model Llama-3-8B (16-bit, TP1) on one H100-SXM running vLLM's kernels, derived from
    Vidur's measured operator profiles; the source files and the arithmetic are in timing.py.
    """

    step_overhead_ms: float = 6.52
    prefill_ms_per_token: float = 0.0220
    prefill_attn_ms_per_token_pair: float = 1.01e-6
    decode_ms_per_seq: float = 0.0025
    decode_ms_per_context_token: float = 5.03e-5
    memory_bound_tokens: float = 135.0

    def validate(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"timing.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"timing.{name} must be a finite number >= 0, got {value}")

    @classmethod
    def from_json(cls, text: str) -> TimingModel:
        """The defaults with the fields of a JSON object replaced, e.g. '{"step_overhead_ms": 5}'."""
        try:
            given = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--mocker-timing is not valid JSON ({e})") from None
        if not isinstance(given, dict):
            raise ValueError(f"--mocker-timing must be a JSON object, got {text!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise ValueError(f"--mocker-timing: unknown field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        model = cls(**given)
        model.validate()
        return model


@dataclass
class MockerConfig:
    """Everything the simulated engine needs; resolved values (no 'read it from the model' left)."""

    model_path: str | None = None
    # a local directory with the model's config and tokenizer files (model_path, or the hub snapshot
    # of a hub id); its tokenizer.json lets the mocker honour structured-output constraints
    config_dir: str | None = None
    served_model_name: str = "mocker"
    vocab_size: int = DEFAULT_VOCAB_SIZE
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    eos_token_ids: list[int] = field(default_factory=list)
    num_gpu_blocks: int = 16384
    block_size: int = 64
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    speedup_ratio: float = 1.0
    kv_transfer_bandwidth: float = 64.0  # GB/s (1e9 bytes/s) from a prefill worker to a decode worker
    kv_bytes_per_token: int = DEFAULT_KV_BYTES_PER_TOKEN
    mocker_seed: int = 0
    eos_rate: float = 0.0  # probability per output token of emitting EOS (0: never, run to max_tokens)
    kv_event_buffer: int = 10000  # KV events kept for a slow reader; the oldest are dropped first
    # prefill -> decode handoff (disagg.py): "pull" (the decode side brings the prefill's result,
    # as vLLM) or "bootstrap" (prefill and decode run together and meet in a room, as SGLang)
    handoff: str = "pull"
    bootstrap_port: int = 0  # a bootstrap-mode prefill worker's rendezvous port (0: a free one)
    bootstrap_timeout: float = 60.0  # the most a decode side waits in its room
    timing: TimingModel = field(default_factory=TimingModel)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        positive = ("vocab_size", "max_model_len", "num_gpu_blocks", "block_size", "max_num_seqs",
                    "max_num_batched_tokens", "kv_event_buffer")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.speedup_ratio > 0:
            raise ValueError(f"--speedup-ratio must be > 0, got {self.speedup_ratio}")
        if not self.kv_transfer_bandwidth > 0:
            raise ValueError(f"--kv-transfer-bandwidth must be > 0 GB/s, got {self.kv_transfer_bandwidth}")
        if self.kv_bytes_per_token < 0:
            raise ValueError(f"--kv-bytes-per-token must be >= 0, got {self.kv_bytes_per_token}")
        if not 0 <= self.eos_rate <= 1:
            raise ValueError(f"--mocker-eos-rate must be in [0, 1], got {self.eos_rate}")
        bad_eos = [t for t in self.eos_token_ids if not 0 <= t < self.vocab_size]
        if bad_eos:
            raise ValueError(f"eos token ids {bad_eos} are outside the vocabulary of {self.vocab_size}")
        if self.handoff not in HANDOFF_MODES:
            raise ValueError(f"--disaggregation-handoff must be one of {', '.join(HANDOFF_MODES)}, got {self.handoff!r}")
        if not 0 <= self.bootstrap_port < 65536:
            raise ValueError(f"--disaggregation-bootstrap-port must be in [0, 65535], got {self.bootstrap_port}")
        if not self.bootstrap_timeout > 0:
            raise ValueError(f"--bootstrap-timeout must be > 0 s, got {self.bootstrap_timeout}")
        self.timing.validate()

    @property
    def kv_capacity_tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size


@dataclass
class ModelFacts:
    vocab_size: int
    max_position_embeddings: int | None
    eos_token_ids: list[int]


# What the mocker and the frontend read of a hub model: its config and tokenizer, never weights.
_HUB_FILES = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
              "merges.txt", "*.jinja", "chat_template*"]


def model_config_dir(model: str) -> str:
    """A local directory holding `model`'s config.json: `model` itself, or, for a hub id such as
    Qwen/Qwen3-0.6B (a pod in a cluster), the hub snapshot of its config and tokenizer files."""
    if Path(model).is_dir() or Path(model).is_absolute() or model.startswith("."):
        return model
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"--model {model}: not a directory here, and huggingface_hub (to fetch it as a "
                         "hub id) is not installed") from None
    try:
        return str(snapshot_download(model, allow_patterns=_HUB_FILES))
    except Exception as e:  # offline, unknown repo, no access: one clear line instead of a traceback
        raise ValueError(f"--model {model}: not a directory here, and fetching it from the hub failed "
                         f"({type(e).__name__}: {e})") from None


def read_model_facts(model_dir: str | os.PathLike[str]) -> ModelFacts:
    """Read vocab_size, max_position_embeddings and eos_token_id from a HF-style config.json."""
    path = Path(model_dir) / "config.json"
    try:
        cfg: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"--model {model_dir}: no config.json there; pass a HF-style model directory "
                         f"or omit --model and give --vocab-size") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--model {model_dir}: config.json is not valid JSON ({e})") from None
    # multimodal configs keep the language model's settings in text_config
    text_config = cfg.get("text_config")
    text: dict[str, Any] = text_config if isinstance(text_config, dict) else {}
    vocab = cfg.get("vocab_size", text.get("vocab_size"))
    if not isinstance(vocab, int) or vocab < 1:
        raise ValueError(f"{path}: vocab_size is missing or not a positive integer ({vocab!r})")
    max_pos = cfg.get("max_position_embeddings", text.get("max_position_embeddings"))
    eos = cfg.get("eos_token_id", text.get("eos_token_id"))
    eos_ids = [eos] if isinstance(eos, int) else [t for t in (eos or []) if isinstance(t, int)]
    return ModelFacts(vocab_size=vocab, max_position_embeddings=max_pos if isinstance(max_pos, int) else None,
                      eos_token_ids=eos_ids)


def add_mocker_args(parser: argparse.ArgumentParser) -> None:
    """Add the mocker's flags to the worker shell's parser."""
    g = parser.add_argument_group("mocker engine")
    g.add_argument("--model", "--model-path", dest="model", default=None, metavar="MODEL",
                   help="HF-style model directory or hub id (its config and tokenizer files are fetched, "
                        "no weights); vocab_size, max_position_embeddings and eos_token_id are read from "
                        "its config.json")
    g.add_argument("--served-model-name", default=None,
                   help="model name clients ask for (default: the model directory's name, or 'mocker')")
    g.add_argument("--vocab-size", type=int, default=None,
                   help=f"vocabulary size when --model is not given (default {DEFAULT_VOCAB_SIZE})")
    g.add_argument("--num-gpu-blocks", type=int, default=16384, help="KV cache size in blocks")
    g.add_argument("--block-size", type=int, default=64, help="tokens per KV block")
    g.add_argument("--max-num-seqs", type=int, default=256, help="most requests running in one batch")
    g.add_argument("--max-num-batched-tokens", type=int, default=8192,
                   help="token budget of one scheduler step (long prompts are prefilled in chunks)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse KV blocks of identical prompt prefixes (and publish KV events)")
    g.add_argument("--speedup-ratio", type=float, default=1.0,
                   help="run the simulated clock this many times faster than real time")
    g.add_argument("--kv-transfer-bandwidth", type=float, default=64.0,
                   help="simulated prefill->decode KV transfer bandwidth in GB/s")
    g.add_argument("--kv-bytes-per-token", type=int, default=DEFAULT_KV_BYTES_PER_TOKEN,
                   help="KV bytes per token, for transfer time (default: a nominal 8B Llama in bf16, "
                        f"{DEFAULT_KV_BYTES_PER_TOKEN})")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length (default: max_position_embeddings of the model, else "
                        f"{DEFAULT_MAX_MODEL_LEN}); capped at the KV cache capacity")
    g.add_argument("--mocker-seed", type=int, default=0, help="seed of the simulated output tokens")
    g.add_argument("--mocker-eos-rate", type=float, default=0.0,
                   help="probability per token of ending with EOS (0: generate up to max_tokens)")
    g.add_argument("--disaggregation-handoff", choices=HANDOFF_MODES, default="pull",
                   help="how a prefill worker hands its KV to a decode worker: 'pull' (the decode request "
                        "brings the prefill's result, as vLLM's NIXL connector) or 'bootstrap' (the prefill "
                        "worker serves a rendezvous port; prefill and decode run at the same time and meet "
                        "in a room, as SGLang)")
    g.add_argument("--disaggregation-bootstrap-port", type=int, default=0,
                   help="bootstrap mode, prefill worker: the rendezvous port (default 0: a free one, "
                        "published in the model card)")
    g.add_argument("--bootstrap-timeout", type=float, default=60.0,
                   help="bootstrap mode, decode side: seconds to wait in a room for the prefill's KV")
    g.add_argument("--mocker-timing", default=None, metavar="JSON",
                   help="step cost model: a JSON object replacing fields of the default (Llama-3-8B on "
                        "one H100), e.g. '{\"step_overhead_ms\": 5, \"decode_ms_per_context_token\": 1e-4}'; "
                        "fields: " + ", ".join(f.name for f in fields(TimingModel)))


def mocker_config_from_namespace(ns: argparse.Namespace) -> MockerConfig:
    """Build the MockerConfig from parsed flags, reading the model's config.json if given."""
    model = getattr(ns, "model", None)
    config_dir = model_config_dir(model) if model else None
    facts = read_model_facts(config_dir) if config_dir else None
    if facts is not None and ns.vocab_size is not None and ns.vocab_size != facts.vocab_size:
        raise ValueError(f"--vocab-size {ns.vocab_size} contradicts {model}/config.json "
                         f"(vocab_size {facts.vocab_size}); drop one of them")
    vocab = facts.vocab_size if facts else (ns.vocab_size or DEFAULT_VOCAB_SIZE)
    max_len = ns.max_model_len or (facts.max_position_embeddings if facts else None) or DEFAULT_MAX_MODEL_LEN
    capacity = ns.num_gpu_blocks * ns.block_size
    if max_len > capacity:
        if ns.max_model_len:
            raise ValueError(f"--max-model-len {max_len} needs more KV cache than --num-gpu-blocks "
                             f"{ns.num_gpu_blocks} x --block-size {ns.block_size} = {capacity} tokens; "
                             f"raise --num-gpu-blocks or lower --max-model-len")
        log.warning("context length %d capped at the KV cache capacity of %d tokens", max_len, capacity)
        max_len = capacity
    # a directory is served by its name, a hub id as itself (as the engines do)
    name = ns.served_model_name or ((Path(model).name if config_dir == model else model) if model else "mocker")
    timing_json = getattr(ns, "mocker_timing", None)
    timing = TimingModel.from_json(timing_json) if timing_json else TimingModel()
    return MockerConfig(
        model_path=model, config_dir=config_dir, served_model_name=name, vocab_size=vocab, max_model_len=max_len,
        eos_token_ids=facts.eos_token_ids if facts else [],
        num_gpu_blocks=ns.num_gpu_blocks, block_size=ns.block_size, max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens, enable_prefix_caching=ns.enable_prefix_caching,
        speedup_ratio=ns.speedup_ratio, kv_transfer_bandwidth=ns.kv_transfer_bandwidth,
        kv_bytes_per_token=ns.kv_bytes_per_token, mocker_seed=ns.mocker_seed, eos_rate=ns.mocker_eos_rate,
        handoff=ns.disaggregation_handoff, bootstrap_port=ns.disaggregation_bootstrap_port,
        bootstrap_timeout=ns.bootstrap_timeout, timing=timing,
    )
