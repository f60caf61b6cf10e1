"""The router's own block hashes: a 64-bit hash chained over the full blocks of a token sequence.

    sum(block)      = sum_k token_k * W_k                      (mod 2^64; W_k: fixed odd 64-bit weights)
    digest(block)   = mix(sum(block))                           (x ^= x >> 32; x *= F; x ^= x >> 29)
    hash(block i)   = K * hash(block i-1) + digest(block i)    (mod 2^64; hash(block -1) = ROOT or the parent)

Equal hashes mean equal prefixes (up to 64-bit collisions), whatever hash the engine uses
internally: the router hashes prompts with this and maps the engines' block hashes onto it from the
tokens their KV events carry, so engines with random per-process hash seeds still match.

Why not XXH3 per block: a chain of XXH3 calls costs a Python-level call per block (~0.15 ms for a
16k-token prompt on top of the list-to-array conversion); here the digests of a whole prompt are one
matrix product in numpy, and the chain is linear in them (block i's hash = K^i * (cumsum_j(digest_j *
K^-j) + K * ROOT)), so numpy chains a long prompt at once too. A few blocks (a KV event) take a
pure-Python path that gives the same values.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

_MASK = (1 << 64) - 1
_K = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64
_K_INV = pow(_K, -1, 1 << 64)
_ROOT = 0x2545F4914F6CDD1D  # the chain's value before the first block
_F = 0xBF58476D1CE4E5B9  # the digest's mixing multiplier (SplitMix64's first)
_NUMPY_FROM_BLOCKS = 4  # below this many blocks numpy's per-call cost outweighs its loop
_NUMPY_CHAIN_FROM_BLOCKS = 64
_NP_32, _NP_29, _NP_F = np.uint64(32), np.uint64(29), np.uint64(_F)  # (made once: numpy scalars cost ~0.5 us)


@lru_cache(maxsize=8)
def _weights(block_size: int) -> tuple[list[int], np.ndarray]:
    """One odd 64-bit weight per position in a block (SplitMix64's sequence from a fixed state)."""
    out, state = [], 0x1234567887654321
    for _ in range(block_size):
        state = (state + _K) & _MASK
        out.append(_splitmix(state) | 1)
    return out, np.array(out, dtype=np.uint64)


def _splitmix(x: int) -> int:  # (only to derive the weights)
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _Powers:
    """K^i and K^-i mod 2^64 for i < n, grown on demand (replaced as one pair: the tokenizing threads
    hash prompts too, and a reader must never see one grown and the other not)."""

    def __init__(self) -> None:
        self._pair = (np.ones(0, dtype=np.uint64), np.ones(0, dtype=np.uint64))

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        up, down = self._pair
        if len(up) < n:
            size = max(n, 2 * len(up), 1024)
            up = np.concatenate(([np.uint64(1)], np.cumprod(np.full(size - 1, _K, dtype=np.uint64))))
            down = np.concatenate(([np.uint64(1)], np.cumprod(np.full(size - 1, _K_INV, dtype=np.uint64))))
            self._pair = (up, down)
        return up[:n], down[:n]


_POWERS = _Powers()


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """The chained hashes of every full block of `token_ids` (continuing from `parent`, the hash of
    the block before the first, when given)."""
    n = len(token_ids) // block_size
    seed = _ROOT if parent is None else parent
    if n < _NUMPY_FROM_BLOCKS:
        return _block_hashes_py(token_ids, block_size, n, seed)
    if n < _NUMPY_CHAIN_FROM_BLOCKS:  # a few blocks (a KV event): the chain costs less in Python
        return _chain_py(_digests(token_ids, block_size, n).tolist(), seed)
    return _chain(token_ids, block_size, n, seed).tolist()


def _chain_py(digests: list[int], seed: int) -> list[int]:
    out: list[int] = []
    append = out.append
    for digest in digests:
        seed = (seed * _K + digest) & _MASK
        append(seed)
    return out


def _digests(token_ids: Sequence[int], block_size: int, n: int) -> np.ndarray:
    tokens = np.frombuffer(array("I", token_ids), dtype=np.uint32)[: n * block_size]
    digests = tokens.reshape(n, block_size).astype(np.uint64) @ _weights(block_size)[1]
    digests ^= digests >> _NP_32
    digests *= _NP_F
    digests ^= digests >> _NP_29
    return digests


def _chain(token_ids: Sequence[int], block_size: int, n: int, seed: int) -> np.ndarray:
    up, down = _POWERS.get(n)
    chain = np.cumsum(_digests(token_ids, block_size, n) * down, dtype=np.uint64)
    chain += np.uint64((seed * _K) & _MASK)
    chain *= up
    return chain


def prompt_hashes(token_ids: Sequence[int], block_size: int) -> array[int]:
    """`block_hashes` of a prompt as an unboxed array: the router keeps a decision's hashes (its
    guesses refer to them), and a list of 1024 Python ints is one more container for every garbage
    collection to walk (p99 decision times of ~3 ms where a collection landed), an array is none."""
    n = len(token_ids) // block_size
    if n < _NUMPY_CHAIN_FROM_BLOCKS:
        return array("Q", block_hashes(token_ids, block_size))
    return array("Q", _chain(token_ids, block_size, n, _ROOT).tobytes())


def _block_hashes_py(token_ids: Sequence[int], block_size: int, n: int, seed: int) -> list[int]:
    weights = _weights(block_size)[0]
    mul = operator.mul
    if n and (min(token_ids) < 0 or max(token_ids) > 0xFFFFFFFF):
        raise OverflowError("token ids must lie in [0, 2^32)")  # as the numpy path's conversion says
    digests = []
    for start in range(0, n * block_size, block_size):
        digest = sum(map(mul, token_ids[start:start + block_size], weights)) & _MASK
        digest ^= digest >> 32
        digest = (digest * _F) & _MASK
        digests.append(digest ^ (digest >> 29))
    return _chain_py(digests, seed)
