"""TEST DOUBLE of ``tensorrt_llm/inputs/data.py``: prompt input types and ``prompt_inputs`` (same code)."""

from typing import Any, Dict, List, NotRequired, TypedDict, Union


class TextPrompt(TypedDict):
    """Schema for a text prompt."""

    prompt: str
    multi_modal_data: NotRequired[Dict[str, Any]]
    mm_processor_kwargs: NotRequired[Dict[str, Any]]
    query: NotRequired[str]


class TokensPrompt(TypedDict):
    """Schema for a tokenized prompt."""

    prompt_token_ids: List[int]
    multi_modal_data: NotRequired[Dict[str, Any]]
    mm_processor_kwargs: NotRequired[Dict[str, Any]]
    query_token_ids: NotRequired[List[int]]


PromptInputs = Union[str, List[int], TextPrompt, TokensPrompt]


def prompt_inputs(inputs: PromptInputs, ) -> Union[TextPrompt, TokensPrompt]:
    if isinstance(inputs, str):
        prompt_inputs = TextPrompt(prompt=inputs)
    elif isinstance(inputs, list):
        assert isinstance(inputs[0], int)  # an empty list raises IndexError, as in the real code
        prompt_inputs = TokensPrompt(prompt_token_ids=inputs)
    elif isinstance(inputs, dict):
        assert inputs.get("prompt") is not None \
            or inputs.get("prompt_token_ids") is not None
        return inputs
    else:
        raise TypeError(
            f"Invalid type of inputs for llm.generate: {type(inputs)}")

    return prompt_inputs
