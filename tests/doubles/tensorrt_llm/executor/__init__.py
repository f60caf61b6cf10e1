"""TEST DOUBLE of ``tensorrt_llm/executor`` (results, requests, the executor base class, RequestError)."""

from .executor import CppExecutorError, GenerationExecutor
from .request import GenerationRequest, LoRARequest, PromptAdapterRequest
from .result import (
                     CompletionOutput,
                     DetokenizedGenerationResultBase,
                     GenerationResult,
                     GenerationResultBase,
                     IterationResult,
                     Logprob,
                     TokenLogprobs,
)
from .utils import ErrorResponse, RequestError

__all__ = [
    "GenerationExecutor",
    "CppExecutorError",
    "GenerationRequest",
    "LoRARequest",
    "PromptAdapterRequest",
    "GenerationResult",
    "GenerationResultBase",
    "DetokenizedGenerationResultBase",
    "IterationResult",
    "CompletionOutput",
    "Logprob",
    "TokenLogprobs",
    "ErrorResponse",
    "RequestError",
]
