"""TEST DOUBLE of ``tensorrt_llm/disaggregated_params.py`` (real file @ b828daced8dc).

Same dataclass, fields, defaults and ``__post_init__`` validation; ``get_context_phase_params`` and
``get_request_type`` return plain-Python stand-ins for the C++ binding objects.
"""

import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

_REQUEST_TYPES = ("context_only", "generation_only", "context_and_generation")


@dataclass(slots=True, kw_only=True)
class DisaggregatedParams:
    """Disaggregated serving parameters.

    Args:
        request_type (str): The type of request ("context_only" | "generation_only" | "context_and_generation")
        first_gen_tokens (List[int]): The first tokens of the generation request
        ctx_request_id (int): The context request id
        opaque_state(bytes): Any additional state needing to be exchanged between context and gen instances
        draft_tokens (List[int]): The draft tokens of the generation request

        multimodal_embedding_handles (List[Dict[str, Any]]): The resulting multimodal embedding handles from ViT.
        multimodal_hashes (List[List[int]]): The multimodal hashes of each multimodal item in the request.
    """

    request_type: Optional[str] = None
    # P-D Disaggregated Params
    first_gen_tokens: Optional[List[int]] = None
    ctx_request_id: Optional[int] = None
    opaque_state: Optional[bytes] = None
    draft_tokens: Optional[List[int]] = None

    # E-P Disaggregated Params
    multimodal_embedding_handles: Optional[List[Dict[str, Any]]] = None
    multimodal_hashes: Optional[List[List[int]]] = None

    def get_context_phase_params(self) -> Dict[str, Any]:
        # Real: tllme.ContextPhaseParams(first_gen_tokens, ctx_request_id, opaque_state, draft_tokens).
        return {
            "first_gen_tokens": self.first_gen_tokens,
            "req_id": self.ctx_request_id,
            "opaque_state": self.opaque_state,
            "draft_tokens": self.draft_tokens,
        }

    def get_request_type(self) -> str:
        # Real: a tllme.RequestType enum value; the double returns its name.
        if self.request_type == "context_only":
            return "REQUEST_TYPE_CONTEXT_ONLY"
        elif self.request_type == "generation_only":
            return "REQUEST_TYPE_GENERATION_ONLY"
        elif self.request_type == "context_and_generation":
            return "REQUEST_TYPE_CONTEXT_AND_GENERATION"
        else:
            raise ValueError(
                f"Unknown request type: {self.request_type}. Must be context_only, generation_only or "
                "context_and_generation"
            )

    def __post_init__(self):
        if self.request_type is not None:
            self.request_type = self.request_type.lower()
            if self.request_type not in _REQUEST_TYPES:
                raise ValueError(
                    f"Unknown request type: {self.request_type}. Must be context_only, generation_only or "
                    "context_and_generation"
                )
        if self.multimodal_embedding_handles is not None:
            if self.multimodal_hashes is not None:
                assert len(self.multimodal_embedding_handles) == len(self.multimodal_hashes), (
                    "multimodal_embedding_handles and multimodal_hashes must have the same length"
                )
                for mm_hash in self.multimodal_hashes:
                    assert isinstance(mm_hash, list), "mm_hash must be a list"
                    assert len(mm_hash) == 8, "mm_hash must be a list of 8 integers"
                    assert all(isinstance(x, int) for x in mm_hash), "mm_hash must contain integers"
            else:
                assert len(self.multimodal_embedding_handles) > 0, "multimodal_embedding_handles must be provided"
                vals = [random.randint(-(2**31), 2**31 - 1) for _ in range(8)]
                self.multimodal_hashes = [vals] * len(self.multimodal_embedding_handles)
