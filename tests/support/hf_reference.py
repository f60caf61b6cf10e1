"""The tiny model's ground truth: greedy decoding with HF transformers on the same weights."""

from __future__ import annotations

import random
from pathlib import Path


def random_prompt(seed: int, length: int) -> list[int]:
    """Token ids that avoid the special tokens <s> </s> <pad> (ids 0-2)."""
    rng = random.Random(seed)
    return [rng.randrange(3, 1024) for _ in range(length)]


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

    def eos_prompt(self, eos_id: int, length: int = 4, candidates: int = 4096) -> list[int]:
        """A prompt whose greedy next token is `eos_id`, by the widest margin among candidates."""
        prompts = [random_prompt(10_000 + i, length) for i in range(candidates)]
        top2 = self.next_token_logits(prompts).topk(2, dim=-1)
        rows = [i for i in range(len(prompts)) if int(top2.indices[i, 0]) == eos_id]
        if not rows:
            raise AssertionError("no candidate prompt makes the model emit EOS; widen the search")
        best = max(rows, key=lambda i: float(top2.values[i, 0] - top2.values[i, 1]))
        return prompts[best]
