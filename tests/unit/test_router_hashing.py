"""The router's block hashes: the numpy path (long prompts) and the pure-Python path (KV events of a
few blocks) give the same chain; a chain continues from a parent; equal hashes only for equal prefixes."""

from __future__ import annotations

import random

import pytest

from dynamo.frontend.router import hashing
from dynamo.frontend.router.hashing import block_hashes, prompt_hashes


@pytest.mark.parametrize("block_size", [1, 4, 16, 32])
def test_numpy_and_python_paths_agree_and_chains_continue(block_size: int) -> None:
    rng = random.Random(block_size)
    for n in (0, 1, 3, 4, 5, 8, 63, 64, 65, 200, 1500):
        tokens = [rng.randrange(2**32) for _ in range(n * block_size + rng.randrange(block_size))]
        full = block_hashes(tokens, block_size)
        assert len(full) == n and list(prompt_hashes(tokens, block_size)) == full
        assert full == hashing._block_hashes_py(tokens, block_size, n, hashing._ROOT)
        for cut in {1, n // 2, n - 1} - {0, n} if n > 1 else set():
            rest = block_hashes(tokens[cut * block_size:], block_size, full[cut - 1])
            assert block_hashes(tokens[:cut * block_size], block_size) + rest == full


def test_hashes_tell_prefixes_apart() -> None:
    rng = random.Random(0)
    base = [rng.randrange(50_000) for _ in range(16 * 100)]
    seen: dict[int, tuple[int, int]] = {}
    for variant in range(50):  # one token changed somewhere, or blocks swapped: a different chain from there
        tokens = list(base)
        at = rng.randrange(len(tokens))
        tokens[at] = (tokens[at] + 1 + variant) % 50_000
        hashes = block_hashes(tokens, 16)
        assert hashes[:at // 16] == block_hashes(base, 16)[:at // 16]
        for i in range(at // 16, 100):
            assert seen.setdefault(hashes[i], (variant, i)) == (variant, i)
    swapped = base[16:32] + base[:16] + base[32:]
    assert block_hashes(swapped, 16)[1:] != block_hashes(base, 16)[1:]


def test_token_ids_out_of_range_are_refused_on_both_paths() -> None:
    for n in (1, 100):
        with pytest.raises(OverflowError):
            block_hashes([-1] * 16 * n, 16)
        with pytest.raises(OverflowError):
            block_hashes([2**32] * 16 * n, 16)
