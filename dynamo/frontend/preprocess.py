"""ParsedRequest + model card + tokenizer -> GenerateRequest (tokenize, check against the context)."""

from __future__ import annotations

from collections.abc import Callable

from dynamo.llm.model_card import ModelCard
from dynamo.llm.protocol import GenerateRequest, OutputOptions, StopConditions

from .errors import invalid
from .schemas import ParsedRequest
from .tokenizer import ModelTokenizer, chat_chars

# Normalizers may fold a few characters into one before tokenizing (NFKC, combining marks).
_NORMALIZATION_SLACK = 2


def refuse_if_cannot_fit(chars: int, tokenizer: ModelTokenizer, context: int, param: str) -> None:
    """Refuse, before tokenizing, a prompt too long for the context whatever its text: no token
    covers more characters than the vocabulary's longest, so `chars` characters make at least
    chars / max_token_chars tokens. A megabytes-long prompt then costs a length check, not seconds
    of tokenizing."""
    fewest = chars // (tokenizer.max_token_chars * _NORMALIZATION_SLACK)
    if fewest >= context:
        raise invalid(f"the {param} has {chars} characters, at least {fewest} tokens: past this model's "
                      f"context of {context} tokens", param)


async def prompt_token_ids(req: ParsedRequest, tokenizer: ModelTokenizer, context: int,
                          then: Callable[[list[int]], None] | None = None) -> list[int]:
    """`then`: run on a long prompt's ids in the thread that tokenized it (ModelTokenizer)."""
    if req.kind == "chat":
        assert req.messages is not None
        refuse_if_cannot_fit(chat_chars(req.messages), tokenizer, context, "messages")
        tools = req.tools.tools if req.tools is not None else None
        ids = await tokenizer.prompt_ids_for_chat(req.messages, tools, req.chat_template_kwargs, then)
        param = "messages"
    elif req.prompt_ids is not None:
        ids = req.prompt_ids
        if max(ids) >= tokenizer.vocab_size:
            bad = next(t for t in ids if t >= tokenizer.vocab_size)
            raise invalid(f"token id {bad} in 'prompt' is outside the vocabulary (valid ids are "
                          f"0..{tokenizer.vocab_size - 1})", "prompt")
        return ids
    else:
        assert req.prompt_text is not None
        refuse_if_cannot_fit(len(req.prompt_text), tokenizer, context, "prompt")
        ids = await tokenizer.prompt_ids_for_text(req.prompt_text, then)
        param = "prompt"
    if not ids:
        raise invalid(f"the {param} tokenizes to no tokens at all", param)
    return ids


def build_generate_request(req: ParsedRequest, card: ModelCard, prompt_ids: list[int],
                           request_id: str) -> GenerateRequest:
    """Apply the context-length rules and fill in max_tokens."""
    context = card.context_length
    param = "messages" if req.kind == "chat" else "prompt"
    n = len(prompt_ids)
    if n >= context:
        raise invalid(f"prompt has {n} tokens; this model's context is {context} (leave room for "
                      f"at least one generated token)", param)
    room = context - n
    max_tokens = req.max_tokens if req.max_tokens is not None else room
    if max_tokens > room:
        name = req.max_tokens_param
        raise invalid(f"{name} is {max_tokens} but the prompt has {n} tokens and this model's "
                      f"context is {context}: at most {room} tokens can be generated", name)
    bias = req.sampling.logit_bias
    if bias and card.vocab_size and max(bias) >= card.vocab_size:
        raise invalid(f"'logit_bias' token id {max(bias)} is outside the vocabulary (valid ids are "
                      f"0..{card.vocab_size - 1})", "logit_bias")
    if req.min_tokens is not None and req.min_tokens > max_tokens:
        raise invalid(f"'min_tokens' ({req.min_tokens}) exceeds the {max_tokens} tokens that can be "
                      f"generated", "min_tokens")
    return GenerateRequest(
        request_id=request_id,
        token_ids=prompt_ids,
        model=card.served_model_name,
        sampling=req.sampling,
        stop=StopConditions(max_tokens=max_tokens, min_tokens=req.min_tokens,
                            stop_token_ids=req.stop_token_ids, ignore_eos=req.ignore_eos),
        output=OutputOptions(logprobs=req.logprobs, skip_special_tokens=req.skip_special_tokens),
        structured_output=req.structured_output,
    )
