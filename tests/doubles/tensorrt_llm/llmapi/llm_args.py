"""TEST DOUBLE of ``tensorrt_llm/llmapi/llm_args.py`` (the ~Oct-2025 snapshot of TensorRT-LLM 1.1/1.2:
``KvCacheConfig.tokens_per_block``, ``CacheTransceiverConfig.kv_transfer_timeout_ms``, ``orchestrator_type``).

Mirrored: every top-level field name of ``BaseLlmArgs`` / ``TorchLlmArgs`` with its default; the nested
configs KvCacheConfig, CacheTransceiverConfig, SchedulerConfig (+ CapacitySchedulerPolicy,
ContextChunkingPolicy, DynamicBatchConfig), CudaGraphConfig, MoeConfig, AttentionDpConfig,
TorchCompileConfig, KvCacheConnectorConfig, ExtendedRuntimePerfKnobConfig, CalibConfig, all
``StrictBaseModel`` (``extra="forbid"``: an unknown nested key is a pydantic ``ValidationError``, itself
a ``ValueError``); the validators that change values (build_config sizing, parallel config, tokenizer,
load_format, stream_interval, cuda graph batch sizes, batch_wait_*); ``TrtLlmArgs`` (only so that its
field names exist: passing a TensorRT-only field to the PyTorch ``LLM`` raises the real error);
``update_llm_args_with_extra_dict`` / ``update_llm_args_with_extra_options`` (shallow ``|`` merge).

Not mirrored: the speculative-decoding, LoRA, PEFT, sparse-attention and quantization config classes
(those fields accept any object), engine/checkpoint format loading, C++ ``_to_pybind`` conversions.
GPU count: ``gpus_per_node=None`` becomes the double's simulated device count (env
``TRTLLM_DOUBLE_GPU_COUNT``, default 8) instead of ``torch.cuda.device_count()``.
"""

import copy
import math
import os
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from ..builder import BuildConfig
from ..logger import logger
from .tokenizer import TokenizerBase, tokenizer_factory

ENV_GPU_COUNT = "TRTLLM_DOUBLE_GPU_COUNT"


def _simulated_device_count() -> int:
    return int(os.environ.get(ENV_GPU_COUNT, "8"))


class StrictBaseModel(BaseModel):
    """
    A base model that forbids arbitrary fields.
    """

    model_config = ConfigDict(extra="forbid")  # real: class Config: extra = "forbid"


class CudaGraphConfig(StrictBaseModel):
    """
    Configuration for CUDA graphs.
    """
    batch_sizes: Optional[List[int]] = Field(default=None,
                                             description="List of batch sizes to create CUDA graphs for.")

    max_batch_size: int = Field(default=0, description="Maximum batch size for CUDA graphs.")

    enable_padding: bool = Field(
        default=False,
        description="If true, batches are rounded up to the nearest cuda_graph_batch_size.")

    @field_validator('max_batch_size')
    @classmethod
    def validate_cuda_graph_max_batch_size(cls, v):
        """Validate cuda_graph_config.max_batch_size is non-negative."""
        if v < 0:
            raise ValueError("cuda_graph_config.max_batch_size must be non-negative")
        return v

    @staticmethod
    def _generate_cuda_graph_batch_sizes(max_batch_size: int, enable_padding: bool) -> List[int]:
        """Generate a list of batch sizes for CUDA graphs."""
        if enable_padding:
            batch_sizes = [1, 2, 4] + [i * 8 for i in range(1, 17)]
        else:
            batch_sizes = list(range(1, 32)) + [32, 64, 128]

        # Add powers of 2 up to max_batch_size
        batch_sizes += [2**i for i in range(8, math.ceil(math.log(max_batch_size, 2)))]

        # Filter and sort batch sizes
        batch_sizes = sorted([size for size in batch_sizes if size <= max_batch_size])

        # Add max_batch_size if not already included
        if max_batch_size != batch_sizes[-1]:
            batch_sizes.append(max_batch_size)

        return batch_sizes


class MoeConfig(StrictBaseModel):
    """
    Configuration for MoE.
    """
    backend: Literal["CUTLASS", "CUTEDSL", "WIDEEP", "TRTLLM", "DEEPGEMM", "VANILLA",
                     "TRITON"] = Field(default='CUTLASS', description="MoE backend to use.")

    max_num_tokens: Optional[int] = Field(default=None)

    load_balancer: Optional[Union[object, str]] = Field(default=None,
                                                        description="Configuration for MoE load balancing.")

    disable_finalize_fusion: bool = Field(default=False)

    use_low_precision_moe_combine: bool = Field(default=False)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)


class AttentionDpConfig(StrictBaseModel):
    """
    Configuration for attention DP.
    """
    enable_balance: bool = Field(default=False, description="Whether to enable balance.")
    timeout_iters: int = Field(default=50, description="The number of iterations to timeout.")
    batching_wait_iters: int = Field(default=10, description="The number of iterations to wait for batching.")

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)


class _ParallelConfig(StrictBaseModel):
    """The model distribution configs for LLM."""
    tp_size: int = 1
    pp_size: int = 1
    cp_size: int = 1
    gpus_per_node: int = 8
    # Set default for MoE fields to -1 to trigger auto-calculation in Mapping
    moe_cluster_size: int = -1
    moe_tp_size: int = -1
    moe_ep_size: int = -1
    cp_config: dict = Field(default_factory=dict)
    enable_attention_dp: bool = False
    enable_lm_head_tp_in_adp: bool = False

    @property
    def world_size(self) -> int:
        return self.tp_size * self.pp_size * self.cp_size

    @property
    def world_size_per_node(self) -> int:
        world_size = self.world_size
        total_nodes = math.ceil(world_size / self.gpus_per_node)
        return world_size // total_nodes  #TODO is this right?

    @property
    def is_multi_gpu(self) -> bool:
        return self.world_size > 1


class CalibConfig(StrictBaseModel):
    """
    Calibration configuration (TensorRT backend only).
    """
    device: Literal['cuda', 'cpu'] = Field(default='cuda')
    calib_dataset: str = Field(default='cnn_dailymail')
    calib_batches: int = Field(default=512)
    calib_batch_size: int = Field(default=1)
    calib_max_seq_length: int = Field(default=512)
    random_seed: int = Field(default=1234)
    tokenizer_max_seq_length: int = Field(default=2048)

    @classmethod
    def from_dict(cls, config: dict) -> 'CalibConfig':
        return cls(**config)

    def to_dict(self) -> dict:
        return self.model_dump()


class _ModelFormatKind(Enum):
    HF = 0
    TLLM_CKPT = 1
    TLLM_ENGINE = 2


class BatchingType(StrEnum):
    STATIC = "STATIC"
    INFLIGHT = "INFLIGHT"


class CapacitySchedulerPolicy(StrEnum):
    MAX_UTILIZATION = "MAX_UTILIZATION"
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    STATIC_BATCH = "STATIC_BATCH"


class ContextChunkingPolicy(StrEnum):
    ''' Context chunking policy. '''
    FIRST_COME_FIRST_SERVED = "FIRST_COME_FIRST_SERVED"
    EQUAL_PROGRESS = "EQUAL_PROGRESS"


class DynamicBatchConfig(StrictBaseModel):
    """Dynamic batch configuration.

    Controls how batch size and token limits are dynamically adjusted at runtime.
    """
    enable_batch_size_tuning: bool = Field(description="Controls if the batch size should be tuned dynamically")

    enable_max_num_tokens_tuning: bool = Field(
        description="Controls if the max num tokens should be tuned dynamically")

    dynamic_batch_moving_average_window: int = Field(
        description="The window size for moving average of input and output length which is used to calculate "
        "dynamic batch size and max num tokens")


class SchedulerConfig(StrictBaseModel):
    capacity_scheduler_policy: CapacitySchedulerPolicy = Field(
        default=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT, description="The capacity scheduler policy to use")

    context_chunking_policy: Optional[ContextChunkingPolicy] = Field(
        default=None, description="The context chunking policy to use")

    dynamic_batch_config: Optional[DynamicBatchConfig] = Field(default=None,
                                                               description="The dynamic batch config to use")


class KvCacheConfig(StrictBaseModel):
    """
    Configuration for the KV cache.
    """
    enable_block_reuse: bool = Field(default=True,
                                     description="Controls if KV cache blocks can be reused for different requests.")
    max_tokens: Optional[int] = Field(
        default=None, description="The maximum number of tokens that should be stored in the KV cache.")
    max_attention_window: Optional[List[int]] = Field(default=None,
                                                      description="Size of the attention window for each sequence.")
    sink_token_length: Optional[int] = Field(default=None, description="Number of sink tokens.")
    free_gpu_memory_fraction: Optional[float] = Field(
        default=0.9,
        description="The fraction of GPU memory fraction that should be allocated for the KV cache.")
    host_cache_size: Optional[int] = Field(default=None, description="Size of the host cache in bytes.")
    onboard_blocks: bool = Field(default=True, description="Controls if blocks are onboarded.")
    cross_kv_cache_fraction: Optional[float] = Field(default=None)
    secondary_offload_min_priority: Optional[int] = Field(default=None)
    event_buffer_max_size: int = Field(
        default=0,
        description="Maximum size of the event buffer. If set to 0, the event buffer will not be used.")
    attention_dp_events_gather_period_ms: int = Field(default=5)
    enable_partial_reuse: bool = Field(default=True)
    copy_on_partial_reuse: bool = Field(default=True)
    use_uvm: bool = Field(default=False, description="Whether to use UVM for the KV cache.")
    max_gpu_total_bytes: int = Field(default=0)

    # This is a pure python field, not a pybind field. It is only for the Pytorch backend.
    dtype: str = Field(default="auto", description="The data type to use for the KV cache.")

    # This is a pure python field, not a pybind field. It is only for the Pytorch backend.
    mamba_ssm_cache_dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(default="auto")

    tokens_per_block: int = Field(default=32, description="The number of tokens per block.")

    @field_validator('free_gpu_memory_fraction')
    @classmethod
    def validate_free_gpu_memory_fraction(cls, v: float):
        """Validates that the fraction is between 0.0 and 1.0."""
        if not 0 <= v <= 1:
            raise ValueError("kv_cache_config.free_gpu_memory_fraction must be a float between 0 and 1")
        return v

    @field_validator('max_gpu_total_bytes')
    @classmethod
    def validate_max_gpu_total_bytes(cls, v: int):
        if v < 0:
            raise ValueError("kv_cache_config.max_gpu_total_bytes must be non-negative")
        return v

    @field_validator('max_attention_window')
    @classmethod
    def validate_max_attention_window(cls, v: Optional[List[int]]):
        # Allow unset
        if v is None:
            return v

        # Must be a non-empty list of positive integers
        if not isinstance(v, list) or len(v) == 0:
            raise ValueError("kv_cache_config.max_attention_window must be a non-empty list of positive integers")
        for i in v:
            if not isinstance(i, int):
                raise ValueError("kv_cache_config.max_attention_window must contain only integers")
            if i <= 0:
                raise ValueError("kv_cache_config.max_attention_window values must be positive")
        return v


class ExtendedRuntimePerfKnobConfig(StrictBaseModel):
    """
    Configuration for extended runtime performance knobs (TensorRT backend only).
    """
    multi_block_mode: bool = Field(default=True)
    enable_context_fmha_fp32_acc: bool = Field(default=False)
    cuda_graph_mode: bool = Field(default=False)
    cuda_graph_cache_size: int = Field(default=0)


class CacheTransceiverConfig(StrictBaseModel):
    """
    Configuration for the cache transceiver.
    """

    backend: Optional[Literal["DEFAULT", "UCX", "NIXL", "MPI"]] = Field(
        default=None, description="The communication backend type to use for the cache transceiver.")

    max_tokens_in_buffer: Optional[int] = Field(default=None,
                                                description="The max number of tokens the transfer buffer can fit.")

    kv_transfer_timeout_ms: Optional[int] = Field(
        default=None,
        gt=0,
        description="Timeout in milliseconds for KV cache transfer. Requests exceeding this timeout will be "
        "cancelled.")


class KvCacheConnectorConfig(StrictBaseModel):
    """
    Configuration for the KV Cache Connector.
    """
    connector_module: str = Field(description="The import path to the connector module.")
    connector_scheduler_class: str = Field(description="The class name of the scheduler within the module.")
    connector_worker_class: str = Field(description="The class name of the worker within the module.")


class BaseLlmArgs(StrictBaseModel):
    """
    Base class for both TorchLlmArgs and TrtLlmArgs. It contains all the arguments that are common to both.
    """
    model_config = {
        "arbitrary_types_allowed": True,
        "extra": "forbid",
    }

    # Explicit arguments
    model: Union[str, Path] = Field(
        description="The path to the model checkpoint or the model name from the Hugging Face Hub.")

    tokenizer: Optional[Union[str, Path, TokenizerBase, PreTrainedTokenizerBase]] = Field(
        description="The path to the tokenizer checkpoint or the tokenizer name from the Hugging Face Hub.",
        default=None)

    tokenizer_mode: Literal['auto', 'slow'] = Field(default='auto',
                                                    description="The mode to initialize the tokenizer.")

    skip_tokenizer_init: bool = Field(default=False, description="Whether to skip the tokenizer initialization.")

    trust_remote_code: bool = Field(default=False, description="Whether to trust the remote code.")

    tensor_parallel_size: int = Field(default=1, description="The tensor parallel size.")

    dtype: str = Field(default="auto", description="The data type to use for the model.")

    revision: Optional[str] = Field(default=None, description="The revision to use for the model.")

    tokenizer_revision: Optional[str] = Field(default=None, description="The revision to use for the tokenizer.")

    # Below are all remaining arguments

    pipeline_parallel_size: int = Field(default=1, description="The pipeline parallel size.")

    context_parallel_size: int = Field(default=1, description="The context parallel size.")

    gpus_per_node: Optional[int] = Field(default=None, description="The number of GPUs per node.",
                                         validate_default=True)

    moe_cluster_parallel_size: Optional[int] = Field(default=None)

    moe_tensor_parallel_size: Optional[int] = Field(default=None)

    moe_expert_parallel_size: Optional[int] = Field(default=None)

    enable_attention_dp: bool = Field(default=False, description="Enable attention data parallel.")

    enable_lm_head_tp_in_adp: bool = Field(default=False, description="Enable LM head TP in attention dp.")

    cp_config: Optional[dict] = Field(default_factory=dict, description="Context parallel config.")

    load_format: Literal['auto', 'dummy'] = Field(default='auto', description="The format to load the model.")

    fail_fast_on_attention_window_too_large: bool = Field(default=False)

    # LoRA arguments
    enable_lora: bool = Field(default=False, description="Enable LoRA.")

    lora_config: Optional[Any] = Field(default=None, description="LoRA configuration (not mirrored: any object).")

    # Several options from ExecutorConfig, expanded here for less hierarchy
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig, description="KV cache config.")

    enable_chunked_prefill: bool = Field(default=False, description="Enable chunked prefill.")

    guided_decoding_backend: Optional[Literal["xgrammar", "llguidance"]] = Field(default=None)

    batched_logits_processor: Optional[object] = Field(default=None, description="Batched logits processor.")

    iter_stats_max_iterations: Optional[int] = Field(default=None)

    request_stats_max_iterations: Optional[int] = Field(default=None)

    # A handful of options from PretrainedConfig
    peft_cache_config: Optional[Any] = Field(default=None, description="PEFT cache config (not mirrored).")

    scheduler_config: SchedulerConfig = Field(default_factory=SchedulerConfig, description="Scheduler config.")

    cache_transceiver_config: Optional[CacheTransceiverConfig] = Field(default=None,
                                                                       description="Cache transceiver config.")

    # Sparse attention config
    sparse_attention_config: Optional[Any] = Field(default=None, description="Sparse attention config (not mirrored).")

    # Speculative decoding parameters
    speculative_config: Optional[Any] = Field(default=None,
                                              description="Speculative decoding config (not mirrored).")

    max_batch_size: Optional[int] = Field(default=None, description="The maximum batch size.")

    # generation constraints
    max_input_len: Optional[int] = Field(default=None, description="The maximum input length.")

    max_seq_len: Optional[int] = Field(default=None, description="The maximum sequence length.")

    max_beam_width: Optional[int] = Field(default=None, description="The maximum beam width.")

    max_num_tokens: Optional[int] = Field(default=8192, description="The maximum number of tokens.")

    gather_generation_logits: bool = Field(default=False, description="Gather generation logits.")

    # private fields those are unstable and just for internal use
    num_postprocess_workers: int = Field(default=0)

    postprocess_tokenizer_dir: Optional[str] = Field(default=None)

    reasoning_parser: Optional[str] = Field(default=None)

    decoding_config: Optional[object] = Field(default=None, description="The decoding config (deprecated).")

    mpi_session: Optional[object] = Field(default=None,
                                          description="The optional MPI session to use for this LLM instance.",
                                          exclude=True,
                                          alias="_mpi_session")

    backend: Optional[str] = Field(default=None, description="The backend to use for this LLM instance.",
                                   validate_default=True)

    return_perf_metrics: bool = Field(default=False, description="Return perf metrics.")

    orchestrator_type: Optional[Literal["rpc", "ray"]] = Field(
        default=None, description="The orchestrator type to use. Defaults to None, which uses MPI.")

    _parallel_config: Optional[_ParallelConfig] = PrivateAttr(default=None)
    _model_format: Optional[_ModelFormatKind] = PrivateAttr(default=None)
    _speculative_model: Optional[str] = PrivateAttr(default=None)
    _speculative_model_format: Optional[_ModelFormatKind] = PrivateAttr(default=None)

    @property
    def parallel_config(self) -> _ParallelConfig:
        return self._parallel_config

    @property
    def model_format(self) -> _ModelFormatKind:
        return self._model_format

    @property
    def speculative_model_dir(self) -> Optional[str]:
        return self._speculative_model

    @property
    def speculative_model_format(self) -> Optional[_ModelFormatKind]:
        return self._speculative_model_format

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "BaseLlmArgs":
        """Create `LlmArgs` instance from kwargs."""
        return cls(**dict(kwargs))

    def to_dict(self) -> dict:
        """Dump `LlmArgs` instance to a dict."""
        model_dict = self.model_dump(mode='json')
        model_dict['build_config'] = copy.deepcopy(self.build_config)
        return model_dict

    @field_validator("gpus_per_node", mode='before')
    @classmethod
    def validate_gpus_per_node(cls, v, info):
        if v is None:
            # real: torch.cuda.device_count(); the double simulates a GPU count
            v = _simulated_device_count()
        return v

    @field_validator("model")
    @classmethod
    def validate_model(cls, v, info):
        if not isinstance(v, (str, Path)):
            raise ValueError(f"Invalid model: {v}")
        return v

    @model_validator(mode="after")
    def validate_parallel_config(self):
        if self.moe_cluster_parallel_size is None:
            self.moe_cluster_parallel_size = -1

        if self.moe_tensor_parallel_size is None:
            self.moe_tensor_parallel_size = -1

        if self.moe_expert_parallel_size is None:
            self.moe_expert_parallel_size = -1

        self._parallel_config = _ParallelConfig(tp_size=self.tensor_parallel_size,
                                                pp_size=self.pipeline_parallel_size,
                                                cp_size=self.context_parallel_size,
                                                gpus_per_node=self.gpus_per_node,
                                                moe_cluster_size=self.moe_cluster_parallel_size,
                                                moe_tp_size=self.moe_tensor_parallel_size,
                                                moe_ep_size=self.moe_expert_parallel_size,
                                                enable_attention_dp=self.enable_attention_dp,
                                                enable_lm_head_tp_in_adp=self.enable_lm_head_tp_in_adp,
                                                cp_config=self.cp_config)
        return self

    @model_validator(mode="after")
    def set_default_max_input_len(self):
        if self.max_input_len is None:
            self.max_input_len = 1024
        return self

    @model_validator(mode="after")
    def validate_and_init_tokenizer(self):
        """Initialize tokenizer based on configuration."""
        if self.skip_tokenizer_init:
            self.tokenizer = None
        else:
            self.tokenizer = tokenizer_factory(self.tokenizer,
                                               trust_remote_code=self.trust_remote_code,
                                               use_fast=self.tokenizer_mode != 'slow')
        return self

    @model_validator(mode="after")
    def validate_model_format_misc(self):
        # Real: detects TRT engine / TRT-LLM checkpoint / HF dirs; the PyTorch path treats all as HF.
        self._model_format = _ModelFormatKind.HF
        return self

    @model_validator(mode="after")
    def init_build_config(self):
        """
        Creating a default BuildConfig if none is provided
        """
        build_config = getattr(self, "build_config", None)
        if build_config is None:
            kwargs = {}
            if self.max_batch_size:
                kwargs["max_batch_size"] = self.max_batch_size
            if self.max_num_tokens:
                kwargs["max_num_tokens"] = self.max_num_tokens
            if self.max_seq_len:
                kwargs["max_seq_len"] = self.max_seq_len
            if self.max_beam_width:
                kwargs["max_beam_width"] = self.max_beam_width
            if self.max_input_len:
                kwargs["max_input_len"] = self.max_input_len
            self.build_config = BuildConfig(**kwargs)
        else:
            assert isinstance(build_config, BuildConfig), f"build_config is not initialized: {build_config}"
        return self

    @model_validator(mode="after")
    def set_runtime_knobs_from_build_config(self):
        assert self.build_config is not None, "build_config is not initialized"
        if self.backend == "pytorch":
            if self.build_config:
                for key in ["max_batch_size", "max_num_tokens", "max_seq_len", "max_input_len", "max_beam_width"]:
                    if getattr(self.build_config, key) is not None:
                        if (v := getattr(self, key, None)) is not None and v != getattr(self.build_config, key):
                            logger.warning(f"overriding {key} from build_config")
                        setattr(self, key, getattr(self.build_config, key))

        return self

    @model_validator(mode="after")
    def validate_runtime_args(self):
        if self.max_batch_size is not None and self.max_num_tokens is not None:
            if self.max_batch_size > self.max_num_tokens:
                logger.warning(f"max_batch_size [{self.max_batch_size}] should be less than or equal to "
                               f"max_num_tokens [{self.max_num_tokens}]")
        return self

    @model_validator(mode="after")
    def validate_build_config_with_runtime_params(self):
        assert isinstance(self.build_config, BuildConfig), f"build_config is not initialized: {self.build_config}"

        if self.max_batch_size is not None:
            if self.max_batch_size > self.build_config.max_batch_size:
                self.max_batch_size = self.build_config.max_batch_size
        if self.max_num_tokens is not None:
            if self.max_num_tokens > self.build_config.max_num_tokens:
                self.max_num_tokens = self.build_config.max_num_tokens
        return self

    @model_validator(mode="after")
    def validate_build_config_remaining(self):
        if self.max_beam_width is None:
            if self.build_config:
                self.max_beam_width = self.build_config.max_beam_width
            else:
                self.max_beam_width = 1
        return self

    @model_validator(mode="after")
    def validate_speculative_config(self):
        # Real: configures decoding modes per speculative config type; not simulated by the double.
        if not self.speculative_config:
            self.decoding_config = None
        self._speculative_model = getattr(self.speculative_config, "speculative_model_dir", None)
        return self

    def get_runtime_sizes(self, ):
        return (
            self.max_beam_width,
            self.max_num_tokens,
            self.max_seq_len,
            self.max_batch_size,
        )


class TrtLlmArgs(BaseLlmArgs):
    """TensorRT-engine backend args; mirrored so the TensorRT-only field names exist (not usable in the double)."""

    enable_tqdm: bool = Field(default=False, description="Enable tqdm for progress bar.")

    workspace: Optional[str] = Field(default=None, description="The workspace for the model.")

    enable_build_cache: object = Field(default=False, description="Enable build cache.")

    extended_runtime_perf_knob_config: Optional[ExtendedRuntimePerfKnobConfig] = Field(default=None)

    calib_config: Optional[CalibConfig] = Field(default=None, description="Calibration config.")

    quant_config: Optional[Any] = Field(default=None, description="Quantization config.")

    embedding_parallel_mode: str = Field(default='SHARDING_ALONG_VOCAB')

    fast_build: bool = Field(default=False, description="Enable fast build.")

    build_config: Optional[object] = Field(default=None, description="Build config.")

    enable_prompt_adapter: bool = Field(default=False, description="Enable prompt adapter.")

    max_prompt_adapter_token: int = Field(default=0)

    batching_type: Optional[BatchingType] = Field(default=None, description="Batching type.")

    normalize_log_probs: bool = Field(default=False, description="Normalize log probabilities.")


class LoadFormat(Enum):
    AUTO = 0
    # Initialize all weights randomly.
    DUMMY = 1
    # Only load the multimodal(vision) encoder weights
    VISION_ONLY = 2


class SamplerType(StrEnum):
    """Enum for sampler type options."""
    TRTLLMSampler = "TRTLLMSampler"
    TorchSampler = "TorchSampler"
    auto = "auto"


class TorchCompileConfig(StrictBaseModel):
    """
    Configuration for torch.compile.
    """
    enable_fullgraph: bool = Field(default=True)

    enable_inductor: bool = Field(default=False)

    enable_piecewise_cuda_graph: bool = Field(default=False)

    capture_num_tokens: Optional[List[int]] = Field(default=None)

    @field_validator('capture_num_tokens')
    @classmethod
    def validate_capture_num_tokens(cls, v):
        if v is None:
            return v
        if any(t <= 0 for t in v):
            raise ValueError("capture_num_tokens must contain positive ints.")
        return sorted(set(v), reverse=True)

    enable_userbuffers: bool = Field(default=True)

    max_num_streams: int = Field(default=1)

    @field_validator('max_num_streams')
    @classmethod
    def validate_torch_compile_max_num_streams(cls, v):
        """Validate torch_compile_config.max_num_streams >= 1."""
        if v < 1:
            raise ValueError("torch_compile_config.max_num_streams must be >= 1")
        return v


class TorchLlmArgs(BaseLlmArgs):
    # Just a dummy BuildConfig to allow code reuse with the TrtLlmArgs
    build_config: Optional[object] = Field(default=None, description="Build config (deprecated).")

    # PyTorch backend specific configurations
    garbage_collection_gen0_threshold: int = Field(default=20000)

    cuda_graph_config: Optional[CudaGraphConfig] = Field(default_factory=CudaGraphConfig,
                                                         description="CUDA graph config.")

    attention_dp_config: Optional[AttentionDpConfig] = Field(default=None)

    disable_overlap_scheduler: bool = Field(default=False, description="Disable the overlap scheduler.")

    moe_config: MoeConfig = Field(default_factory=MoeConfig, description="MoE config.")

    attn_backend: str = Field(default='TRTLLM', description="Attention backend to use.")

    sampler_type: Union[str, SamplerType] = Field(default=SamplerType.auto)

    enable_iter_perf_stats: bool = Field(default=False, description="Enable iteration performance statistics.")

    enable_iter_req_stats: bool = Field(default=False)

    print_iter_log: bool = Field(default=False, description="Print iteration logs.")

    perf_metrics_max_requests: int = Field(default=0)

    batch_wait_timeout_ms: float = Field(default=0)

    batch_wait_timeout_iters: int = Field(default=0)

    batch_wait_max_tokens_ratio: float = Field(default=0)

    torch_compile_config: Optional[TorchCompileConfig] = Field(default=None, description="Torch compile config.")

    enable_autotuner: bool = Field(default=True)

    enable_layerwise_nvtx_marker: bool = Field(default=False)

    load_format: Union[str, LoadFormat] = Field(default=LoadFormat.AUTO)

    enable_min_latency: bool = Field(default=False)

    # TODO: make this a per-request parameter
    stream_interval: int = Field(default=1)

    force_dynamic_quantization: bool = Field(default=False)

    allreduce_strategy: Optional[Literal['AUTO', 'NCCL', 'UB', 'MINLATENCY', 'ONESHOT', 'TWOSHOT', 'LOWPRECISION',
                                         'MNNVL', 'NCCL_SYMMETRIC']] = Field(default='AUTO')
    checkpoint_loader: Optional[object] = Field(default=None)

    checkpoint_format: Optional[str] = Field(default=None)

    kv_connector_config: Optional[KvCacheConnectorConfig] = Field(default=None)

    mm_encoder_only: bool = Field(default=False)

    ray_worker_extension_cls: Optional[str] = Field(default=None)

    # PrivateVars
    _quant_config: Optional[Any] = PrivateAttr(default=None)

    @property
    def quant_config(self) -> Any:
        # Real: a QuantConfig() (not a field, so LLM(quant_config=...) is a TensorRT-only argument error).
        return self._quant_config

    @quant_config.setter
    def quant_config(self, value: Any):
        self._quant_config = value

    # TODO: remove backend later
    @field_validator('backend', mode='before')
    def init_backend(cls, v):
        if v is None:
            return 'pytorch'
        return v

    @field_validator('load_format', mode='before')
    @classmethod
    def convert_load_format(cls, v):
        if isinstance(v, LoadFormat):
            return v
        load_format = v.upper()
        if load_format not in LoadFormat.__members__:
            raise ValueError(f"Invalid LoadFormat: {v}")
        return LoadFormat[load_format]

    @model_validator(mode="after")
    def validate_stream_interval(self):
        if self.stream_interval <= 0:
            raise ValueError(f"stream_interval must be positive, got {self.stream_interval}")
        return self

    @model_validator(mode="after")
    def validate_checkpoint_format(self):
        if self.checkpoint_format is not None and self.checkpoint_loader is not None:
            logger.warning("checkpoint_format and checkpoint_loader are both provided, "
                           "checkpoint_loader will be ignored.")
            self.checkpoint_loader = None

        if self.checkpoint_format is None and self.checkpoint_loader is None:
            self.checkpoint_format = "HF"

        return self

    @model_validator(mode='after')
    def validate_cuda_graph_config(self) -> 'TorchLlmArgs':
        """Validate CUDA graph configuration (fills batch_sizes / max_batch_size as the real validator)."""
        if self.cuda_graph_config is None:
            return self

        config = self.cuda_graph_config

        if config.batch_sizes:
            config.batch_sizes = sorted(config.batch_sizes)
            if config.max_batch_size != 0:
                if config.batch_sizes != CudaGraphConfig._generate_cuda_graph_batch_sizes(
                        config.max_batch_size, config.enable_padding):
                    raise ValueError("Please don't set both cuda_graph_config.batch_sizes "
                                     "and cuda_graph_config.max_batch_size.\n"
                                     f"cuda_graph_config.batch_sizes: {self.cuda_graph_config.batch_sizes}, "
                                     f"cuda_graph_config.max_batch_size: {self.cuda_graph_config.max_batch_size}")
            else:
                config.max_batch_size = max(config.batch_sizes)
        else:
            max_batch_size = config.max_batch_size or 128
            generated_sizes = CudaGraphConfig._generate_cuda_graph_batch_sizes(max_batch_size, config.enable_padding)
            config.batch_sizes = generated_sizes
            config.max_batch_size = max_batch_size

        return self

    @model_validator(mode='after')
    def validate_attention_dp_config(self) -> 'TorchLlmArgs':
        if self.attention_dp_config is None:
            return self

        config = self.attention_dp_config
        if config.enable_balance:
            if config.batching_wait_iters < 0:
                raise ValueError("attention_dp_config.batching_wait_iters must be greater or equal to 0 when "
                                 "enable_balance is true")
            if config.timeout_iters < 0:
                raise ValueError("attention_dp_config.timeout_iters must be greater or equal to 0 when "
                                 "enable_balance is true")
        return self

    @model_validator(mode='after')
    def validate_batch_wait_timeout_ms(self) -> 'TorchLlmArgs':
        """Validate batch wait timeout."""
        if self.batch_wait_timeout_ms < 0:
            raise ValueError("batch_wait_timeout_ms must be greater than 0")
        return self

    @model_validator(mode='after')
    def validate_batch_wait_timeout_iters(self) -> 'TorchLlmArgs':
        if self.batch_wait_timeout_iters < 0:
            raise ValueError(f"batch_wait_timeout_iters must be >= 0, got {self.batch_wait_timeout_iters}")
        return self

    @model_validator(mode='after')
    def validate_batch_wait_max_tokens_ratio(self) -> 'TorchLlmArgs':
        if self.batch_wait_max_tokens_ratio < 0 or self.batch_wait_max_tokens_ratio > 1:
            raise ValueError(
                f"batch_wait_max_tokens_ratio must be in range [0, 1], got {self.batch_wait_max_tokens_ratio}")
        return self

    @model_validator(mode='after')
    def validate_ray_worker_extension_cls(self) -> 'TorchLlmArgs':
        if self.ray_worker_extension_cls is not None and self.orchestrator_type != "ray":
            raise ValueError("ray_worker_extension_cls is only supported with orchestrator_type='ray'")
        return self


def update_llm_args_with_extra_dict(llm_args: Dict,
                                    llm_args_dict: Dict,
                                    extra_llm_api_options: Optional[str] = None) -> Dict:
    """Shallow-merge a YAML dict into LLM kwargs (real: ``llm_args | llm_args_dict``; YAML wins per top-level key).

    The real function first turns these YAML sub-dicts into config objects: quant_config, calib_config,
    build_config, decoding_config, enable_build_cache, speculative_config, lora_config, moe_config,
    attention_dp_config, sparse_attention_config. The double converts the ones it mirrors (build_config,
    calib_config, moe_config, attention_dp_config) and leaves the others as dicts. kv_cache_config,
    cache_transceiver_config, scheduler_config and cuda_graph_config stay dicts in both (pydantic validates them).
    """
    field_mapping: Dict[str, Any] = {
        "calib_config": CalibConfig,
        "build_config": BuildConfig,
        "moe_config": MoeConfig,
        "attention_dp_config": AttentionDpConfig,
    }
    for field_name, field_type in field_mapping.items():
        if field_name in llm_args_dict:
            # Some fields need to be converted manually.
            if field_name in ["build_config"]:
                llm_args_dict[field_name] = field_type.from_dict(llm_args_dict[field_name])
            else:
                llm_args_dict[field_name] = field_type(**llm_args_dict[field_name])
            extra_llm_str = f"because it's specified in {extra_llm_api_options}" if extra_llm_api_options else ""
            logger.warning(f"Overriding {field_name} {extra_llm_str}")

    llm_args = llm_args | llm_args_dict

    # For trtllm-bench or trtllm-serve, build_config may be passed for the PyTorch
    # backend, overwriting the knobs there since build_config always has the highest priority
    if "build_config" in llm_args:
        for key in [
                "max_batch_size",
                "max_num_tokens",
                "max_beam_width",
                "max_seq_len",
        ]:
            if key in llm_args_dict:
                logger.info(f"Overriding {key} from build_config to {llm_args_dict[key]}")
                setattr(llm_args["build_config"], key, llm_args_dict[key])

    return llm_args


def update_llm_args_with_extra_options(llm_args: Dict, extra_llm_api_options: str) -> Dict:
    if extra_llm_api_options is not None:
        with open(extra_llm_api_options, 'r') as f:
            llm_args_dict = yaml.safe_load(f)
            llm_args = update_llm_args_with_extra_dict(llm_args, llm_args_dict, extra_llm_api_options)
    return llm_args


LlmArgs = TorchLlmArgs

