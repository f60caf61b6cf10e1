"""TEST DOUBLE of the sizing part of ``BuildConfig`` in ``tensorrt_llm/builder.py``.

Only the fields the PyTorch-backend LlmArgs validators read (defaults as the real dataclass:
max_input_len=1024, max_seq_len=None, max_batch_size=2048, max_beam_width=1, max_num_tokens=8192);
engine-building fields (plugin_config, lora_config, ...) are not mirrored.
"""

import copy
from dataclasses import dataclass, fields
from typing import Optional


@dataclass
class BuildConfig:
    max_input_len: int = 1024
    max_seq_len: Optional[int] = None
    opt_batch_size: int = 8
    max_batch_size: int = 2048
    max_beam_width: int = 1
    max_num_tokens: int = 8192
    opt_num_tokens: Optional[int] = None
    max_prompt_embedding_table_size: int = 0
    gather_context_logits: bool = False
    gather_generation_logits: bool = False
    max_draft_len: int = 0

    @classmethod
    def from_dict(cls, config: dict, plugin_config=None) -> "BuildConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"BuildConfig of the tensorrt_llm test double does not mirror {unknown}")
        return cls(**copy.deepcopy(config))

    def to_dict(self) -> dict:
        return copy.deepcopy(self.__dict__)

    def update_from_dict(self, config: dict):
        for name, value in config.items():
            if not hasattr(self, name):
                raise AttributeError(f"{self.__class__} object has no attribute {name}")
            setattr(self, name, value)

    def update(self, **kwargs):
        self.update_from_dict(kwargs)
