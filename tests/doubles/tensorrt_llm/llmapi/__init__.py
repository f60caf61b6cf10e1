"""TEST DOUBLE of ``tensorrt_llm/llmapi/__init__.py`` (exports of the ~v1.1/1.2 package that the double has).

Not exported here because not mirrored: the speculative-decoding configs (Eagle/MTP/NGram/...), sparse
attention configs, QuantConfig/QuantAlgo, BuildCacheConfig, KvCacheRetentionConfig, MpiCommSession,
MultimodalEncoder.
"""

from ..builder import BuildConfig
from ..disaggregated_params import DisaggregatedParams
from ..executor import CompletionOutput, LoRARequest, RequestError
from ..sampling_params import GuidedDecodingParams, SamplingParams
from .llm import LLM, RequestOutput
from .llm_args import (
                       AttentionDpConfig,
                       BatchingType,
                       CacheTransceiverConfig,
                       CalibConfig,
                       CapacitySchedulerPolicy,
                       ContextChunkingPolicy,
                       CudaGraphConfig,
                       DynamicBatchConfig,
                       ExtendedRuntimePerfKnobConfig,
                       KvCacheConfig,
                       LlmArgs,
                       MoeConfig,
                       SchedulerConfig,
                       TorchCompileConfig,
                       TorchLlmArgs,
                       TrtLlmArgs,
)

__all__ = [
    'LLM',
    'CompletionOutput',
    'RequestOutput',
    'GuidedDecodingParams',
    'SamplingParams',
    'DisaggregatedParams',
    'KvCacheConfig',
    'CudaGraphConfig',
    'MoeConfig',
    'SchedulerConfig',
    'CapacitySchedulerPolicy',
    'BuildConfig',
    'CalibConfig',
    'RequestError',
    'ExtendedRuntimePerfKnobConfig',
    'BatchingType',
    'ContextChunkingPolicy',
    'DynamicBatchConfig',
    'CacheTransceiverConfig',
    'TorchCompileConfig',
    'LlmArgs',
    'TorchLlmArgs',
    'TrtLlmArgs',
    'AttentionDpConfig',
    'LoRARequest',
]
