"""Fixtures for the vLLM adapter tests: env for vLLM on CPU, engine args, a HF reference."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

# vLLM on CPU: no hub access, a small KV cache (GiB). Set before any engine process is spawned.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def random_prompt(seed: int, length: int) -> list[int]:
    """Token ids that avoid the special tokens <s> </s> <pad> (ids 0-2)."""
    rng = random.Random(seed)
    return [rng.randrange(3, 1024) for _ in range(length)]


@pytest.fixture(scope="session")
def tiny_engine_kwargs(tiny_model_dir: Path) -> dict[str, object]:
    """AsyncEngineArgs for the tiny model on CPU (fp32: greedy output then equals HF)."""
    return dict(model=str(tiny_model_dir), dtype="float32", enforce_eager=True, max_model_len=1024)


@pytest.fixture(scope="session")
def make_prompt():
    """`make_prompt(seed, length)`: deterministic token ids without special tokens."""
    return random_prompt


class HfReference:
    """Greedy decoding with HF transformers on the same weights: the ground truth."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import LlamaForCausalLM

        self._torch = torch
        self.model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Argmax decoding that never stops early (EOS included), with the model's KV cache."""
        torch = self._torch
        out: list[int] = []
        with torch.no_grad():
            result = self.model(torch.tensor([prompt]), use_cache=True)
            for _ in range(max_new_tokens):
                token = int(result.logits[0, -1].argmax())
                out.append(token)
                result = self.model(torch.tensor([[token]]), past_key_values=result.past_key_values,
                                    use_cache=True)
        return out

    def next_token_logits(self, prompts: list[list[int]]):
        """Last-position logits for equal-length prompts, as one batch."""
        torch = self._torch
        with torch.no_grad():
            return self.model(torch.tensor(prompts)).logits[:, -1, :]


@pytest.fixture(scope="session")
def hf_reference(tiny_model_dir: Path) -> HfReference:
    return HfReference(tiny_model_dir)
