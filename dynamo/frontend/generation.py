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

from dynamo.llm.protocol import GenerateOutput, GenerateRequest

from .backend import ServingBackend, WorkerFailed
from .errors import ApiError, to_api_error
from .metrics import FrontendMetrics
from .postprocess import OutputProcessor
from .responses import DONE, ChunkWriter, LogprobFormatter, error_event, full_response, usage_dict

log = logging.getLogger(__name__)

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                (b"x-accel-buffering", b"no")]
_JSON_HEADERS = [(b"content-type", b"application/json")]
CLIENT_CLOSED = 499  # nginx's convention, for metrics only: the client went away


@dataclass
class GenerationJob:
    backend: ServingBackend
    metrics: FrontendMetrics
    request: GenerateRequest
    processor: OutputProcessor
    logprobs: LogprobFormatter | None
    chat: bool
    stream: bool
    include_usage: bool
    endpoint: str
    started: float  # perf_counter when the HTTP request arrived
    created: int  # unix time for the response's "created"
    release: Callable[[], None] | None = None  # called once when the response is done (FrontendApp's count)


async def _wait_disconnect(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _aclose(iterator: AsyncIterator[GenerateOutput] | None) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception as exc:  # closing must not mask the request's own outcome
            log.warning("closing the backend stream raised %s: %s", type(exc).__name__, exc)


class GenerationResponse:
    def __init__(self, job: GenerationJob) -> None:
        self.job = job
        self.status = 200
        self._headers = [(b"x-request-id", job.request.request_id.encode())]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        job = self.job
        model = job.request.model
        job.metrics.inflight.labels(model).inc()
        work = asyncio.ensure_future(self._stream(send) if job.stream else self._once(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                work.result()
            else:
                self.status = CLIENT_CLOSED
                log.info("[%s] client disconnected; cancelling the request", job.request.request_id)
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
            m.output_tokens.labels(model).inc(job.processor.completion_tokens)
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
        log.log(level, "[%s] request failed (%d %s): %s", self.job.request.request_id,
                error.status, error.type, error.message)
        return error

    async def _stream(self, send: Any) -> None:
        job = self.job
        proc = job.processor
        metrics = job.metrics
        model = job.request.model
        ttft = metrics.ttft.labels(model)
        itl = metrics.itl.labels(model)
        writer = ChunkWriter(chat=job.chat, request_id=job.request.request_id, model=model,
                             created=job.created, include_usage=job.include_usage,
                             logprobs=job.logprobs)
        started = False
        last = 0.0
        outputs: AsyncIterator[GenerateOutput] | None = None
        try:
            outputs = job.backend.generate(job.request)
            async for output in outputs:
                now = time.perf_counter()
                delta = proc.process(output)
                if not started:
                    started = True
                    ttft.observe(now - job.started)
                    await send({"type": "http.response.start", "status": 200,
                                "headers": _SSE_HEADERS + self._headers})
                    body = writer.role() if job.chat else b""
                else:
                    if delta.num_tokens:
                        itl.observe((now - last) / delta.num_tokens)
                    body = b""
                last = now
                if delta.text or delta.finish_reason or delta.logprobs:
                    body += writer.delta(delta)
                if delta.finish_reason is not None:
                    if job.include_usage:
                        body += writer.usage(len(job.request.token_ids), proc.completion_tokens,
                                             proc.cached_tokens)
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
            await _aclose(outputs)

    async def _once(self, send: Any) -> None:
        job = self.job
        proc = job.processor
        texts: list[str] = []
        logprob_parts: list[dict[str, Any]] = []
        first = True
        outputs: AsyncIterator[GenerateOutput] | None = None
        try:
            outputs = job.backend.generate(job.request)
            async for output in outputs:
                if first:
                    first = False
                    job.metrics.ttft.labels(job.request.model).observe(
                        time.perf_counter() - job.started)
                delta = proc.process(output)
                texts.append(delta.text)
                if job.logprobs is not None and delta.logprobs:
                    part = job.logprobs.format(delta.logprobs)
                    if part is not None:
                        logprob_parts.append(part)
                if delta.finish_reason is not None:
                    break
            else:
                raise WorkerFailed("the worker's stream ended without a finish reason")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._send_error(send, self._failed(exc))
            return
        finally:
            await _aclose(outputs)
        logprobs = (LogprobFormatter.merge(job.chat, logprob_parts)
                    if job.logprobs is not None else None)
        body = full_response(
            chat=job.chat, request_id=job.request.request_id, model=job.request.model,
            created=job.created, text="".join(texts), finish_reason=proc.finish_reason or "stop",
            logprobs=logprobs,
            usage=usage_dict(len(job.request.token_ids), proc.completion_tokens,
                             proc.cached_tokens))
        await send({"type": "http.response.start", "status": 200,
                    "headers": _JSON_HEADERS + self._headers})
        await send({"type": "http.response.body", "body": body})
