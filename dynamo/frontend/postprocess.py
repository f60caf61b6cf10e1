"""Turn a request's stream of GenerateOutput into text deltas: detokenize, stop strings, limits."""

from __future__ import annotations

from dataclasses import dataclass

from dynamo.llm.protocol import FinishReason, GenerateOutput, TokenLogprob

from .backend import WorkerFailed
from .detokenize import Detokenizer
from .stop import StopStringMatcher

_OPENAI_FINISH = {FinishReason.EOS: "stop", FinishReason.STOP: "stop", FinishReason.LENGTH: "length"}


@dataclass(slots=True)
class Delta:
    text: str
    num_tokens: int  # tokens of this output that were kept
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None  # OpenAI's: "stop" / "length"; None while the stream goes on


class OutputProcessor:
    """Per request. `process` is the hot path: keep it to a few calls per output."""

    __slots__ = ("_detok", "_stop", "_max_tokens", "completion_tokens", "cached_tokens",
                 "finish_reason")

    def __init__(self, detokenizer: Detokenizer, stop: list[str], max_tokens: int) -> None:
        self._detok = detokenizer
        self._stop = StopStringMatcher(stop) if stop else None
        self._max_tokens = max_tokens
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.finish_reason: str | None = None

    def process(self, output: GenerateOutput) -> Delta:
        """One output in, one delta out. A delta with a finish_reason is the last one."""
        if output.usage is not None:
            self.cached_tokens = output.usage.cached_tokens
        ids = output.token_ids
        finish = output.finish_reason
        if finish is not None and finish not in _OPENAI_FINISH:
            detail = output.error or f"the worker ended the request ({finish.value})"
            raise WorkerFailed(f"generation failed: {detail}")
        room = self._max_tokens - self.completion_tokens
        if len(ids) >= room:  # the worker must stop here; never send more than max_tokens
            if len(ids) > room or finish is None:
                ids = ids[:room]
                finish = FinishReason.LENGTH
        logprobs = output.logprobs
        if self._stop is None:
            text = self._detok.step_many(ids) if ids else ""
            kept = len(ids)
        else:
            text, kept = self._with_stop_strings(ids)
            if self._stop.matched is not None:
                finish = FinishReason.STOP
        if logprobs is not None and len(logprobs) > kept:
            logprobs = logprobs[:kept]
        self.completion_tokens += kept
        if finish is None:
            return Delta(text, kept, logprobs, None)
        # Last output: release what detokenizer and stop matcher still hold.
        if self._stop is None:
            text += self._detok.flush()
        elif self._stop.matched is None:
            text += self._stop.feed(self._detok.flush())
            if self._stop.matched is not None:
                finish = FinishReason.STOP
            else:
                text += self._stop.flush()
        self.finish_reason = _OPENAI_FINISH[finish]
        return Delta(text, kept, logprobs, self.finish_reason)

    def _with_stop_strings(self, ids: list[int]) -> tuple[str, int]:
        stop, detok = self._stop, self._detok
        assert stop is not None  # only called when the request has stop strings
        parts = []
        for n, token_id in enumerate(ids, 1):
            piece = detok.step(token_id)
            if piece:
                parts.append(stop.feed(piece))
                if stop.matched is not None:
                    return "".join(parts), n
        return "".join(parts), len(ids)
