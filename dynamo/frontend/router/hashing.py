"""The router's own block hashes: XXH3-64 chained over the full blocks of a token sequence.

Block i's hash is XXH3-64 of its token ids (little-endian uint32) seeded with block i-1's hash (0 for
the first block), so equal hashes mean equal prefixes, whatever hash the engine uses internally. The
router hashes prompts with this and maps the engines' block hashes onto it from the tokens their
KV events carry: engines with random per-process hash seeds still match.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import xxhash

_HASH = xxhash.xxh3_64_intdigest
_ROOT = 0  # the first block's seed


def block_hashes(token_ids: Sequence[int], block_size: int, parent: int | None = None) -> list[int]:
    """The chained hashes of every full block of `token_ids` (continuing from `parent`, the hash of
    the block before the first, when given)."""
    data = array("I", token_ids).tobytes()  # one C-level conversion, then zero-copy slices
    view = memoryview(data)
    step = block_size * 4
    seed = _ROOT if parent is None else parent
    out: list[int] = []
    append = out.append
    for start in range(0, len(data) - step + 1, step):
        seed = _HASH(view[start:start + step], seed)
        append(seed)
    return out
