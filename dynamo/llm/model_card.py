"""What a worker publishes so that a frontend can serve its model."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from typing import Any


class Role(str, enum.Enum):
    AGGREGATED = "agg"  # prefill and decode in one engine
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass
class ModelSource:
    """What a backend knows about its model before the engine starts (from its flags)."""

    served_model_name: str
    model_path: str
    tokenizer: str | None = None  # None: model_path
    chat_template: str | None = None  # None: the tokenizer's own


@dataclass
class ModelCard:
    served_model_name: str
    model_path: str  # local directory or hub id of the weights
    tokenizer: str  # where the tokenizer loads from (usually = model_path)
    context_length: int
    kv_block_size: int
    total_kv_blocks: int
    role: Role = Role.AGGREGATED
    engine: str = ""  # "vllm", "sglang", "trtllm", "mocker"
    chat_template: str | None = None  # None: the tokenizer's own
    vocab_size: int = 0
    eos_token_ids: list[int] = field(default_factory=list)
    # A prefill worker in bootstrap-mode disaggregation (SGLang): "host:port" where decode workers
    # meet its KV. None: pull mode (the decode side pulls the KV with the prefill's result).
    bootstrap_endpoint: str | None = None
    # An aggregated worker that can also continue a prefill worker's handoff (LLMEngine.
    # accepts_remote_prefill): used as a decode worker while prefill workers of its model are live.
    accepts_remote_prefill: bool = False
    # How the frontend reads this model's output (dynamo.frontend.parsers): tool calls in its text
    # ("hermes", "llama3_json", "mistral", "pythonic") and its <think> part ("deepseek_r1", "qwen3").
    # The frontend's --tool-call-parser / --reasoning-parser override them.
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    # A decode worker started with --prefill-fallback-local: when a remote prefill fails before the
    # handoff, the orchestrator may hand it the whole request, which it then prefills itself.
    prefill_fallback_local: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def continues_prefill(self) -> bool:
        """Whether a prefill worker's result may be sent here (a decode worker, or an aggregated one
        that accepts it)."""
        return self.role is Role.DECODE or (self.role is Role.AGGREGATED and self.accepts_remote_prefill)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["role"] = self.role.value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Raises TypeError or ValueError for a card that is missing fields or has wrong types (it
        comes from discovery: anyone who can write there can write garbage)."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["role"] = Role(kwargs.get("role", Role.AGGREGATED.value))
        for name, value in kwargs.items():
            want = _FIELD_TYPES.get(name)
            if want is not None and (not isinstance(value, want) or (isinstance(value, bool) and bool not in want)):
                raise TypeError(f"model card field {name!r} is {type(value).__name__}, not "
                                f"{' or '.join(t.__name__ for t in want)}")
        if not kwargs.get("served_model_name", "x"):
            raise ValueError("model card field 'served_model_name' is empty")
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in kwargs.get("eos_token_ids", [])):
            raise TypeError("model card field 'eos_token_ids' is not a list of integers")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(json.loads(text))


_NONE = type(None)
# What each field of a card from discovery must be (bool is an int to isinstance: refused unless listed).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "served_model_name": (str,), "model_path": (str,), "tokenizer": (str,), "context_length": (int,),
    "kv_block_size": (int,), "total_kv_blocks": (int,), "engine": (str,), "chat_template": (str, _NONE),
    "vocab_size": (int,), "eos_token_ids": (list,), "bootstrap_endpoint": (str, _NONE),
    "accepts_remote_prefill": (bool,), "prefill_fallback_local": (bool,), "tool_call_parser": (str, _NONE), "reasoning_parser": (str, _NONE),
    "extra": (dict,),
}
