"""TEST DOUBLE of ``tensorrt_llm/inputs`` (only the text/token prompt path; no multimodal inputs)."""

from .data import PromptInputs, TextPrompt, TokensPrompt, prompt_inputs
from .registry import DefaultInputProcessor, create_input_processor

__all__ = ["PromptInputs", "TextPrompt", "TokensPrompt", "prompt_inputs", "DefaultInputProcessor",
           "create_input_processor"]
