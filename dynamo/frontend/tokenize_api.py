"""`/tokenize` and `/detokenize`, shaped as vLLM's server serves them.

/tokenize takes a completions-style `prompt` or a chat-style `messages` (rendered through the
model's chat template, with `tools`, exactly as a chat request would be) and answers
{"count", "max_model_len", "tokens", "token_strs"}. /detokenize takes {"model", "tokens"} and
answers {"prompt": text}.
"""

from __future__ import annotations

from typing import Any

from dynamo.llm.model_card import ModelCard

from .errors import invalid
from .preprocess import refuse_if_cannot_fit
from .schema_fields import bool_field
from .schema_tools import parse_tools
from .schemas import messages_of
from .tokenizer import ModelTokenizer, chat_chars


async def tokenize(body: Any, card: ModelCard, tokenizer: ModelTokenizer) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    if ("prompt" in body) == ("messages" in body):
        raise invalid("give either 'prompt' (a string) or 'messages' (a chat), not both or neither")
    context = card.context_length
    if "prompt" in body:
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise invalid("'prompt' must be a string", "prompt")
        refuse_if_cannot_fit(len(prompt), tokenizer, context * 4, "prompt")
        ids = tokenizer.encode(prompt, add_special_tokens=bool_field(body, "add_special_tokens", default=True))
    else:
        messages = messages_of(body)
        refuse_if_cannot_fit(chat_chars(messages), tokenizer, context * 4, "messages")
        tools = parse_tools(body)
        kwargs = body.get("chat_template_kwargs")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise invalid("'chat_template_kwargs' must be an object", "chat_template_kwargs")
        ids = await tokenizer.prompt_ids_for_chat(messages, tools.tools if tools else None, kwargs)
    strs = ([tokenizer.token_text(t) for t in ids] if bool_field(body, "return_token_strs") else None)
    return {"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": strs}


def detokenize(body: Any, tokenizer: ModelTokenizer) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(type(t) is int for t in tokens):
        raise invalid("'tokens' must be an array of token ids", "tokens")
    bad = next((t for t in tokens if not 0 <= t < tokenizer.vocab_size), None)
    if bad is not None:
        raise invalid(f"token id {bad} is outside the vocabulary (valid ids are 0..{tokenizer.vocab_size - 1})",
                      "tokens")
    return {"prompt": tokenizer.decode(tokens, skip_special_tokens=False)}

