"""TEST DOUBLE of ``tensorrt_llm/executor/request.py``: the request objects the executor receives.

LoRA and prompt-adapter requests are accepted and carried but not simulated.
"""

from dataclasses import dataclass
from typing import Any, List, Optional

from ..disaggregated_params import DisaggregatedParams
from ..sampling_params import SamplingParams


@dataclass(slots=True)
class LoRARequest:
    """Request for a LoRA adapter (accepted, not simulated by the double)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    lora_ckpt_source: str = "hf"


@dataclass(slots=True)
class PromptAdapterRequest:
    """Request for a prompt adapter (accepted, not simulated by the double)."""

    prompt_adapter_name: str
    prompt_adapter_id: int
    prompt_adapter_local_path: str = ""


class GenerationRequest:
    """One prompt submitted to the executor (real: ``GenerationRequest``; ``id`` is the client id)."""

    def __init__(
        self,
        prompt_token_ids: List[int],
        sampling_params: SamplingParams,
        postproc_params: Any = None,
        query_token_ids: Optional[List[int]] = None,
        lora_request: Optional[LoRARequest] = None,
        prompt_adapter_request: Optional[PromptAdapterRequest] = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Optional[DisaggregatedParams] = None,
        multimodal_params: Any = None,
        scheduling_params: Any = None,
        cache_salt_id: Optional[int] = None,
        arrival_time: Optional[float] = None,
    ):
        self.prompt_token_ids = prompt_token_ids
        self.query_token_ids = query_token_ids
        self.sampling_params = sampling_params
        self.postproc_params = postproc_params
        self.lora_request = lora_request
        self.prompt_adapter_request = prompt_adapter_request
        self.streaming = streaming
        self.kv_cache_retention_config = kv_cache_retention_config
        self.disaggregated_params = disaggregated_params
        self.multimodal_params = multimodal_params
        self.scheduling_params = scheduling_params
        self.cache_salt_id = cache_salt_id
        self.arrival_time = arrival_time
        self.id: Optional[int] = None

    def set_id(self, id: int) -> "GenerationRequest":
        assert self.id is None, f"Request ID is already set: {self.id}"
        self.id = id
        return self
