"""TEST DOUBLE of ``tensorrt_llm/sampling_params.py`` (the ~v1.1/1.2 version whose ``_validate`` checks
top_p/top_k/temperature and whose ``_setup`` takes ``(tokenizer, hf_model_config, generation_config)``).

Same dataclass (``slots=True, kw_only=True``), same field list, order and defaults, same ``__post_init__`` /
``_validate`` errors, same ``_setup`` / stop-word helpers. The ``_get_sampling_config`` /
``_get_output_config`` / ``_get_guided_decoding_params`` conversions to C++ bindings are omitted.
"""

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, List, NamedTuple, Optional, Tuple, Union


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """Guided decoding parameters for text generation. Only one of the fields could be effective."""

    json: Optional[Union[str, Any, dict]] = None
    regex: Optional[str] = None
    grammar: Optional[str] = None
    json_object: bool = False
    structural_tag: Optional[str] = None

    def _validate(self):
        num_guides = 0
        for _field in fields(self):
            num_guides += bool(getattr(self, _field.name))
        if num_guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {num_guides}.")


class LogprobParams(NamedTuple):
    prompt_logprobs: Optional[int] = None
    logprobs: Optional[int] = None
    # Drop the logits once the logprobs are computed
    drop_context_logits: bool = False
    # Drop the geneation_logits once the logprobs are computed
    drop_generation_logits: bool = False


class LogitsProcessor(ABC):
    """Base class for logits processor (accepted by the double, never called: there are no logits)."""

    @abstractmethod
    def __call__(self, req_id: int, logits: Any, token_ids: List[List[int]], stream_ptr: Optional[int],
                 client_id: Optional[int]) -> None:
        pass


class BatchedLogitsProcessor(ABC):
    """Base class for batched logits processor (accepted by the double, never called)."""

    @abstractmethod
    def __call__(self, req_ids: List[int], logits: List[Any], token_ids: List[List[List[int]]], stream_ptr: int,
                 client_ids: List[Optional[int]]) -> None:
        pass


@dataclass(slots=True, kw_only=True)
class AdditionalModelOutput:
    """An additional output to gather from the model."""

    name: str
    gather_context: bool


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """Sampling parameters for text generation (mirror of the real class; see the module docstring).

    Fields the double's engine acts on: max_tokens, min_tokens, end_id, pad_id, stop, stop_token_ids,
    include_stop_str_in_output, ignore_eos, temperature/top_k/top_p (greedy or not), seed, logprobs,
    detokenize, skip_special_tokens, spaces_between_special_tokens, return_perf_metrics,
    add_special_tokens, truncate_prompt_tokens. All others are accepted and validated only.
    """

    end_id: Optional[int] = None
    pad_id: Optional[int] = None
    max_tokens: int = 32
    bad: Optional[Union[str, List[str]]] = None
    bad_token_ids: Optional[List[int]] = None
    _bad_word_ids: Optional[List[List[int]]] = field(default=None, init=False, repr=False)
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    include_stop_str_in_output: bool = False
    _stop_word_ids: Optional[List[List[int]]] = field(default=None, init=False, repr=False)

    embedding_bias: Optional[Any] = None
    logits_processor: Optional[Union[LogitsProcessor, List[LogitsProcessor]]] = None
    apply_batched_logits_processor: bool = False

    n: int = 1
    best_of: Optional[int] = None
    use_beam_search: bool = False

    # Keep the below fields in sync with tllme.SamplingConfig or maintin the mapping table.
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    top_p_min: Optional[float] = None
    top_p_reset_ids: Optional[int] = None
    top_p_decay: Optional[float] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    min_tokens: Optional[int] = None
    beam_search_diversity_rate: Optional[float] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    length_penalty: Optional[float] = None
    early_stopping: Optional[int] = None
    no_repeat_ngram_size: Optional[int] = None
    min_p: Optional[float] = None
    beam_width_array: Optional[List[int]] = None

    # Keep the below fields in sync with tllme.OutputConfig
    logprobs: Optional[int] = None
    prompt_logprobs: Optional[int] = None
    return_context_logits: bool = False
    return_generation_logits: bool = False
    exclude_input_from_output: bool = True
    return_encoder_output: bool = False
    return_perf_metrics: bool = False
    additional_model_outputs: Optional[List[str]] = None

    # Used in logprobs calculation in TRT flow to drop logits early if user did not explicitly request them.
    _context_logits_auto_enabled: bool = False
    _generation_logits_auto_enabled: bool = False

    # TODO: deprecate this after trtllm-serve migrate to use TopK logprobs
    _return_log_probs: bool = False

    # Lookahead decoding config
    lookahead_config: Optional[Any] = None

    # Guided decoding params
    guided_decoding: Optional[GuidedDecodingParams] = None

    # Tokenizer-related configs
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    truncate_prompt_tokens: Optional[int] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    # Currently, _stream_interval is only used to pass llm.args.stream_interval to tokenizer.
    _stream_interval: Optional[int] = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.pad_id is None:
            self.pad_id = self.end_id

        self.best_of = self.best_of or self.n

        if self.embedding_bias is not None:
            try:  # real: clone a tensor, or build a float32 tensor; the double only needs torch if given one
                import torch

                if isinstance(self.embedding_bias, torch.Tensor):
                    self.embedding_bias = self.embedding_bias.detach().clone()
                else:
                    self.embedding_bias = torch.tensor(self.embedding_bias, dtype=torch.float32)
            except ImportError:
                self.embedding_bias = list(self.embedding_bias)

        self._validate()

    def _validate(self):
        """Verify the sampling parameters (same checks and messages as the real ``_validate``)."""
        if self.top_p is not None and (self.top_p < 0 or self.top_p > 1):
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")

        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")

        if (
            self.best_of is not None
            and self.best_of > 1
            and self._greedy_decoding
            and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING", None)
        ):
            raise ValueError(
                f"Greedy decoding in the LLM API does not allow multiple "
                f"returns. Please set to best_of=1, got best_of={self.best_of}. "
                f"Please set to best_of=1 or set an environment variable "
                f"TLLM_ALLOW_N_GREEDY_DECODING=1 to allow best_of > 1 "
                f"under the greedy decoding."
            )

        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(f"truncate_prompt_tokens must be >= 1, got {self.truncate_prompt_tokens}")

        if self.guided_decoding is not None:
            self.guided_decoding._validate()

        # correct types as users might pass in logprob=True for Top-1 logprobs
        self.logprobs = self.logprobs and int(self.logprobs)
        self.prompt_logprobs = self.prompt_logprobs and int(self.prompt_logprobs)

    # NB: Static, because downstream code only holds instances of
    #     bindings.SamplingConfig (not SamplingParams).
    @staticmethod
    def params_imply_greedy_decoding(*, temperature: Optional[float], top_p: Optional[float],
                                     top_k: Optional[int]):
        return (
            (temperature is None and top_p is None and top_k is None)
            or top_k == 1
            or top_p == 0.0
            or temperature == 0
        )

    @property
    def _greedy_decoding(self) -> bool:
        return not self.use_beam_search and self.params_imply_greedy_decoding(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )

    @property
    def _need_return_context_logits(self) -> bool:
        return self.return_context_logits and not self._context_logits_auto_enabled

    @property
    def _need_return_generation_logits(self) -> bool:
        return self.return_generation_logits and not self._generation_logits_auto_enabled

    def _setup(self, tokenizer, hf_model_config, generation_config, add_special_tokens: bool = False
               ) -> "SamplingParams":
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
            self.pad_id = tokenizer.pad_token_id
            # kimi_k2 model uses the eos_token_id in generation config
            if (
                hf_model_config is not None
                and getattr(hf_model_config, "model_type", None) == "kimi_k2"
                and generation_config is not None
                and isinstance(getattr(generation_config, "eos_token_id", None), int)
            ):
                self.end_id = generation_config.eos_token_id

            if self.pad_id is None:
                self.pad_id = self.end_id

        def _encode(tokenizer, text, add_special_tokens):
            try:
                return tokenizer.encode(text, add_special_tokens=add_special_tokens)
            except TypeError:
                # For tiktokenizer, the encode method does not have add_special_tokens argument
                return tokenizer.encode(text)

        if self.bad is not None:
            strs = [self.bad] if isinstance(self.bad, str) else self.bad
            self._bad_word_ids = [_encode(tokenizer, s, add_special_tokens) for s in strs]

        if self.stop is not None:
            strs = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [_encode(tokenizer, s, add_special_tokens) for s in strs]

        return self

    def _get_bad_words(self) -> List[List[int]]:
        words = []
        if self.bad_token_ids:
            words = [[i] for i in self.bad_token_ids]

        if self.bad is None:
            return words
        else:
            if self._bad_word_ids is None:
                raise RuntimeError(
                    f"{self.__class__.__name__}.bad ({self.bad}) is not processed by tokenizer, "
                    "please call the setup method."
                )
            return words + self._bad_word_ids

    def _get_stop_words(self) -> List[List[int]]:
        words = []
        if self.stop_token_ids:
            words = [[i] for i in self.stop_token_ids]

        if self.stop is None:
            return words
        else:
            if self._stop_word_ids is None:
                raise RuntimeError(
                    f"{self.__class__.__name__}.stop ({self.stop}) is not processed by tokenizer, "
                    "please call the setup method."
                )
            return words + self._stop_word_ids

    def _get_stop_reasons_and_words(self) -> List[Tuple[Union[str, int], List[List[int]]]]:
        stop_reasons: List[Union[str, int]] = []
        if self.stop_token_ids is not None:
            stop_reasons.extend(self.stop_token_ids)
        if self.stop is not None:
            if isinstance(self.stop, str):
                stop_reasons.append(self.stop)
            else:
                stop_reasons.extend(self.stop)
        stop_words = self._get_stop_words()
        return list(zip(stop_reasons, stop_words))
