"""The one definition of a generate request and its streamed outputs.

Every layer above the rpc edge speaks these dataclasses; they are converted to protobuf only in
`dynamo.llm.codec` and to engine types only inside an engine adapter.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass, field
from typing import Any


class InvalidRequest(ValueError):
    """A request the worker will not run; the message says what is wrong (-> INVALID_ARGUMENT / HTTP 400)."""


class FinishReason(str, enum.Enum):
    EOS = "eos"  # the model produced its end-of-sequence token
    LENGTH = "length"  # max_tokens reached (or the context is full)
    STOP = "stop"  # a stop token id (or, at the frontend, a stop string) matched
    CANCELLED = "cancelled"  # the client went away or asked to stop
    ERROR = "error"  # the engine failed this request


@dataclass
class SamplingOptions:
    """None means "the engine's default" (greedy when temperature is None or 0)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit, each in [-100, 100]

    def validate(self) -> None:
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidRequest(f"sampling.{name} must be a finite number, got {value!r}")
        if self.temperature is not None and self.temperature < 0:
            raise InvalidRequest(f"sampling.temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InvalidRequest(f"sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < -1:
            raise InvalidRequest(f"sampling.top_k must be -1 (off), 0 (off) or positive, got {self.top_k}")
        if self.min_p is not None and not 0 <= self.min_p <= 1:
            raise InvalidRequest(f"sampling.min_p must be in [0, 1], got {self.min_p}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None and not -2 <= value <= 2:
                raise InvalidRequest(f"sampling.{name} must be in [-2, 2], got {value}")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            raise InvalidRequest(f"sampling.repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.seed is not None and not -(2**63) <= self.seed < 2**63:
            raise InvalidRequest(f"sampling.seed must fit in 64 bits, got {self.seed}")
        if self.logit_bias:
            for token_id, bias in self.logit_bias.items():
                if token_id < 0 or not math.isfinite(bias) or not -100 <= bias <= 100:
                    raise InvalidRequest(f"sampling.logit_bias[{token_id}] = {bias}: token ids must be "
                                         "non-negative and biases in [-100, 100]")

    @property
    def is_greedy(self) -> bool:
        return not self.temperature


@dataclass
class StopConditions:
    max_tokens: int | None = None  # None: up to the context length
    min_tokens: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest(f"stop.max_tokens must be >= 1, got {self.max_tokens}")
        if self.min_tokens is not None and self.min_tokens < 0:
            raise InvalidRequest(f"stop.min_tokens must be >= 0, got {self.min_tokens}")
        if (self.min_tokens is not None and self.max_tokens is not None
                and self.min_tokens > self.max_tokens):
            raise InvalidRequest(
                f"stop.min_tokens ({self.min_tokens}) must not exceed stop.max_tokens ({self.max_tokens})")
        if any(t < 0 for t in self.stop_token_ids):
            raise InvalidRequest("stop.stop_token_ids must be non-negative token ids")


@dataclass
class OutputOptions:
    logprobs: int | None = None  # None: none; 0: the chosen token's; N: plus the top N alternatives
    skip_special_tokens: bool = True  # only for workers that also return text

    def validate(self) -> None:
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequest(f"output.logprobs must be in [0, 20], got {self.logprobs}")


class StructuredKind(str, enum.Enum):
    """What a structured-output constraint is; `StructuredOutput.value` is its text."""

    JSON_SCHEMA = "json_schema"  # value: a JSON schema, as JSON text
    JSON_OBJECT = "json_object"  # value: "" (any JSON object)
    REGEX = "regex"  # value: a regular expression the whole output matches
    CHOICE = "choice"  # value: a JSON array of strings; the output is exactly one of them
    GRAMMAR = "grammar"  # value: an EBNF / GBNF grammar (the engine's grammar backend reads it)


@dataclass
class StructuredOutput:
    """A constraint the engine enforces while decoding (vLLM structured outputs, SGLang's grammar
    backend, TensorRT-LLM guided decoding). An engine that cannot honour a kind refuses the request
    with InvalidRequest; it never ignores it."""

    kind: StructuredKind
    value: str = ""

    def validate(self) -> None:
        if self.kind in (StructuredKind.JSON_SCHEMA, StructuredKind.CHOICE):
            try:
                parsed = json.loads(self.value)
            except ValueError as exc:
                raise InvalidRequest(f"structured_output.value must be JSON for {self.kind.value}: {exc}") from None
            if self.kind is StructuredKind.JSON_SCHEMA and not isinstance(parsed, (dict, bool)):
                raise InvalidRequest("structured_output json_schema must be a JSON object")
            if self.kind is StructuredKind.CHOICE and not (
                    isinstance(parsed, list) and parsed and all(isinstance(c, str) for c in parsed)):
                raise InvalidRequest("structured_output choice must be a non-empty JSON array of strings")
        elif self.kind in (StructuredKind.REGEX, StructuredKind.GRAMMAR) and not self.value:
            raise InvalidRequest(f"structured_output {self.kind.value} must not be empty")


@dataclass
class DisaggregatedParams:
    """What a prefill worker hands to a decode worker; opaque outside the engine adapter.

    `engine` names the adapter that made it (e.g. "vllm", "mocker") so that a decode worker of another
    kind refuses it with a clear error; `payload` is that adapter's own JSON object (for vLLM its
    `kv_transfer_params`); `opaque` its binary state, carried byte for byte (TensorRT-LLM's
    `opaque_state`; never pickled).
    """

    engine: str
    payload: dict[str, Any]
    prefill_instance_id: str = ""
    first_token_ids: list[int] = field(default_factory=list)  # tokens the prefill already produced
    opaque: bytes = b""


@dataclass
class Bootstrap:
    """Bootstrap-mode disaggregation: where a prefill worker's KV for this request can be met
    (host:port, its model card's bootstrap endpoint) and under which room. Prefill and decode
    requests carry the same one and run at the same time (dynamo.llm.disagg)."""

    host: str
    port: int
    room: int

    def validate(self) -> None:
        if not self.host or not 0 < self.port < 65536:
            raise InvalidRequest(f"bootstrap needs the prefill worker's host and port, got {self.host}:{self.port}")
        if not 0 <= self.room < 2**63:
            raise InvalidRequest(f"bootstrap.room must be in [0, 2^63), got {self.room}")


@dataclass
class GenerateRequest:
    request_id: str
    token_ids: list[int]
    model: str = ""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    stop: StopConditions = field(default_factory=StopConditions)
    output: OutputOptions = field(default_factory=OutputOptions)
    disaggregated_params: DisaggregatedParams | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    bootstrap: Bootstrap | None = None  # bootstrap-mode disaggregation (the room to meet in)
    structured_output: StructuredOutput | None = None  # a constraint the engine enforces

    def validate_common(self, *, vocab_size: int, context_length: int, served_model: str | None = None
                        ) -> None:
        """Checks every worker makes before an engine sees the request."""
        if not self.request_id:
            raise InvalidRequest("request_id must not be empty")
        if served_model and self.model and self.model != served_model:
            raise InvalidRequest(f"unknown model {self.model!r}; this worker serves {served_model!r}")
        if not self.token_ids:
            raise InvalidRequest("prompt is empty: token_ids must hold at least one token id")
        bad = next((t for t in self.token_ids if t < 0 or t >= vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"token id {bad} is outside the vocabulary (valid ids are 0..{vocab_size - 1})")
        if len(self.token_ids) >= context_length:
            raise InvalidRequest(
                f"prompt has {len(self.token_ids)} tokens; this model's context is {context_length}")
        self.sampling.validate()
        self.stop.validate()
        self.output.validate()
        if self.structured_output is not None:
            self.structured_output.validate()
        if self.sampling.logit_bias and max(self.sampling.logit_bias) >= vocab_size:
            raise InvalidRequest(f"logit_bias token id {max(self.sampling.logit_bias)} is outside the "
                                 f"vocabulary (valid ids are 0..{vocab_size - 1})")
        if self.bootstrap is not None:
            self.bootstrap.validate()
            if self.disaggregated_params is not None:
                raise InvalidRequest("a request carries either a prefill's result (disaggregated_params) or a "
                                     "bootstrap room to meet it in, not both")
        if self.stop.max_tokens is not None and len(self.token_ids) + self.stop.max_tokens > context_length:
            raise InvalidRequest(
                f"prompt ({len(self.token_ids)} tokens) + max_tokens ({self.stop.max_tokens}) exceeds "
                f"this model's context of {context_length} tokens")


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, logprob), best first


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (or a remote prefill)


@dataclass
class GenerateOutput:
    """One streamed message: the tokens that are new since the previous message (possibly several)."""

    token_ids: list[int] = field(default_factory=list)
    text: str | None = None
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None  # set on the final message
    disaggregated_params: DisaggregatedParams | None = None  # set by a prefill worker
    error: str | None = None  # with finish_reason ERROR

    def open_run(self) -> bool:
        """Whether a later output may be appended to this one: it is a plain run of tokens, nothing
        ends or annotates it."""
        return (self.finish_reason is None and self.disaggregated_params is None and self.error is None
                and self.text is None and self.usage is None)

    def takes(self, then: GenerateOutput) -> bool:
        """Whether `then`, the request's next output, can be appended to this one as one output
        (this one an open run; `then` without text, with logprobs exactly when this one has them):
        the rule for joining outputs that queued up, on both sides of GenerateStream."""
        return self.open_run() and then.text is None and (self.logprobs is None) == (then.logprobs is None)


# --- what engines report about themselves ---------------------------------------------------

@dataclass
class EngineInfo:
    """Facts a started engine reports; they go into the model card."""

    vocab_size: int
    context_length: int
    kv_block_size: int
    total_kv_blocks: int
    eos_token_ids: list[int] = field(default_factory=list)
    bootstrap_port: int | None = None  # a bootstrap-mode prefill engine's rendezvous port (dynamo.llm.disagg)


@dataclass
class EngineStats:
    running_requests: int = 0
    waiting_requests: int = 0
    kv_usage: float = 0.0  # fraction of KV blocks in use, 0..1
    kv_total_blocks: int = 0
    kv_active_blocks: int = 0


class KvEventKind(str, enum.Enum):
    STORED = "stored"
    REMOVED = "removed"
    CLEARED = "cleared"


@dataclass
class KvEvent:
    kind: KvEventKind
    block_hashes: list[int] = field(default_factory=list)
    parent_hash: int | None = None  # for STORED: the block before the first stored one
    token_ids: list[int] = field(default_factory=list)  # for STORED, when the engine reports them
    block_size: int = 0
    event_id: int = 0  # set by the relay: increases by one per event of one worker
