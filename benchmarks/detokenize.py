"""What incremental detokenization costs the frontend per request, by output size.

    .venv/bin/python -m benchmarks.detokenize [--requests 200] [--tokens 128] [--repeat 9]

In one process, no servers: the tiny model's tokenizer (built if missing), the mocker's own token
sampler for the ids (what the frontend detokenizes in `frontend_mocker.py`), and each request's ids
fed in outputs of a fixed size, as the frontend receives them: a first output of one token, then
outputs of 1, 4, 16, 35 or 64 tokens (under load, pacing and joining make them tens of tokens).
Compared: `Detokenizer` (DecodeStream for outputs of fewer than WINDOW_FROM_IDS ids, else one
decode of a short context plus the output) and, the baseline, every output through tokenizers'
DecodeStream (which keeps the whole previous output as context: what every request used before),
taking turns; the best of --repeat rounds (microseconds per request), and the ratio baseline / ours (> 1:
ours is cheaper). The A/A line runs the baseline against itself: the noise floor.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from benchmarks._common import ensure_tiny_model
from dynamo.frontend.detokenize import Detokenizer
from dynamo.frontend.tokenizer import ModelTokenizer
from dynamo.mocker.tokens import TokenSampler

SIZES = (1, 4, 16, 35, 64)


class DecodeStreamOnly(Detokenizer):
    """The baseline: every output stepped through DecodeStream, whatever its size."""

    __slots__ = ()

    def step_many(self, token_ids: list[int]) -> str:
        return self._step_stream(token_ids)


def _outputs(ids: list[int], size: int) -> list[list[int]]:
    return [ids[:1]] + [ids[i:i + size] for i in range(1, len(ids), size)]


def _per_request_us(make: Callable[[], Detokenizer], requests: list[list[list[int]]]) -> float:
    start = time.perf_counter()
    for outputs in requests:
        detok = make()
        for out in outputs:
            detok.step_many(out)
        detok.flush()
    return (time.perf_counter() - start) / len(requests) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--tokens", type=int, default=128, help="output tokens per request")
    p.add_argument("--repeat", type=int, default=9, help="rounds; the best of each is kept")
    a = p.parse_args()
    from transformers import AutoTokenizer

    tok = ModelTokenizer(hf=AutoTokenizer.from_pretrained(str(ensure_tiny_model())), chat_template=None)
    sampler = TokenSampler(tok.vocab_size, [])
    ids = [[sampler.sample(1000 + r, pos) for pos in range(a.tokens)] for r in range(a.requests)]
    variants: dict[str, Callable[[], Detokenizer]] = {
        "Detokenizer": lambda: Detokenizer(tok.fast, tok.hf),
        "DecodeStream (baseline)": lambda: DecodeStreamOnly(tok.fast, tok.hf),
        "DecodeStream (A/A)": lambda: DecodeStreamOnly(tok.fast, tok.hf),
    }
    best = {(name, size): float("inf") for name in variants for size in SIZES}
    for _ in range(a.repeat):
        for size in SIZES:
            requests = [_outputs(r, size) for r in ids]
            for name, make in variants.items():
                best[name, size] = min(best[name, size], _per_request_us(make, requests))
    print(f"us per request of {a.tokens} tokens (best of {a.repeat}), by tokens per output")
    print(f"{'':<24}" + "".join(f"{s:>9}" for s in SIZES))
    for name in variants:
        print(f"{name:<24}" + "".join(f"{best[name, s]:>9.1f}" for s in SIZES))
    base = "DecodeStream (baseline)"
    for label, name in (("baseline / Detokenizer", "Detokenizer"), ("baseline / A/A", "DecodeStream (A/A)")):
        print(f"{label:<24}" + "".join(f"{best[base, s] / best[name, s]:>8.2f}x" for s in SIZES))


if __name__ == "__main__":
    main()
