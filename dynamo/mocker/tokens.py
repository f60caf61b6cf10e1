"""Deterministic pseudo-random output tokens.

An output token depends only on (mocker seed, prompt, sampling seed when sampling, position in the
output) and on the stop conditions that ban tokens at that position. It does not depend on timing,
batching, preemption or which worker produced it, which is what lets a prefill worker's first token
plus a decode worker's continuation equal the aggregated output of the same prompt.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence

from dynamo.llm.protocol import SamplingOptions, TokenLogprob

_MASK64 = (1 << 64) - 1


def hash_tokens(token_ids: Sequence[int], prefix: bytes = b"") -> int:
    """A stable 64-bit hash of token ids (blake2b; Python's hash() is salted per process)."""
    digest = hashlib.blake2b(prefix + array("Q", token_ids).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def request_seed(mocker_seed: int, prompt: Sequence[int], sampling: SamplingOptions) -> int:
    """The per-request seed: greedy requests ignore sampling.seed, as real engines do."""
    sampling_seed = sampling.seed if (not sampling.is_greedy and sampling.seed is not None) else None
    tag = f"mocker:{mocker_seed}:{sampling_seed}:".encode()
    return hash_tokens(prompt, tag)


def _mix(seed: int, position: int) -> int:
    """A well-mixed 64-bit value of (seed, position): CPython's tuple hash (xxHash's mixing; unsalted
    for ints, so the same in every process). Five times cheaper than a splitmix64 on Python ints,
    and it runs for every output token."""
    return hash((seed, position)) & _MASK64


class TokenSampler:
    """Picks the token at an output position; never an EOS id unless EOS is simulated (eos_rate > 0)."""

    def __init__(self, vocab_size: int, eos_token_ids: Iterable[int], eos_rate: float = 0.0) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = [t for t in eos_token_ids if 0 <= t < vocab_size]
        self._eos = frozenset(self.eos_token_ids)
        self.eos_rate = eos_rate

    def sample(self, seed: int, position: int, *, ban: frozenset[int] = frozenset(),
               allow_eos: bool = True) -> int:
        """Token at output `position`. `ban` holds ids that must not appear there (e.g. stop ids
        before min_tokens); EOS is produced with probability eos_rate when `allow_eos`."""
        r = _mix(seed, position)
        if allow_eos and self.eos_rate > 0 and self.eos_token_ids:
            if (r >> 40) / float(1 << 24) < self.eos_rate:
                return self.eos_token_ids[0]
        token = r % self.vocab_size
        if token in self._eos or token in ban:
            # walk to the next allowed id; bounded so a ban list covering the vocab cannot hang us
            for _ in range(self.vocab_size):
                token = (token + 1) % self.vocab_size
                if token not in self._eos and token not in ban:
                    break
        return token

    @staticmethod
    def logprob(seed: int, position: int, token_id: int, top_n: int, vocab_size: int) -> TokenLogprob:
        """Plausible-looking, deterministic logprobs: the chosen token is the most likely one."""
        r = _mix(seed ^ 0x5BD1E995, position)
        chosen = -((r & 0xFFFF) / 65536.0) * 0.5  # in (-0.5, 0]
        top: list[tuple[int, float]] = []
        if top_n > 0:
            top.append((token_id, chosen))
            for i in range(1, top_n):
                alt = (token_id + i * 7919) % vocab_size
                top.append((alt, chosen - 1.0 - i * 0.5))
        return TokenLogprob(token_id=token_id, logprob=chosen, top=top)
