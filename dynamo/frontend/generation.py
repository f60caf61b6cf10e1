"""One generate request as an ASGI response: stream SSE or answer once, and watch the client.

The backend stream runs in one task and a watcher waits for the client's disconnect in another;
whichever ends first wins. A disconnect cancels the stream task, whose `finally` closes the backend
iterator, which cancels the request on the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .backend import ServingBackend, WorkerFailed
from .choices import (
    Choice,
    aclose_quietly,
    best_choices,
    chat_choice,
    completion_choice,
    merged_outputs,
    usage_totals,
)
from .errors import CLIENT_CLOSED, ApiError, to_api_error
from .metrics import FrontendMetrics
from .postprocess import Delta
from .responses import (
    DONE,
    ChunkWriter,
    LogprobFormatter,
    error_event,
    full_response,
    usage_bytes,
    usage_dict,
)

log = logging.getLogger(__name__)

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass
class GenerationJob:
    backend: ServingBackend
    metrics: FrontendMetrics
    choices: list[Choice]  # one worker request each; more than `n` when best_of ranks candidates
    n: int  # choices returned
    request_id: str  # the response's id (choices' worker requests add "-<index>" when n > 1)
    model: str
    chat: bool
    stream: bool
    include_usage: bool
    endpoint: str
    started: float  # perf_counter when the HTTP request arrived
    created: int  # unix time for the response's "created"
    release: Callable[[], None] | None = None  # called once when the response is done (FrontendApp's count)
    continuous_usage: bool = False  # usage on every chunk (vLLM's continuous_usage_stats)


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class GenerationResponse:
    def __init__(self, job: GenerationJob) -> None:
        self.job = job
        self.status = 200
        self._headers = [(b"x-request-id", job.request_id.encode())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        job = self.job
        model = job.model
        job.metrics.inflight.labels(model).inc()
        work = asyncio.ensure_future(self._stream(send) if job.stream else self._once(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                work.result()
            else:
                self.status = CLIENT_CLOSED
                log.info("[%s] client disconnected; cancelling the request", job.request_id)
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            if job.release is not None:
                job.release()
            m = job.metrics
            m.inflight.labels(model).dec()
            m.requests.labels(model, job.endpoint, str(self.status)).inc()
            m.output_tokens.labels(model).inc(sum(c.processor.completion_tokens for c in job.choices))
            m.duration.labels(model, job.endpoint).observe(time.perf_counter() - job.started)

    async def _send_error(self, send: Any, error: ApiError) -> None:
        self.status = error.status
        retry = [(b"retry-after", b"1")] if error.status in (429, 503) else []
        await send({"type": "http.response.start", "status": error.status,
                    "headers": _JSON_HEADERS + self._headers + retry})
        await send({"type": "http.response.body", "body": error.json_bytes()})

    def _failed(self, exc: Exception) -> ApiError:
        error = to_api_error(exc)
        level = logging.ERROR if error.status >= 500 and error.status != 503 else logging.INFO
        log.log(level, "[%s] request failed (%d %s): %s", self.job.request_id,
                error.status, error.type, error.message)
        return error

    def _outputs(self) -> tuple[AsyncIterator[Any], Choice | None]:
        """The outputs to read, and the choice they belong to when there is one choice: its
        worker stream is then read as is (the hot path: no merge, no pairs), else they come as
        (choice, output) pairs from the merge."""
        job = self.job
        if len(job.choices) > 1:
            return merged_outputs(job.backend, job.choices), None
        return job.backend.generate(job.choices[0].request), job.choices[0]

    def _usage(self) -> bytes | None:
        return usage_bytes(*usage_totals(self.job.choices)) if self.job.continuous_usage else None

    async def _stream(self, send: Any) -> None:
        job = self.job
        metrics = job.metrics
        ttft = metrics.ttft.labels(job.model)
        itl = metrics.itl.labels(job.model)
        writers = [ChunkWriter(chat=job.chat, request_id=job.request_id, model=job.model,
                               created=job.created, include_usage=job.include_usage,
                               logprobs=c.logprobs, index=c.index) for c in job.choices]
        started = False
        unfinished = len(job.choices)
        last = 0.0
        outputs: AsyncIterator[Any] | None = None
        try:
            outputs, only = self._outputs()
            async for item in outputs:
                now = time.perf_counter()
                choice, output = (only, item) if only is not None else item
                delta = choice.processor.process(output)
                if not started:
                    started = True
                    ttft.observe(now - job.started)
                    await send({"type": "http.response.start", "status": 200,
                                "headers": _SSE_HEADERS + self._headers})
                    body = b"".join(w.role(self._usage()) for w in writers) if job.chat else b""
                else:
                    if delta.num_tokens:
                        itl.observe((now - last) / delta.num_tokens)
                    body = b""
                last = now
                body += self._chunk(choice, delta, writers[choice.index])
                if delta.finish_reason is not None:
                    unfinished -= 1
                    if not unfinished:
                        if job.include_usage:
                            body += writers[0].usage(*usage_totals(job.choices))
                        await send({"type": "http.response.body", "body": body + DONE,
                                    "more_body": False})
                        return
                if body:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
            raise WorkerFailed("the worker's stream ended without a finish reason")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = self._failed(exc)
            if not started:
                await self._send_error(send, error)
                return
            self.status = error.status
            await send({"type": "http.response.body", "body": error_event(error.body()),
                        "more_body": False})
        finally:
            await aclose_quietly(outputs)

    def _chunk(self, choice: Choice, delta: Delta, writer: ChunkWriter) -> bytes:
        if choice.echo and delta.text is not None:
            delta.text, choice.echo = choice.echo + delta.text, ""
        if choice.parsing is None:
            if delta.text or delta.finish_reason or delta.logprobs:
                return writer.delta(delta, self._usage())
            return b""
        message = choice.parsing.feed(delta.text)
        finish = delta.finish_reason
        if finish is not None:
            tail = choice.parsing.finish()
            message.content += tail.content
            message.reasoning += tail.reasoning
            message.tool_calls.extend(tail.tool_calls)
            finish = choice.parsing.finish_reason(finish)
        if message or finish or delta.logprobs:
            return writer.message_delta(message.to_openai(), delta.logprobs, finish, self._usage())
        return b""

    async def _once(self, send: Any) -> None:
        job = self.job
        texts: list[list[str]] = [[] for _ in job.choices]
        logprob_parts: list[list[dict[str, Any]]] = [[] for _ in job.choices]
        first = True
        outputs: AsyncIterator[Any] | None = None
        unfinished = len(job.choices)
        try:
            outputs, only = self._outputs()
            async for item in outputs:
                choice, output = (only, item) if only is not None else item
                if first:
                    first = False
                    job.metrics.ttft.labels(job.model).observe(time.perf_counter() - job.started)
                delta = choice.processor.process(output)
                texts[choice.index].append(delta.text)
                if delta.logprobs:
                    choice.logprob_sum += sum(lp.logprob for lp in delta.logprobs)
                    if choice.logprobs is not None:
                        part = choice.logprobs.format(delta.logprobs)
                        if part is not None:
                            logprob_parts[choice.index].append(part)
                if delta.finish_reason is not None:
                    unfinished -= 1
                    if not unfinished:
                        break
            else:
                raise WorkerFailed("the worker's stream ended without a finish reason")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._send_error(send, self._failed(exc))
            return
        finally:
            await aclose_quietly(outputs)
        made = chat_choice if job.chat else completion_choice
        bodies = []
        for choice in job.choices:
            logprobs = (LogprobFormatter.merge(job.chat, logprob_parts[choice.index])
                        if choice.logprobs is not None else None)
            bodies.append((choice, made(choice, "".join(texts[choice.index]), logprobs)))
        kept = {id(c) for c in best_choices(job.choices, job.n)}
        choices = [dict(body, index=c.index) for c, body in bodies if id(c) in kept]
        choices.sort(key=lambda b: b["index"])
        body = full_response(chat=job.chat, request_id=job.request_id, model=job.model,
                             created=job.created, choices=choices,
                             usage=usage_dict(*usage_totals(job.choices)))
        await send({"type": "http.response.start", "status": 200,
                    "headers": _JSON_HEADERS + self._headers})
        await send({"type": "http.response.body", "body": body})

