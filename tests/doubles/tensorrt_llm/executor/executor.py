"""TEST DOUBLE of ``tensorrt_llm/executor/executor.py``: the ``GenerationExecutor`` base class.

Mirrors: client ids (``_get_next_client_id`` starts at 2), the per-executor ``IterationResult``
singletons ``_iter_stats_result`` / ``_iter_kv_events_result`` (created on the first
``generate_async``, ``mark_undone()`` on each later one), ``aget_stats`` returning an empty async
iterable before the first request, ``aget_kv_events`` asserting, and ``_handle_background_error``
turning a per-request error string into ``RequestError``. The concrete executor is
``tensorrt_llm._double_engine.DoubleExecutor`` (real: GenerationExecutorProxy / Worker + PyExecutor).
"""

import traceback
from abc import ABC, abstractmethod
from queue import Queue
from typing import AsyncIterable, List, Optional

from ..disaggregated_params import DisaggregatedParams
from ..logger import logger
from ..sampling_params import SamplingParams
from .request import GenerationRequest, LoRARequest, PromptAdapterRequest
from .result import GenerationResult, IterationResult
from .utils import RequestError

__all__ = ["GenerationExecutor", "CppExecutorError"]


async def empty_async_iterable() -> AsyncIterable:
    if False:  # ensures the function remains an async generator
        yield


class CppExecutorError(RuntimeError):

    def __init__(self, message: Optional[str] = None):
        self.message = message
        self.stack_trace = traceback.format_exc()
        super().__init__(message)

    def __str__(self):
        return f"{self.message}\nStack trace:\n{self.stack_trace}"


class GenerationExecutor(ABC):

    def __init__(self, is_llm_executor: Optional[bool] = None):
        # This is used to capture the exceptions from the threads.
        self._error_queue: Queue = Queue()

        # A flag to avoid calling shutdown() recursively.
        self.doing_shutdown = False

        self._last_client_id: int = 1

        # whether it's the executor instance of LLM API
        self._is_llm_executor = is_llm_executor
        self._iter_kv_events_result: IterationResult | None = None
        self._iter_stats_result: IterationResult | None = None

    @abstractmethod
    def submit(self, request: GenerationRequest) -> GenerationResult:
        pass

    @abstractmethod
    def abort_request(self, request_id: int) -> None:
        pass

    def generate_async(
        self,
        prompt_token_ids: List[int],
        sampling_params: SamplingParams,
        query_token_ids: Optional[list] = None,
        lora_request: Optional[LoRARequest] = None,
        prompt_adapter_request: Optional[PromptAdapterRequest] = None,
        streaming: bool = False,
        kv_cache_retention_config=None,
        disaggregated_params: Optional[DisaggregatedParams] = None,
        postproc_params=None,
        multimodal_params=None,
        scheduling_params=None,
        cache_salt_id: Optional[int] = None,
        arrival_time: Optional[float] = None,
    ) -> GenerationResult:
        """Generate output for the given prompt token ids in the asynchronous mode."""
        assert isinstance(prompt_token_ids[0], int)
        assert isinstance(sampling_params, SamplingParams)

        self._maybe_initialize_iteration_results()

        request = GenerationRequest(
            prompt_token_ids,
            sampling_params=sampling_params,
            postproc_params=postproc_params,
            query_token_ids=query_token_ids,
            lora_request=lora_request,
            prompt_adapter_request=prompt_adapter_request,
            streaming=streaming,
            kv_cache_retention_config=kv_cache_retention_config,
            disaggregated_params=disaggregated_params,
            multimodal_params=multimodal_params,
            scheduling_params=scheduling_params,
            cache_salt_id=cache_salt_id,
            arrival_time=arrival_time)
        return self.submit(request)

    def _get_next_client_id(self):
        # (self._last_client_id + 1) % UINT64_MAX
        self._last_client_id = (self._last_client_id + 1) & ((1 << 64) - 1)
        return self._last_client_id

    def _maybe_initialize_iteration_results(self):
        if self._is_llm_executor:
            if self._iter_stats_result is None:
                # singleton to store cpp runtime stats
                self._iter_stats_result = IterationResult()
            else:
                # expect more engine stats whenever new prompts are submitted
                self._iter_stats_result.mark_undone()

            if self._iter_kv_events_result is None:
                self._iter_kv_events_result = IterationResult()
            else:
                self._iter_kv_events_result.mark_undone()

    def _handle_background_error(self, error: Optional[Exception | str] = None):
        """ Process the errors from the threads or processes.
        NOTE: This should be called in the main thread.
        """
        if error is not None:
            if isinstance(error, RequestError):
                pass  # A per-request error, can be captured and ignored
            elif isinstance(error, str):
                # A per-request error, can be captured and ignored
                error = RequestError(error)
            else:
                # Serious error from background thread or process
                if not isinstance(error, BaseException):
                    error = RuntimeError(repr(error))
                self.shutdown()
            raise error

        # Here we raise the first error in the queue.
        if not self._error_queue.empty():
            e = self._error_queue.get()
            self._error_queue.task_done()
            self.shutdown()
            raise e

    def is_shutdown(self) -> bool:
        return self.doing_shutdown

    @abstractmethod
    def shutdown(self):
        pass

    def get_stats(self, timeout: float) -> List[dict]:
        """Get iteration statistics from the runtime (synchronous drain)."""
        if self._iter_stats_result is None:
            logger.warning("Iteration statistics are not available yet. To collect runtime statistics, please call "
                           "get_stats() AFTER prompts have been submitted.")
            return []

        self._iter_stats_result.set_timeout(timeout)
        return self._iter_stats_result.get_results()

    def aget_stats(self, timeout: float) -> IterationResult:
        """Get iteration statistics from the runtime as an async iterable."""
        if self._iter_stats_result is None:
            logger.warning("Iteration statistics are not available yet. To collect runtime statistics, please call "
                           "get_stats_async() in async coroutine or the /metrics endpoint (if you're using "
                           "trtllm-serve) AFTER prompts have been submitted.")
            return empty_async_iterable()

        self._iter_stats_result.set_timeout(timeout)
        return self._iter_stats_result

    def get_kv_events(self, timeout: float) -> List[dict]:
        """Get iteration kv events from the runtime (synchronous drain)."""
        assert self._iter_kv_events_result is not None, "KV Event IterationResult is not properly instantiated."

        self._iter_kv_events_result.set_timeout(timeout)
        return self._iter_kv_events_result.get_results()

    def aget_kv_events(self, timeout=None) -> IterationResult:
        """Get iteration kv events from the runtime as an async iterable."""
        assert self._iter_kv_events_result is not None, "KV Event IterationResult is not properly instantiated."

        self._iter_kv_events_result.set_timeout(timeout)
        return self._iter_kv_events_result
