"""Build a tiny Llama model with a real tokenizer, offline, in a few seconds.

Tests and examples cannot reach the Hugging Face hub, so they build this model locally: random
weights from a fixed seed (deterministic) and a byte-level BPE tokenizer trained on Python's own
standard-library sources. The shapes fit vLLM's CPU attention (head_dim 32, KV blocks of 32).

    python -m dynamo.llm.tiny_model OUT_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path
from typing import Any

#: bump when anything below changes what gets built, so stale directories are rebuilt
BUILD_VERSION = 1
MARKER_FILE = "dynamo-tiny-model.json"

VOCAB_SIZE = 1024
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
MODEL_CONFIG: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=2048,
)
# "<|role|>\ncontent\n" per message; the generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# A fixed list (in a fixed order) of standard-library modules to train the tokenizer on.
CORPUS_FILES = (
    "argparse.py", "asyncio/base_events.py", "collections/__init__.py", "dataclasses.py",
    "json/decoder.py", "json/encoder.py", "logging/__init__.py", "pathlib.py", "string.py",
    "textwrap.py", "typing.py",
)


def _build_params(seed: int) -> dict[str, object]:
    return {"version": BUILD_VERSION, "seed": seed, "config": MODEL_CONFIG}


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in CORPUS_FILES
             if (stdlib / name).is_file()]
    if not texts:
        raise RuntimeError(f"no tokenizer training text found under {stdlib}; "
                           "is the Python standard library installed?")
    return texts


def _build_tokenizer(out_dir: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    ids = {name: tokenizer.token_to_id(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}
    missing = [name for name, token_id in ids.items() if token_id is None]
    if missing:
        raise RuntimeError(f"the trained tokenizer lacks the special token(s) {missing}")
    return {name: token_id for name, token_id in ids.items() if token_id is not None}


def _build_weights(out_dir: Path, seed: int, ids: dict[str, int]) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL_CONFIG, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                         pad_token_id=ids["pad"])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                     pad_token_id=ids["pad"]).save_pretrained(str(out_dir))


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny model into `out_dir` (created if needed) and return it.

    Idempotent: if `out_dir` already holds a model built with the same parameters, nothing is done.
    """
    out_dir = Path(out_dir)
    marker = out_dir / MARKER_FILE
    params = _build_params(seed)
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return out_dir
        except ValueError:
            pass  # a torn marker: rebuild
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    ids = _build_tokenizer(out_dir)
    _build_weights(out_dir, seed, ids)
    # Written last, so an interrupted build is never taken for a finished one.
    marker.write_text(json.dumps(params))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the tiny offline test model.")
    parser.add_argument("out_dir", type=Path, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
