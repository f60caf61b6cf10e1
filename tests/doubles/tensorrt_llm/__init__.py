"""TEST DOUBLE -- THIS IS NOT TensorRT-LLM.

=====================================================================================================
  A test double of NVIDIA TensorRT-LLM's Python LLM API (PyTorch backend), for machines where
  TensorRT-LLM cannot be installed. It has no weights, no GPU code and no C++ runtime: every output
  token comes from a deterministic pseudo-random function (see ``tensorrt_llm._double_engine``).
  Put ``tests/doubles`` on ``sys.path`` and ``import tensorrt_llm`` resolves to this package.
=====================================================================================================

What it mirrors: the public API of TensorRT-LLM ~v1.1/1.2 (``__version__`` of the mirrored era is
"1.2.0rc2"), read from the public NVIDIA/TensorRT-LLM sources at these commits:

- ``tensorrt_llm/llmapi/llm.py``              @ 4c05a74891e4 (BaseLLM, _TorchLLM, LLM, RequestOutput)
- ``tensorrt_llm/llmapi/llm_args.py``         the ~Oct-2025 snapshot with ``tokens_per_block`` in
  KvCacheConfig, ``kv_transfer_timeout_ms`` and ``orchestrator_type`` (TorchLlmArgs, KvCacheConfig, ...)
- ``tensorrt_llm/sampling_params.py``         B-era version with top_p/top_k/temperature validation
- ``tensorrt_llm/executor/result.py``         @ a678b91aafbe (CompletionOutput, GenerationResult,
  IterationResult, ``cached_tokens``, the ``'not_finished'`` branch)
- ``tensorrt_llm/executor/executor.py``       (GenerationExecutor: client ids, IterationResult singletons,
  ``_handle_background_error`` -> ``RequestError``)
- ``tensorrt_llm/disaggregated_params.py``    @ b828daced8dc
- ``tensorrt_llm/inputs/data.py``             (prompt_inputs)
- ``tensorrt_llm/_utils.py``                  (KVCacheEventSerializer: the KV event JSON shape)
- ``tensorrt_llm/_torch/pyexecutor/py_executor.py`` and ``sampler.py`` (stop criteria order, first-token
  handling of generation-only requests, stats fields, ``next_req_id = max_batch_size``)
- ``cpp/tensorrt_llm/batch_manager/llmRequest.cpp`` (createResult: which tokens a response carries)

Public names (same module paths as the real package):
``tensorrt_llm.LLM``, ``SamplingParams``, ``DisaggregatedParams``, ``KvCacheConfig``, ``LlmArgs``,
``TorchLlmArgs``; ``tensorrt_llm.llmapi`` (LLM, RequestOutput, CompletionOutput, RequestError, the
config models); ``tensorrt_llm.llmapi.llm_args``; ``tensorrt_llm.llmapi.llm_utils``;
``tensorrt_llm.executor`` (CompletionOutput, GenerationResult, IterationResult, RequestError);
``tensorrt_llm.sampling_params``; ``tensorrt_llm.disaggregated_params``; ``tensorrt_llm.inputs``;
``tensorrt_llm.scheduling_params``; ``tensorrt_llm.builder.BuildConfig`` (sizing fields only);
``tensorrt_llm.bindings.executor`` (pure-Python FinishReason / Response / ContextPhaseParams stand-ins).

Failures are reported as the real API does: argument errors raise from ``LLM()`` / ``generate_async``;
a failed KV transfer of a generation-only request raises ``tensorrt_llm.executor.RequestError`` from
``result()`` / ``aresult()`` / ``async for`` (see ``_double_engine`` for what else is simulated).

The double's own knobs (environment, read when an LLM is constructed): ``TRTLLM_DOUBLE_STEP_MS``
(default 2), ``TRTLLM_DOUBLE_EOS_RATE`` (0.03), ``TRTLLM_DOUBLE_KV_BLOCKS`` (4096),
``TRTLLM_DOUBLE_GPU_COUNT`` (8). See ``tensorrt_llm._double_engine`` for the simulation.
"""

from .disaggregated_params import DisaggregatedParams
from .llmapi import LLM, KvCacheConfig
from .llmapi.llm_args import LlmArgs, TorchLlmArgs
from .logger import logger
from .sampling_params import SamplingParams
from .version import __version__

#: Marker for code that wants to know it is running against the double.
IS_TEST_DOUBLE = True

__all__ = [
    "LLM",
    "LlmArgs",
    "TorchLlmArgs",
    "SamplingParams",
    "DisaggregatedParams",
    "KvCacheConfig",
    "logger",
    "__version__",
    "IS_TEST_DOUBLE",
]
