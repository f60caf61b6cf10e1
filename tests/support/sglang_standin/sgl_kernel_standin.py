"""STAND-IN for the functions of SGLang's CUDA-only kernel package (`sglang-kernel`, import `sgl_kernel`)
that SGLang's CPU engine imports.

This is not SGLang code and not a kernel: it is a pure-Python/torch replacement of the nine
kernel-package names SGLang's CPU engine (`SGLANG_USE_CPU_ENGINE=1`) imports before it can start
(two implemented, seven placeholders), so the real SGLang engine runs on machines without a GPU (our
CI). Nothing else of `sgl_kernel` is provided.

Why they are needed (sglang 0.5.23): modules the engine imports do, at import time,

    if _is_cpu:                       # SGLANG_USE_CPU_ENGINE=1
        from sgl_kernel import <name>_cpu

so without these names `sglang.srt.entrypoints.engine` cannot even be imported. The PyPI
`sglang-kernel` wheel is a CUDA build: `import sgl_kernel` fails on a machine without `libcuda.so.1`,
and its CPU ops (`torch.ops.sgl_kernel.*_cpu`) come from a separate CPU build that is not on PyPI.
The nine names, and the sglang module (under site-packages/sglang/) that imports each:

    assign_req_to_token_pool_cpu       srt/mem_cache/allocation.py            IMPLEMENTED below
    copy_all_layer_kv_cache_cpu        kernels/ops/kvcache/cache_move.py      IMPLEMENTED below
    build_tree_kernel_efficient_cpu    kernels/ops/speculative/spec_tree.py   placeholder
    verify_tree_greedy_cpu             kernels/ops/speculative/spec_tree.py   placeholder
    fill_accept_out_cache_loc_cpu      kernels/ops/speculative/eagle.py       placeholder
    fill_bonus_tokens_cpu              kernels/ops/speculative/eagle.py       placeholder
    assign_draft_cache_locs_contiguous_cpu  kernels/ops/speculative/cache_locs.py  placeholder
    assign_extend_cache_locs_cpu       kernels/ops/speculative/cache_locs.py  placeholder
    rotate_input_ids_cpu               kernels/ops/speculative/multi_layer_eagle.py  placeholder

None of them is called when SGLang serves a plain model without speculative decoding (checked: the
first call of each is logged to stderr as `[sgl_kernel stand-in] <name> called`, and per-process
counts are in `sgl_kernel.CALLS`; nothing is logged through prefill, decode, prefix caching, flush,
abort and mooncake P/D transfers). All nine serve speculative decoding (EAGLE/dflash):
`assign_req_to_token_pool_func` (alloc_for_spec_decode) and `copy_all_layer_kv_cache_func` (`move_kv_cache` of KV pools built with
enable_kv_cache_copy=True). The two memory-bookkeeping ones are implemented with the kernels'
semantics because that is cheap; the seven speculative-tree ones raise NotImplementedError naming
themselves, so speculative decoding on CPU fails loudly instead of computing garbage.

Activation: `sitecustomize.py` in this directory (see there); put this directory on PYTHONPATH.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections import Counter

import torch

# the names SGLang's CPU engine imports from sgl_kernel (sitecustomize.py puts these on the module)
_PLACEHOLDERS = [
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "rotate_input_ids_cpu",
]
__all__ = ["assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu", *_PLACEHOLDERS]

# how often SGLang called each stand-in (per process); the first call of each is also logged to stderr
CALLS: Counter[str] = Counter()


def _count(name: str) -> None:
    CALLS[name] += 1
    if CALLS[name] == 1:
        print(f"[sgl_kernel stand-in] {name} called (pid {os.getpid()})", file=sys.stderr, flush=True)


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """In place, for each request i of the batch (prefix[i] = sum over j < i of end[j] - start[j]):

        req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]] =
            out_cache_loc[prefix[i] : prefix[i] + end_offset[i] - start_offset[i]]

    `req_to_token` is [max_num_reqs, pool_len] (int32); `out_cache_loc` (int64) is cast on write.
    The same loop as SGLang's own reference in its kernel tests; the Triton version is
    `allocation.assign_req_to_token_pool`.
    """
    _count("assign_req_to_token_pool_cpu")
    assert pool_len == req_to_token.shape[1], (pool_len, tuple(req_to_token.shape))
    rows = req_pool_indices.tolist()
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    pt = 0
    for row, s, e in zip(rows, starts, ends):
        n = e - s
        if n > 0:
            req_to_token[row, s:e] = out_cache_loc[pt : pt + n].to(req_to_token.dtype)
        pt += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every KV buffer i (one per layer and K/V; base address data_ptrs[i], row size strides[i]
    bytes), copy row src_loc[j] to row tgt_loc[j] for all j, reading every source row before writing
    (safe when the two sets overlap, like the Triton kernel `cache_move.copy_all_layer_kv_cache_tiled`).
    The real op is sgl-kernel `python/sgl_kernel/kvcacheio.py` (C++ in `sgl-kernel/csrc/cpu/`).
    """
    _count("copy_all_layer_kv_cache_cpu")
    pairs = list(zip(tgt_loc.tolist(), src_loc.tolist()))
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        rows = [ctypes.string_at(base + src * stride, stride) for _, src in pairs]
        for (tgt, _), row in zip(pairs, rows):
            ctypes.memmove(base + tgt * stride, row, stride)


def _placeholder(name: str):
    def not_provided(*args, **kwargs):
        _count(name)
        raise NotImplementedError(
            f"sgl_kernel.{name} is not provided by the CPU stand-in (tests/support/sglang_standin): "
            "speculative decoding needs the real sgl-kernel CPU build"
        )

    not_provided.__name__ = not_provided.__qualname__ = name
    return not_provided


for _name in _PLACEHOLDERS:
    globals()[_name] = _placeholder(_name)
