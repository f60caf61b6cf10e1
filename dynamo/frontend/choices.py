"""The choices of one OpenAI request: one worker request per choice, their streams merged.

`n` choices (or `best_of` candidates) run as separate worker requests, each with its own request
id and, when the client set a seed, seed + index (vLLM's rule for parallel sampling, so that the
same seed gives the same choices as vLLM's server). One choice, the common case, streams straight
from its worker without a merge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from dynamo.llm.protocol import GenerateOutput, GenerateRequest

from .backend import ServingBackend, WorkerFailed
from .chat_parsing import ChatParsing
from .detokenize import make_detokenizer
from .postprocess import OutputProcessor
from .responses import LogprobFormatter
from .schemas import ParsedRequest
from .tokenizer import ModelTokenizer

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Choice:
    index: int
    request: GenerateRequest
    processor: OutputProcessor
    logprobs: LogprobFormatter | None  # None: the client did not ask for logprobs
    parsing: ChatParsing | None = None  # reasoning / tool calls; None on the plain path
    echo: str = ""  # completions with echo: the prompt's text, sent before the choice's first text
    logprob_sum: float = 0.0  # of the kept tokens: ranks best_of candidates


def build_choices(parsed: ParsedRequest, base: GenerateRequest, tokenizer: ModelTokenizer,
                  parsing: Callable[[], ChatParsing] | None) -> list[Choice]:
    """One Choice per worker request: n, or best_of candidates (ranked at the end by their
    logprobs, which are asked of the worker even when the client did not ask for them)."""
    count = max(parsed.n, parsed.best_of)
    if count > parsed.n and base.output.logprobs is None:
        base.output.logprobs = 0
    echo = ""
    if parsed.echo:
        echo = parsed.prompt_text if parsed.prompt_text is not None else tokenizer.decode(base.token_ids)
    assert base.stop.max_tokens is not None
    choices = []
    for i, request in enumerate(choice_requests(base, count)):
        processor = OutputProcessor(make_detokenizer(tokenizer, parsed.skip_special_tokens), parsed.stop,
                                    base.stop.max_tokens)
        logprobs = (LogprobFormatter(tokenizer, parsed.kind == "chat", parsed.logprobs)
                    if parsed.logprobs is not None else None)
        choices.append(Choice(i, request, processor, logprobs, parsing() if parsing else None, echo))
    return choices


def choice_requests(base: GenerateRequest, count: int) -> list[GenerateRequest]:
    """`count` worker requests for one client request (the first is `base` itself when alone)."""
    if count == 1:
        return [base]
    out = []
    for i in range(count):
        sampling = base.sampling
        if sampling.seed is not None:
            sampling = dataclasses.replace(sampling, seed=(sampling.seed + i + 2**63) % 2**64 - 2**63)
        out.append(dataclasses.replace(base, request_id=f"{base.request_id}-{i}", sampling=sampling,
                                       output=dataclasses.replace(base.output)))
    return out


async def aclose_quietly(iterator: AsyncIterator[GenerateOutput] | None) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception as exc:  # closing must not mask the request's own outcome
            log.warning("closing the backend stream raised %s: %s", type(exc).__name__, exc)


async def merged_outputs(backend: ServingBackend, choices: list[Choice]
                         ) -> AsyncIterator[tuple[Choice, GenerateOutput]]:
    """Every choice's outputs as they come. A choice's stream stops after its finishing output;
    one choice failing fails the request (the others are cancelled on the workers)."""
    queue: asyncio.Queue[tuple[Choice, GenerateOutput | None, BaseException | None]] = asyncio.Queue()

    async def pump(choice: Choice) -> None:
        stream: AsyncIterator[GenerateOutput] | None = None
        try:
            stream = backend.generate(choice.request)
            async for output in stream:
                queue.put_nowait((choice, output, None))
                if output.finish_reason is not None:
                    return
            queue.put_nowait((choice, None, WorkerFailed("the worker's stream ended without a finish reason")))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            queue.put_nowait((choice, None, exc))
        finally:
            await aclose_quietly(stream)

    tasks = [asyncio.ensure_future(pump(c)) for c in choices]
    try:
        unfinished = len(choices)
        while unfinished:
            choice, output, error = await queue.get()
            if error is not None:
                raise error
            assert output is not None
            if output.finish_reason is not None:
                unfinished -= 1
            yield choice, output
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def usage_totals(choices: list[Choice]) -> tuple[int, int, int]:
    """(prompt, completion, cached) tokens: the prompt counts once, completions add up."""
    return (len(choices[0].request.token_ids), sum(c.processor.completion_tokens for c in choices),
            max(c.processor.cached_tokens for c in choices))


def best_choices(choices: list[Choice], n: int) -> list[Choice]:
    """The n candidates the model found most likely (highest sum of token logprobs), renumbered."""
    if len(choices) == n:
        return choices
    ranked = sorted(choices, key=lambda c: c.logprob_sum, reverse=True)[:n]
    for i, choice in enumerate(ranked):
        choice.index = i
    return ranked


def chat_choice(choice: Choice, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    finish = choice.processor.finish_reason or "stop"
    if choice.parsing is None:
        message: dict[str, Any] = {"role": "assistant", "content": text}
    else:
        message = {"role": "assistant", **choice.parsing.message(text)}
        finish = choice.parsing.finish_reason(finish)
    return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def completion_choice(choice: Choice, text: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": choice.index, "text": choice.echo + text, "logprobs": logprobs,
            "finish_reason": choice.processor.finish_reason or "stop"}
