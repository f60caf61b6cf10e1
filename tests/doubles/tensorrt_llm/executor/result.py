"""TEST DOUBLE of ``tensorrt_llm/executor/result.py`` (real file @ a678b91aafbe).

Same classes and the same response-handling code paths as the real module, minus Ray queues,
post-processing workers, logits and metrics collection:

- ``CompletionOutput``: ``token_ids`` is cumulative, ``token_ids_diff`` holds the tokens of the last step.
- ``GenerationResultBase._handle_response``: an error response calls the executor's background error
  handler, which raises ``RequestError(error_msg)`` out of ``result()`` / ``aresult()`` / ``__anext__``
  (the result is then NOT marked finished, as in the real code).
- finish reasons: END_ID -> 'stop'; STOP_WORDS -> 'stop' + ``stop_reason`` and the stop word trimmed
  from ``token_ids`` unless ``include_stop_str_in_output``; LENGTH -> 'length'; TIMED_OUT -> 'timeout';
  NOT_FINISHED on a context-only request -> 'not_finished'; CANCELLED -> 'cancelled'.
- ``IterationResult``: the stats / KV-event stream; stops at the first ``timeout`` gap.
"""

import asyncio
import json
import weakref
from dataclasses import dataclass, field
from queue import Empty
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, TypeAlias, Union
from weakref import WeakMethod

from ..bindings import executor as tllm
from ..disaggregated_params import DisaggregatedParams
from ..llmapi.utils import AsyncQueue, ThreadQueue
from ..sampling_params import SamplingParams
from .utils import ErrorResponse, RequestError, has_event_loop

if TYPE_CHECKING:
    from .executor import GenerationExecutor
    from .request import GenerationRequest

__all__ = [
    "CompletionOutput",
    "GenerationResultBase",
    "DetokenizedGenerationResultBase",
    "GenerationResult",
    "IterationResult",
    "Logprob",
    "TokenLogprobs",
]


@dataclass(slots=True)
class Logprob:
    """Holds logprob and vocab rank for a token."""
    logprob: float
    rank: Optional[int] = None


# List of token_id_to_Logprob dict for prompt or generation texts
TokenLogprobs: TypeAlias = list[dict[int, Logprob]]


@dataclass(slots=True)
class CompletionOutput:
    """The output data of one completion output of a request.

    Args:
        index (int): The index of the output in the request.
        text (str): The generated output text. Defaults to "".
        token_ids (List[int], optional): The token ids of the generated output text. Defaults to [].
        cumulative_logprob (float, optional): The cumulative log probability of the generated output text.
        logprobs (TokenLogprobs | List[float], optional): The log probabilities of the top probability words at
            each position if the logprobs are requested.
        prompt_logprobs (TokenLogprobs, optional): The log probabilities per prompt token (not simulated).
        finish_reason (Literal['stop', 'length', 'timeout', 'cancelled'], optional): The reason why the sequence
            is finished ('not_finished' for a context-only request whose C++ finish reason is NOT_FINISHED).
        stop_reason (int, str, optional): The stop string or token id that caused the completion to stop, None if
            the completion finished for some other reason.
        generation_logits: always None in the double.
        additional_context_outputs / additional_generation_outputs: always None in the double.
        disaggregated_params (DisaggregatedParams, optional): Parameters needed for disaggregated serving.
        request_perf_metrics (RequestPerfMetrics, optional): Performance metrics for the request.

    Attributes:
        length (int): The number of generated tokens.
        token_ids_diff (List[int]): Newly generated token ids.
        logprobs_diff (TokenLogprobs | List[float]): Logprobs of newly generated tokens.
        text_diff (str): Newly generated tokens.
    """
    index: int
    text: str = ""
    token_ids: Optional[List[int]] = field(default_factory=list)
    cumulative_logprob: Optional[float] = None
    logprobs: Optional[TokenLogprobs | List[float]] = field(default_factory=list)
    prompt_logprobs: Optional[TokenLogprobs] = field(default_factory=list)
    finish_reason: Optional[Literal['stop', 'length', 'timeout', 'cancelled']] = None
    stop_reason: Optional[Union[int, str]] = None
    generation_logits: Optional[Any] = None
    additional_context_outputs: Optional[Dict[str, Any]] = None
    additional_generation_outputs: Optional[Dict[str, Any]] = None
    disaggregated_params: Optional[DisaggregatedParams] = None
    request_perf_metrics: Optional[tllm.RequestPerfMetrics] = None

    # hidden fields for tracking the diffs
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)
    _last_logprobs_len: int = field(default=0, init=False, repr=False)
    _incremental_states: Optional[dict] = field(default=None, init=False, repr=False)
    # the result of result_handler passed to postprocess workers
    _postprocess_result: Any = None

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len:]

    @property
    def token_ids_diff(self) -> List[int]:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> TokenLogprobs | List[float]:
        return self.logprobs[self._last_logprobs_len:]


def _make_queues() -> tuple[Any, Optional[AsyncQueue]]:
    # Real: an AsyncQueue when an event loop is running at construction, else a queue.Queue.
    if has_event_loop():
        aqueue = AsyncQueue()
        return aqueue.sync_q, aqueue
    return ThreadQueue(), None


class GenerationResultBase:
    ''' This holds the core logic of the GenerationResult class. '''

    def __init__(self,
                 id: int,
                 sampling_params: SamplingParams,
                 background_error_handler: Optional[Callable] = None,
                 postproc_params: Any = None):
        self.id = id
        self.sampling_params = sampling_params
        self.postproc_params = postproc_params
        self.disaggregated_params = None
        self.decoding_iter = 0
        self.cached_tokens = 0
        # Average decoded tokens per runtime iteration; set when the first LLM response arrives.
        self.avg_decoded_tokens_per_iter: Optional[float] = None
        self._done = False
        self.metrics_dict: dict = {}

        self.queue, self.aqueue = _make_queues()

        self._outputs: List[CompletionOutput] = [CompletionOutput(i) for i in range(self.sampling_params.best_of)]
        self._context_logits: Optional[Any] = None
        self._mm_embedding_handle: Optional[Dict[str, Any]] = None

        self._background_error_handler = None
        if background_error_handler is not None:
            if not isinstance(background_error_handler, WeakMethod):
                self._background_error_handler = WeakMethod(background_error_handler)
            else:
                self._background_error_handler = background_error_handler

    @property
    def outputs(self) -> List[CompletionOutput]:
        sampling_param = self.sampling_params
        if (sampling_param.use_beam_search or sampling_param.n == sampling_param.best_of):
            return self._outputs[:sampling_param.n]
        # Pick the top-n outputs, sorted by cumulative log probs.
        sorted_outputs = sorted(
            self._outputs,
            key=lambda x: (x.cumulative_logprob if x.cumulative_logprob is not None else float('-inf')),
            reverse=True)
        for i, sorted_out in enumerate(sorted_outputs):
            sorted_out.index = i
        return sorted_outputs[:sampling_param.n]

    @property
    def context_logits(self) -> Optional[Any]:
        return self._context_logits

    @property
    def mm_embedding_handle(self) -> Optional[Dict[str, Any]]:
        return self._mm_embedding_handle

    def _handle_sequence(self, finish_reasons, response_tensors, sequence_index):
        """ Handle a single sequence in the response (real: ``_handle_sequence``). """

        seq_idx = sequence_index
        src_idx = sequence_index if self.sampling_params.use_beam_search else 0

        output = self._outputs[seq_idx]
        output.disaggregated_params = self.disaggregated_params
        output._last_token_ids_len = len(output.token_ids)
        if self.sampling_params.use_beam_search:
            output.token_ids = response_tensors.output_token_ids[src_idx]
        else:
            output.token_ids.extend(response_tensors.output_token_ids[src_idx])

        if response_tensors.cum_log_probs is not None:
            output.cumulative_logprob = response_tensors.cum_log_probs[src_idx]

        if response_tensors.log_probs is not None:  # PyTorch backend: a growing list per sequence
            output._last_logprobs_len = len(output.logprobs)
            assert output._last_logprobs_len <= len(response_tensors.log_probs[src_idx])
            output.logprobs += response_tensors.log_probs[src_idx][output._last_logprobs_len:]
            if finish_reasons[src_idx] != tllm.FinishReason.CANCELLED:
                if len(output.logprobs) > output.length:
                    output.logprobs = output.logprobs[:output.length]
                assert len(output.logprobs) == output.length

        # when sampling_params.n > 1 and is cancelled, make sure all the outputs be marked as cancelled.
        if finish_reasons and finish_reasons[src_idx] == tllm.FinishReason.CANCELLED:
            output.finish_reason = 'cancelled'

        if response_tensors.request_perf_metrics is not None:
            output.request_perf_metrics = response_tensors.request_perf_metrics

        if self._done:
            if finish_reasons[src_idx] == tllm.FinishReason.END_ID:
                output.finish_reason = 'stop'
            elif finish_reasons[src_idx] == tllm.FinishReason.STOP_WORDS:
                output.finish_reason = 'stop'
                for stop_reason, stop_ids in self.sampling_params._get_stop_reasons_and_words():
                    if output.token_ids[-len(stop_ids):] == stop_ids:
                        output.stop_reason = stop_reason
                        if not self.sampling_params.include_stop_str_in_output:
                            output.token_ids = output.token_ids[:-len(stop_ids)]
                        break
            elif finish_reasons[src_idx] == tllm.FinishReason.LENGTH:
                output.finish_reason = 'length'
            elif finish_reasons[src_idx] == tllm.FinishReason.TIMED_OUT:
                output.finish_reason = 'timeout'
            # For disaggregated serving, finish reason might be NOT_FINISHED which is ok
            elif (finish_reasons[src_idx] == tllm.FinishReason.NOT_FINISHED
                  and self.disaggregated_params is not None
                  and self.disaggregated_params.request_type == "context_only"):
                output.finish_reason = 'not_finished'
            elif finish_reasons[src_idx] == tllm.FinishReason.CANCELLED:
                pass
            else:
                raise ValueError(f"Unknown finish reason: {finish_reasons[src_idx]}")

    def _handle_response(self, response: Union[tllm.Response, ErrorResponse]):
        if isinstance(response, tllm.Response):
            if response.has_error():
                if self._background_error_handler is not None and (handler := self._background_error_handler()):
                    handler(response.error_msg)  # raises RequestError(error_msg)
                # Double only: the executor is gone (LLM shut down); raise what its handler would have raised.
                raise RequestError(response.error_msg)

            response_result = response.result
            self._done = response_result.is_final
            context_phase_params = response_result.context_phase_params
            self.decoding_iter = response_result.decoding_iter
            self.cached_tokens = getattr(response_result, 'cached_tokens', 0)
            self.avg_decoded_tokens_per_iter = response_result.avg_decoded_tokens_per_iter
            if context_phase_params is not None:
                self.disaggregated_params = DisaggregatedParams(
                    request_type="context_only",
                    first_gen_tokens=context_phase_params.first_gen_tokens,
                    ctx_request_id=context_phase_params.req_id,
                    opaque_state=context_phase_params.opaque_state,
                    draft_tokens=context_phase_params.draft_tokens)

            finish_reasons = response_result.finish_reasons
            self._handle_sequence(finish_reasons, response_result, response_result.sequence_index)

            if response_result.context_logits is not None:
                self._context_logits = response_result.context_logits

            # Processing background errors here ASAF during generation.
            if self._background_error_handler and (handler := self._background_error_handler()):
                handler()
        elif isinstance(response, ErrorResponse):
            if self._background_error_handler is not None and (handler := self._background_error_handler()):
                handler(response.error_msg)
        else:
            raise ValueError(f"Unknown response type: {response}")


class DetokenizedGenerationResultBase(GenerationResultBase):
    ''' The base class for the generation result with detokenization support. '''

    def __init__(self,
                 id: int,
                 sampling_params: SamplingParams,
                 tokenizer: Optional[Callable] = None,
                 streaming: bool = False,
                 background_error_handler: Optional[Callable] = None,
                 postproc_params: Any = None):
        super().__init__(id, sampling_params, background_error_handler=background_error_handler,
                         postproc_params=postproc_params)
        self.tokenizer = tokenizer
        self._streaming = streaming

    def _handle_response(self, response: Any):
        GenerationResultBase._handle_response(self, response)

        kwargs = {
            'skip_special_tokens': self.sampling_params.skip_special_tokens,
            'spaces_between_special_tokens': self.sampling_params.spaces_between_special_tokens
        }
        if self.sampling_params.detokenize and self.tokenizer is not None:
            for beam_output in self.outputs:
                beam_output._last_text_len = len(beam_output.text)
                # Real: incremental detokenization when streaming; the double decodes the whole sequence.
                beam_output.text = self.tokenizer.decode(beam_output.token_ids, **kwargs)

                is_generating = not self._done
                is_finished_with_stop_or_length = (beam_output.finish_reason == 'stop'
                                                   or beam_output.finish_reason == 'length')

                if is_generating or is_finished_with_stop_or_length:
                    for stop_reason, _ in self.sampling_params._get_stop_reasons_and_words():
                        if isinstance(stop_reason, str) and stop_reason in beam_output.text:
                            stop_pos = beam_output.text.find(stop_reason)
                            if not self.sampling_params.include_stop_str_in_output:
                                beam_output.text = beam_output.text[:stop_pos]
                            else:
                                beam_output.text = beam_output.text[:stop_pos + len(stop_reason)]

                            beam_output.finish_reason = 'stop'
                            beam_output.stop_reason = stop_reason
                            self.abort()
                            self._done = True
                            break


class GenerationResult(GenerationResultBase):
    '''
    The result of a generation request. It can be used to wait for the completion of the request.

    Args:
        generation_request (GenerationRequest): The generation request object.
        background_error_handler (Callable, optional): The error handler to process the errors from the background
            threads/processes. Defaults to None.
        executor (GenerationExecutor, optional): The executor that created this result. Defaults to None.
    '''

    def __init__(
        self,
        generation_request: "GenerationRequest",
        background_error_handler: Optional[Callable] = None,
        executor: Optional["GenerationExecutor"] = None,
        disaggregated_params: Optional[DisaggregatedParams] = None,
        logprob_params: Any = None,
    ) -> None:
        super().__init__(generation_request.id, generation_request.sampling_params, background_error_handler,
                         postproc_params=generation_request.postproc_params)
        self._generation_request = generation_request
        self._streaming = generation_request.streaming
        self.disaggregated_params = disaggregated_params
        self._logprob_params = logprob_params

        # for aborting the request
        self._executor: Optional[weakref.ReferenceType["GenerationExecutor"]] = (
            weakref.ref(executor) if executor else None)
        self._aborted = False

    @property
    def request_id(self) -> int:
        return self._generation_request.id

    @property
    def prompt_token_ids(self) -> List[int]:
        return self._generation_request.prompt_token_ids

    def abort(self) -> None:
        """Abort the generation request.
        """
        assert self._executor is not None, "The executor is not set for this result."
        self._executor().abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        """Return whether the generation request is aborted."""
        return self._aborted

    @property
    def finished(self) -> bool:
        return self._done

    def clear_logprob_params(self) -> None:
        if hasattr(self, "_logprob_params"):
            del self._logprob_params

    def _result_step(self, timeout: Optional[float] = None):
        response = self.queue.get(timeout=timeout)
        self._handle_response(response)

    async def _aresult_step(self):
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, so async operations are not available.")
        response = await self.aqueue.get()
        self._handle_response(response)

    def result(self, timeout: Optional[float] = None) -> "GenerationResult":
        """Wait for the completion of the request, and return the result."""
        while not self._done:
            self._result_step(timeout)
        return self

    async def aresult(self) -> "GenerationResult":
        """Wait for the completion of the request, and return the result."""
        while not self._done:
            await self._aresult_step()
        return self

    def __await__(self):
        return self.aresult().__await__()

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration

        self._result_step()
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration

        await self._aresult_step()
        return self

    def _exception(self, timeout: Optional[float] = None):
        try:
            self.result(timeout)
        except RuntimeError as e:
            return e

    def _repr_fields(self):
        return ['request_id', 'prompt_token_ids', 'outputs', 'finished', "context_logits", "mm_embedding_handle"]

    def __repr__(self) -> str:
        repr = []
        for field_name in self._repr_fields():
            value = getattr(self, field_name)
            if isinstance(value, str):
                repr.append(f"{field_name}={value!r}")
            else:
                repr.append(f"{field_name}={value}")
        repr = ", ".join(repr)
        repr = f"{self.__class__.__name__}({repr})"
        return repr

    def __hash__(self):
        return hash(self.request_id)


class IterationResult:
    """
    Runtime results for all available iterations.
    """

    def __init__(self):
        self._done = False
        self._timeout = 2

        self.queue, self.aqueue = _make_queues()

    def set_timeout(self, timeout: float):
        self._timeout = timeout

    def mark_undone(self):
        # should be called when new prompts are submitted
        self._done = False

    def get_results(self) -> List[dict]:
        """
        Return all runtime results in the queue.
        """
        results = []
        while not self._done:
            try:
                data = self.queue.get(timeout=self._timeout)
                results.append(json.loads(data))
            except Empty:
                self._done = True
        return results

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._done:
            raise StopAsyncIteration

        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, so async operations are not available.")

        try:
            data = await self.aqueue.get(timeout=self._timeout)
            return json.loads(data)
        except asyncio.TimeoutError:
            self._done = True
            raise StopAsyncIteration
