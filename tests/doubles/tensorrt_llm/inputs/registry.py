"""TEST DOUBLE of the part of ``tensorrt_llm/inputs/registry.py`` the LLM uses for text prompts."""

from typing import Any, Optional, Tuple


class DefaultInputProcessor:
    """Tokenizes ``inputs["prompt"]`` with the LLM's tokenizer (real: ``DefaultInputProcessor.__call__``)."""

    def __init__(self, model_path: Any, tokenizer: Any, trust_remote_code: bool = True) -> None:
        self.model_path = model_path
        self.tokenizer = tokenizer

    def __call__(self, inputs: dict, sampling_params: Any) -> Tuple[list, Optional[dict]]:
        kwargs = {}
        if sampling_params.truncate_prompt_tokens is not None:
            kwargs = dict(truncation=True, max_length=sampling_params.truncate_prompt_tokens)
        # With no tokenizer (skip_tokenizer_init=True) this raises AttributeError, as the real one does.
        token_ids = self.tokenizer.encode(inputs["prompt"], add_special_tokens=sampling_params.add_special_tokens,
                                          **kwargs)
        if "query" in inputs:
            query_token_ids = self.tokenizer.encode(inputs["query"],
                                                    add_special_tokens=sampling_params.add_special_tokens, **kwargs)
            return token_ids, {"query_token_ids": query_token_ids}
        return token_ids, None


def create_input_processor(model_path: Any, tokenizer: Any, checkpoint_format: Optional[str] = "HF"
                           ) -> DefaultInputProcessor:
    return DefaultInputProcessor(model_path, tokenizer)
