"""TEST DOUBLE of the re-exports in ``tensorrt_llm/llmapi/llm_utils.py`` (Dynamo and trtllm-serve import
``update_llm_args_with_extra_options`` / ``update_llm_args_with_extra_dict`` from here)."""

from ..builder import BuildConfig
from .llm_args import (
                       CalibConfig,
                       CapacitySchedulerPolicy,
                       KvCacheConfig,
                       LlmArgs,
                       SchedulerConfig,
                       TorchLlmArgs,
                       TrtLlmArgs,
                       update_llm_args_with_extra_dict,
                       update_llm_args_with_extra_options,
)

__all__ = [
    "BuildConfig",
    "CalibConfig",
    "CapacitySchedulerPolicy",
    "KvCacheConfig",
    "LlmArgs",
    "SchedulerConfig",
    "TorchLlmArgs",
    "TrtLlmArgs",
    "update_llm_args_with_extra_dict",
    "update_llm_args_with_extra_options",
]
