"""TEST DOUBLE of ``tensorrt_llm/llmapi/llm.py`` (real file @ 4c05a74891e4): ``BaseLLM``, ``_TorchLLM``,
``LLM`` and ``RequestOutput``.

Same constructor checks (TensorRT-only argument error, ``"LLM got invalid argument: <key>"``, pydantic
validation of ``TorchLlmArgs``, multi-GPU count check), same ``generate`` / ``generate_async`` steps and
errors (``"LLM is shutting down"``, sampling-params type / end_id checks, context-only ``max_tokens = 1``
mutation, ``prompt_inputs`` types, the ``max_num_tokens`` check), ``get_stats[_async]``,
``get_kv_cache_events[_async]``, ``shutdown`` (idempotent), context manager, no pickling. The model is
never loaded: ``_build_model`` reads the tokenizer (``AutoTokenizer``, unless ``skip_tokenizer_init``),
``config.json`` and ``generation_config.json`` and starts the double's simulated executor
(``tensorrt_llm._double_engine``). Only ``backend="pytorch"`` is supported.
"""

import atexit
import os
import socket
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Literal, Optional, Sequence, Union

from .. import _double_engine
from ..disaggregated_params import DisaggregatedParams
from ..executor import (
    DetokenizedGenerationResultBase,
    GenerationExecutor,
    GenerationResult,
    IterationResult,
    LoRARequest,
    PromptAdapterRequest,
)
from ..inputs import PromptInputs, create_input_processor, prompt_inputs
from ..logger import logger
from ..sampling_params import SamplingParams
from ..scheduling_params import SchedulingParams
from .llm_args import TorchLlmArgs, TrtLlmArgs
from .tokenizer import TokenizerBase, load_hf_tokenizer


class RequestOutput(DetokenizedGenerationResultBase, GenerationResult):
    """The output data of a completion request to the LLM.

    Attributes:
        request_id (int): The unique ID of the request.
        prompt (str, optional): The prompt string of the request.
        prompt_token_ids (List[int]): The token ids of the prompt.
        outputs (List[CompletionOutput]): The output sequences of the request.
        context_logits (torch.Tensor, optional): The logits on the prompt token ids.
        mm_embedding_handle (Dict[str, Any], optional): The multimodal embedding handle of the request.
        finished (bool): Whether the whole request is finished.
    """

    def __init__(self) -> None:
        raise RuntimeError(
            f"{self.__class__.__name__} is designed to be instantiated using {self.__class__.__name__}."
            f"_from_generation_result by GenerationExecutor. "
            f"Users are not expected to create {self.__class__.__name__} directly.")

    @classmethod
    def _from_generation_result(cls,
                                generation_result: GenerationResult,
                                prompt: Optional[str] = None,
                                tokenizer: Optional[TokenizerBase] = None) -> 'RequestOutput':
        inst = cls.__new__(cls)
        inst.__dict__.update(generation_result.__dict__)
        inst.tokenizer = tokenizer
        inst._streaming = generation_result._streaming
        inst._prompt = prompt
        return inst

    @property
    def prompt(self) -> Optional[str]:
        return self._prompt

    def _repr_fields(self):
        return ["request_id", "prompt", "prompt_token_ids", "outputs", "finished", "mm_embedding_handle"]


def _load_json_namespace(path: Path) -> Optional[SimpleNamespace]:
    import json

    if not path.is_file():
        return None
    return SimpleNamespace(**json.loads(path.read_text()))


class BaseLLM:
    """
    The base class for all LLM classes.
    """

    def __init__(self,
                 model: Union[str, Path],
                 tokenizer: Optional[Union[str, Path, TokenizerBase, Any]] = None,
                 tokenizer_mode: Literal['auto', 'slow'] = 'auto',
                 skip_tokenizer_init: bool = False,
                 trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1,
                 dtype: str = "auto",
                 revision: Optional[str] = None,
                 tokenizer_revision: Optional[str] = None,
                 **kwargs: Any) -> None:

        self._executor_cls = kwargs.pop("executor_cls", GenerationExecutor)
        self._orchestrator_type = kwargs.get("orchestrator_type", None)
        self._llm_id = None
        self._executor: Optional[GenerationExecutor] = None
        self.mpi_session = None

        try:
            backend = kwargs.get('backend', None)
            if backend == "pytorch":
                logger.info("Using LLM with PyTorch backend")
                llm_args_cls = TorchLlmArgs
            else:
                raise ValueError(f"The tensorrt_llm test double supports only backend='pytorch', got {backend!r}")

            # check the kwargs and raise ValueError directly
            valid_keys = set(list(llm_args_cls.model_fields.keys()) + ['_mpi_session', 'backend'])
            for key in kwargs:
                if key not in valid_keys:
                    raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")

            self.args = llm_args_cls.from_kwargs(model=model,
                                                 tokenizer=tokenizer,
                                                 tokenizer_mode=tokenizer_mode,
                                                 skip_tokenizer_init=skip_tokenizer_init,
                                                 trust_remote_code=trust_remote_code,
                                                 tensor_parallel_size=tensor_parallel_size,
                                                 dtype=dtype,
                                                 revision=revision,
                                                 tokenizer_revision=tokenizer_revision,
                                                 **kwargs)

        except Exception as e:
            logger.error(f"Failed to parse the arguments for the LLM constructor: {e}")
            raise e

        self.mpi_session = self.args.mpi_session

        if self.args.parallel_config.is_multi_gpu:
            device_count = int(os.environ.get("TRTLLM_DOUBLE_GPU_COUNT", "8"))  # real: get_device_count()
            if device_count < self.args.parallel_config.world_size_per_node:
                raise RuntimeError(f"Only {device_count} GPUs are available, but "
                                   f"{self.args.parallel_config.world_size} are required.")

        self._engine_dir: Optional[Path] = None
        self._workspace = None
        self._hf_model_dir: Optional[Path] = None
        self._hf_model_config = None
        self._generation_config = None
        self._tokenizer: Optional[TokenizerBase] = None
        self.runtime_context = None

        self._build_model()

        atexit.register(LLM._shutdown_wrapper, weakref.ref(self))

    @property
    def llm_id(self) -> str:
        if self._llm_id is None:
            hostname = socket.gethostname()
            pid = os.getpid()
            timestamp = int(time.time() * 1000)
            self._llm_id = f"{hostname}-{pid}-{timestamp}"

        return self._llm_id

    def generate(
        self,
        inputs: Union[PromptInputs, Sequence[PromptInputs]],
        sampling_params: Optional[Union[SamplingParams, List[SamplingParams]]] = None,
        use_tqdm: bool = True,
        lora_request: Optional[Union[LoRARequest, Sequence[LoRARequest]]] = None,
        prompt_adapter_request: Optional[Union[PromptAdapterRequest, Sequence[PromptAdapterRequest]]] = None,
        kv_cache_retention_config: Optional[Any] = None,
        disaggregated_params: Optional[Union[DisaggregatedParams, Sequence[DisaggregatedParams]]] = None,
        scheduling_params: Optional[Union[SchedulingParams, List[SchedulingParams]]] = None,
        cache_salt: Optional[Union[str, Sequence[str]]] = None,
    ) -> Union[RequestOutput, List[RequestOutput]]:
        """Generate output for the given prompts in the synchronous mode (single prompt or a batch)."""
        unbatched = not isinstance(inputs, list)
        if not unbatched:
            if isinstance(inputs[0], int):
                unbatched = True

        if unbatched:
            inputs = [inputs]

        inputs = [prompt_inputs(i) for i in inputs]

        def _item_at(maybe_batched: Union[Any, Sequence[Any]], pos: int) -> Any:
            if isinstance(maybe_batched, list):
                return maybe_batched[pos]
            else:
                return maybe_batched

        futures = []
        for i, request_inputs in enumerate(inputs):
            future = self.generate_async(
                request_inputs,
                sampling_params=_item_at(sampling_params, i),
                lora_request=_item_at(lora_request, i),
                prompt_adapter_request=_item_at(prompt_adapter_request, i),
                kv_cache_retention_config=_item_at(kv_cache_retention_config, i),
                disaggregated_params=_item_at(disaggregated_params, i),
                scheduling_params=_item_at(scheduling_params, i),
                cache_salt=_item_at(cache_salt, i),
                streaming=False,
            )
            futures.append(future)

        for future in futures:
            future.result()

        if unbatched:
            futures = futures[0]

        return futures

    def generate_async(
        self,
        inputs: PromptInputs,
        sampling_params: Optional[SamplingParams] = None,
        lora_request: Optional[LoRARequest] = None,
        prompt_adapter_request: Optional[PromptAdapterRequest] = None,
        streaming: bool = False,
        kv_cache_retention_config: Optional[Any] = None,
        disaggregated_params: Optional[DisaggregatedParams] = None,
        _postproc_params: Optional[Any] = None,
        scheduling_params: Optional[SchedulingParams] = None,
        cache_salt: Optional[str] = None,
    ) -> RequestOutput:
        """Generate output for the given prompt in the asynchronous mode (single prompt only)."""

        # Check if the worker is shutting down
        if self._executor is None or self._executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")

        arrival_time = time.monotonic() if self.args.return_perf_metrics else None

        sampling_params = self._prepare_sampling_params(sampling_params)
        cache_salt_id = _double_engine.cache_salt_id(cache_salt) if cache_salt is not None else None
        # With pytorch backend, py_executor has logic to handle max_tokens of 1,
        # so set to 1 to avoid allocating unnecessary KV cache blocks for single request
        is_ctx_only = disaggregated_params is not None and disaggregated_params.request_type == "context_only"
        is_gen_only = disaggregated_params is not None and disaggregated_params.request_type == "generation_only"
        is_mm_disagg = (disaggregated_params is not None
                        and disaggregated_params.multimodal_embedding_handles is not None)

        if is_ctx_only and not self._on_trt_backend:
            sampling_params.max_tokens = 1

        inputs = prompt_inputs(inputs)

        query_token_ids = None
        if is_mm_disagg:
            raise ValueError("Multimodal disaggregated inference is not supported for this model")
        elif "prompt_token_ids" in inputs:
            prompt_token_ids = inputs['prompt_token_ids']
            prompt = None
            query_token_ids = inputs.get("query_token_ids", None)
        elif "prompt" in inputs:
            if 'multi_modal_data' in inputs or 'multi_modal_embeddings' in inputs:
                raise ValueError("The tensorrt_llm test double does not simulate multimodal inputs")
            prompt_token_ids, extra_processed_inputs = self.input_processor(inputs, sampling_params)
            prompt = inputs['prompt']
            if extra_processed_inputs is not None:
                query_token_ids = extra_processed_inputs.get('query_token_ids')
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")

        self._check_arguments(len(prompt_token_ids),
                              len(query_token_ids) if query_token_ids is not None else 0,
                              sampling_params,
                              is_gen_only=is_gen_only)
        if sampling_params.n != 1 or sampling_params.best_of != 1 or sampling_params.use_beam_search:
            raise ValueError("The tensorrt_llm test double simulates n == best_of == 1 without beam search only")
        # Real: the executor builds the C++ request on submission; SamplingParams.stop strings that were never
        # tokenized (no tokenizer to run _setup) raise RuntimeError from _get_stop_words() there.
        sampling_params._get_stop_words()
        result = self._executor.generate_async(
            prompt_token_ids,
            query_token_ids=query_token_ids,
            sampling_params=sampling_params,
            lora_request=lora_request,
            prompt_adapter_request=prompt_adapter_request,
            streaming=streaming,
            kv_cache_retention_config=kv_cache_retention_config,
            disaggregated_params=disaggregated_params,
            postproc_params=_postproc_params,
            scheduling_params=scheduling_params,
            cache_salt_id=cache_salt_id,
            arrival_time=arrival_time,
        )

        return RequestOutput._from_generation_result(result, prompt, self.tokenizer)

    def get_stats(self, timeout: Optional[float] = 2) -> List[dict]:
        '''Get iteration statistics from the runtime (a list of dicts; see get_stats_async).'''
        return self._executor.get_stats(timeout=timeout)

    def get_stats_async(self, timeout: Optional[float] = 2) -> IterationResult:
        '''Get iteration statistics from the runtime.

        Returns:
            tensorrt_llm.executor.result.IterationResult: An async iterable object containing runtime stats
            (one dict per iteration; it stops at the first gap of `timeout` seconds).
        '''
        return self._executor.aget_stats(timeout=timeout)

    def get_kv_cache_events(self, timeout: Optional[float] = 2) -> List[dict]:
        '''Get iteration KV events from the runtime (a list of dicts).

        To enable KV events:
            - set `event_buffer_max_size` to a positive integer in the `KvCacheConfig`.
            - set `enable_block_reuse` to True in the `KvCacheConfig`.
        '''
        return self._executor.get_kv_events(timeout=timeout)

    def get_kv_cache_events_async(self, timeout: Optional[float] = 2) -> IterationResult:
        '''Get iteration KV events from the runtime as an async iterable (one event dict per item).'''
        return self._executor.aget_kv_events(timeout=timeout)

    def _prepare_sampling_params(self, sampling_params: Optional[SamplingParams] = None) -> SamplingParams:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            if sampling_params.end_id is None:
                if self.tokenizer is None:
                    raise ValueError(
                        "tokenizer is required to reset end_id if it is None, or you can explicitly specify the "
                        "end_id for sampling_params")
                sampling_params._setup(self.tokenizer, self._hf_model_config, self._generation_config)
        else:
            raise TypeError(
                f"The sampling_params must be type SamplingParams or None, but got {type(sampling_params)}")

        if sampling_params._stream_interval is None:
            sampling_params._stream_interval = getattr(self.args, "stream_interval", 1)
        sampling_params.return_perf_metrics = sampling_params.return_perf_metrics or self.args.return_perf_metrics
        return sampling_params

    def _check_arguments(self, prompt_len: int, query_len: int, sampling_params: SamplingParams,
                         is_gen_only: bool) -> None:

        if self.args.backend in ["pytorch", "_autodeploy"]:
            # Check prompt length and query length against max_num_tokens to filter illegal requests.
            # Skip check for gen-only requests
            if self.args.backend == "pytorch" and not self.args.enable_chunked_prefill and not is_gen_only:
                max_num_tokens = self.args.max_num_tokens
                if max_num_tokens and prompt_len / self.args.parallel_config.cp_size + query_len > max_num_tokens:
                    raise ValueError(
                        f"The sum of prompt length ({prompt_len/self.args.parallel_config.cp_size}), query length "
                        f"({query_len}) should not exceed "
                        f"max_num_tokens ({max_num_tokens})")
            return

    def _build_model(self):
        model_dir = Path(self.args.model)
        if not model_dir.is_dir():
            raise ValueError(f"The tensorrt_llm test double cannot download models; {self.args.model!r} must be a "
                             "local Hugging Face model directory")
        self._hf_model_dir = model_dir

    @property
    def _on_trt_backend(self) -> bool:
        return isinstance(self.args, TrtLlmArgs)

    def _try_load_tokenizer(self) -> Optional[TokenizerBase]:
        if self.args.skip_tokenizer_init:
            return None

        if self.args.tokenizer is not None:
            assert isinstance(self.args.tokenizer, TokenizerBase)
            return self.args.tokenizer

        return load_hf_tokenizer(self.args.model,
                                 trust_remote_code=self.args.trust_remote_code,
                                 use_fast=self.args.tokenizer_mode != 'slow')

    @property
    def tokenizer(self) -> Optional[TokenizerBase]:
        if hasattr(self, "input_processor"):
            if hasattr(self.input_processor, "tokenizer"):
                return self.input_processor.tokenizer
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: TokenizerBase):
        self._tokenizer = tokenizer

    def shutdown(self) -> None:
        if hasattr(self, "_executor") and self._executor is not None:
            self._executor.shutdown()
            self._executor = None

        if hasattr(self, 'mpi_session') and self.mpi_session is not None:
            self.mpi_session.shutdown()
            self.mpi_session = None

    @staticmethod
    def _shutdown_wrapper(self_ref):
        # Retrieve the instance if it still exists
        instance = self_ref()
        if instance is not None:
            instance.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> bool:
        del exc_value, traceback
        self.shutdown()
        return False  # propagate exceptions

    def __getstate__(self):
        raise RuntimeError("LLM object can not be pickled.")

    def __del__(self):
        self.shutdown()


class _TorchLLM(BaseLLM):
    """LLM class is the main class for running a LLM model using PyTorch backend."""

    def __init__(self,
                 model: Union[str, Path],
                 tokenizer: Optional[Union[str, Path, TokenizerBase, Any]] = None,
                 tokenizer_mode: Literal['auto', 'slow'] = 'auto',
                 skip_tokenizer_init: bool = False,
                 trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1,
                 dtype: str = "auto",
                 revision: Optional[str] = None,
                 tokenizer_revision: Optional[str] = None,
                 **kwargs: Any) -> None:

        # TODO: deprecate backend in LLM kwargs
        backend = kwargs.pop("backend", "pytorch")

        # Validate that users don't pass TrtLlmArgs-specific arguments
        self._validate_args_for_torch_backend(kwargs)

        super().__init__(model,
                         tokenizer,
                         tokenizer_mode,
                         skip_tokenizer_init,
                         trust_remote_code,
                         tensor_parallel_size,
                         dtype,
                         revision,
                         tokenizer_revision,
                         backend=backend,
                         **kwargs)

    def _build_model(self):
        super()._build_model()
        assert self._engine_dir is None

        self._tokenizer = self._try_load_tokenizer()
        self._hf_model_config = _load_json_namespace(self._hf_model_dir / "config.json")
        self._generation_config = _load_json_namespace(self._hf_model_dir / "generation_config.json")

        self.input_processor = create_input_processor(self._hf_model_dir, self.tokenizer,
                                                      getattr(self.args, "checkpoint_format", None))
        self._tokenizer = self.input_processor.tokenizer

        model_info = _double_engine.ModelInfo.load(self._hf_model_dir)
        if model_info.eos_token_id is None and self._tokenizer is not None:
            model_info.eos_token_id = self._tokenizer.eos_token_id
        self._executor = _double_engine.DoubleExecutor(self.args, model_info, self._tokenizer)

    def _validate_args_for_torch_backend(self, kwargs: dict) -> None:
        """Validate that users don't pass TrtLlmArgs-specific arguments when using PyTorch backend.
        """
        trtllm_fields = set(TrtLlmArgs.model_fields.keys())
        torchllm_fields = set(TorchLlmArgs.model_fields.keys())

        trtllm_specific_fields = trtllm_fields - torchllm_fields

        # Check if any TrtLlmArgs-specific arguments are passed
        trtllm_specific_args = []
        for key in kwargs:
            if key in trtllm_specific_fields:
                trtllm_specific_args.append(key)

        if trtllm_specific_args:
            raise ValueError(
                f"The following arguments are specific to TensorRT backend and cannot be used with PyTorch backend: "
                f"{trtllm_specific_args}.\n"
                f"Please use 'from tensorrt_llm._tensorrt_engine import LLM' instead to use the TensorRT backend.")


class LLM(_TorchLLM):
    """LLM class is the main class for running a LLM model (TEST DOUBLE; see the package docstring).

    For more details about the arguments, please refer to :class:`TorchLlmArgs`.
    """

    def __init__(self,
                 model: Union[str, Path],
                 tokenizer: Optional[Union[str, Path, TokenizerBase, Any]] = None,
                 tokenizer_mode: Literal['auto', 'slow'] = 'auto',
                 skip_tokenizer_init: bool = False,
                 trust_remote_code: bool = False,
                 tensor_parallel_size: int = 1,
                 dtype: str = "auto",
                 revision: Optional[str] = None,
                 tokenizer_revision: Optional[str] = None,
                 **kwargs: Any) -> None:
        super().__init__(model, tokenizer, tokenizer_mode, skip_tokenizer_init, trust_remote_code,
                         tensor_parallel_size, dtype, revision, tokenizer_revision, **kwargs)
