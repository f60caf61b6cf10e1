"""The OpenAI-compatible HTTP app: routes, auth, body limits and the request -> job wiring."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dynamo.llm.model_card import ModelCard

from . import tokenize_api
from .args import DEFAULT_MAX_BODY_BYTES
from .backend import ServingBackend
from .chat_parsing import ChatParsing
from .choices import build_choices
from .errors import CLIENT_CLOSED, ApiError, invalid, to_api_error
from .generation import GenerationJob, GenerationResponse
from .metrics import CONTENT_TYPE, FrontendMetrics
from .multiprocess import process_index
from .openapi import openapi_document
from .parsers import REASONING_PARSERS, TOOL_PARSERS
from .preprocess import build_generate_request, prompt_token_ids
from .schemas import ParsedRequest, model_of, parse_chat, parse_completion
from .tokenizer import ModelTokenizer, TokenizerCache

log = logging.getLogger(__name__)

_UNKNOWN_MODEL_LABEL = "unknown"  # metrics label for requests that never resolved to a served model


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers=headers)


RETRY_AFTER_S = "1"  # what an overloaded frontend (503) or a model whose workers are all full (429) asks for


def error_response(error: ApiError) -> Response:
    headers = ({"www-authenticate": "Bearer"} if error.status == 401
               else {"retry-after": RETRY_AFTER_S} if error.status in (429, 503) else None)
    return Response(error.json_bytes(), status_code=error.status, media_type="application/json",
                    headers=headers)


# How long GET /v1/models waits for a new model's tokenizer before leaving the model out (it is
# listed by a later call, once loaded).
LIST_WAIT_S = 2.0


class FrontendApp:
    """State shared by the routes of one app (one backend, one registry, one tokenizer cache)."""

    def __init__(self, backend: ServingBackend, *, api_key: str | None, max_body_bytes: int,
                 metrics: FrontendMetrics | None = None, max_inflight: int = 0,
                 tool_call_parser: str | None = None, reasoning_parser: str | None = None) -> None:
        self.backend = backend
        self.tool_call_parser = tool_call_parser  # override the model cards' (--tool-call-parser)
        self.reasoning_parser = reasoning_parser
        self.max_inflight = max_inflight
        self.active = 0  # generate requests admitted and not yet answered
        self.process = process_index()
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or FrontendMetrics()
        self.metrics.router_state.state = getattr(backend, "router_state", None)
        self.metrics.idle_prefill.source = getattr(backend, "idle_prefill", None)
        self.metrics.pacing.source = getattr(backend, "pacing", None)
        self.tokenizers = TokenizerCache()
        self._openapi = orjson.dumps(openapi_document())

    # --- helpers ------------------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send it as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), self.api_key):
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")

    async def _read_json(self, request: Request) -> Any:
        limit = self.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"request body is {length} bytes; the limit is {limit} bytes",
                           code="request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes",
                               code="request_too_large")
            chunks.append(chunk)
        try:
            return orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise invalid(f"request body is not valid JSON: {exc}") from None

    # --- generate endpoints -------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Any:
        return await self._generate(request, chat=True, endpoint="chat_completions")

    async def completions(self, request: Request) -> Any:
        return await self._generate(request, chat=False, endpoint="completions")

    def _release(self) -> None:
        self.active -= 1

    async def _generate(self, request: Request, *, chat: bool, endpoint: str) -> Any:
        started = time.perf_counter()
        model_label = _UNKNOWN_MODEL_LABEL
        if self.max_inflight and self.active >= self.max_inflight:
            # refused before any work (body, template, tokens): overload costs the frontend nothing
            self.metrics.requests.labels(model_label, endpoint, "503").inc()
            return error_response(ApiError(
                503, f"this frontend is serving its limit of {self.max_inflight} requests (--max-inflight); "
                     "retry shortly", type="service_unavailable", code="frontend_overloaded"))
        self.active += 1
        try:
            self._check_auth(request)
            body = await self._read_json(request)
            parsed = parse_chat(body) if chat else parse_completion(body)
            card = self.backend.card(parsed.model)
            model_label = card.served_model_name
            tokenizer = await self.tokenizers.get(card)
            prompt_ids = await prompt_token_ids(parsed, tokenizer, card.context_length, self.backend.prompt_hasher(card))
            request_id = _request_id(request, "chatcmpl-" if chat else "cmpl-")
            generate_request = build_generate_request(parsed, card, prompt_ids, request_id)
            choices = build_choices(parsed, generate_request, tokenizer, self._chat_parsing(parsed, card))
        except Exception as exc:
            error = to_api_error(exc)
            if error.status == CLIENT_CLOSED:
                log.info("%s: %s", request.url.path, error.message)
            elif error.status >= 500 and error.status != 503:
                log.exception("request failed before generation")
            self.metrics.requests.labels(model_label, endpoint, str(error.status)).inc()
            self.active -= 1
            return error_response(error)
        except BaseException:  # cancelled (the client went away) while reading or tokenizing
            self.active -= 1
            raise
        self.metrics.input_tokens.labels(model_label).inc(len(prompt_ids))
        return GenerationResponse(GenerationJob(
            backend=self.backend, metrics=self.metrics, choices=choices, n=parsed.n,
            request_id=request_id, model=generate_request.model, chat=chat, stream=parsed.stream,
            include_usage=parsed.include_usage, continuous_usage=parsed.continuous_usage,
            endpoint=endpoint, started=started, created=int(time.time()), release=self._release))

    def _chat_parsing(self, parsed: ParsedRequest, card: ModelCard) -> Callable[[], ChatParsing] | None:
        """How each choice's text becomes reasoning / content / tool calls; None: plain text."""
        if parsed.kind != "chat":
            return None
        reasoning = self.reasoning_parser or card.reasoning_parser
        tools = parsed.tools if parsed.tools is not None and parsed.tools.choice != "none" else None
        tool_parser = self.tool_call_parser or card.tool_call_parser
        if tools is not None and tools.choice == "auto" and not tool_parser:
            raise invalid(f"tool_choice 'auto' needs a tool-call parser for model {card.served_model_name!r}: "
                          "start the frontend with --tool-call-parser, or the worker with "
                          "--dyn-tool-call-parser (or use tool_choice 'required' or a named function)",
                          "tool_choice")
        if tools is None and not reasoning:
            return None
        for name, known, kind in ((tool_parser if tools else None, TOOL_PARSERS, "tool-call"),
                                  (reasoning, REASONING_PARSERS, "reasoning")):
            if name and name not in known:
                raise ApiError(500, f"model {card.served_model_name!r} names {kind} parser {name!r}, which this "
                               f"frontend does not have (it has {', '.join(known)})", type="internal_error")
        return lambda: ChatParsing(tools, tool_parser, reasoning, parsed.chat_template_kwargs)

    # --- other endpoints ----------------------------------------------------------------------

    async def tokenize(self, request: Request) -> Response:
        return await self._tokenizer_route(request, tokenize_api.tokenize)

    async def detokenize(self, request: Request) -> Response:
        async def run(body: Any, _card: ModelCard, tokenizer: ModelTokenizer) -> dict[str, Any]:
            return tokenize_api.detokenize(body, tokenizer)
        return await self._tokenizer_route(request, run)

    async def _tokenizer_route(self, request: Request, run: Any) -> Response:
        try:
            self._check_auth(request)
            body = await self._read_json(request)
            if not isinstance(body, dict):
                raise invalid("the request body must be a JSON object")
            card = self.backend.card(model_of(body))
            return json_response(await run(body, card, await self.tokenizers.get(card)))
        except Exception as exc:
            error = to_api_error(exc)
            if error.status >= 500:
                log.exception("%s failed", request.url.path)
            return error_response(error)

    async def list_models(self, request: Request) -> Response:
        try:
            self._check_auth(request)
        except ApiError as error:
            return error_response(error)
        return json_response({"object": "list", "data": [_model_entry(c) for c in await self._servable()]})

    async def _servable(self) -> list[Any]:
        """The models a request can be served for now: a model is listed once its tokenizer is
        loaded (waited for here, within a bound), never seconds before a request could use it."""
        async def ready(card: Any) -> bool:
            if self.tokenizers.is_loaded(card):
                return True
            try:
                await asyncio.wait_for(self.tokenizers.get(card), LIST_WAIT_S)  # get() shields the load
            except Exception:  # not loaded in time, or failed: /health says which
                return False
            return True
        cards = self.backend.models()
        listed = await asyncio.gather(*(ready(c) for c in cards))
        return [c for c, ok in zip(cards, listed) if ok]

    async def get_model(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            card = self.backend.card(request.path_params["model"])
        except Exception as exc:
            return error_response(to_api_error(exc))
        return json_response(_model_entry(card))

    async def health(self, request: Request) -> Response:
        cards = self.backend.models()
        models = [c.served_model_name for c in cards]
        ready = [c.served_model_name for c in cards if self.tokenizers.is_loaded(c)]
        if ready:
            body: dict[str, Any] = {"status": "healthy", "models": models, "ready": ready}
            if self.process is not None:
                body["process"] = self.process  # which of --num-workers processes answered
            idle = self.metrics.idle_prefill.source() if self.metrics.idle_prefill.source else {}
            if idle:  # serving, but prefill workers sit idle: say why (dynamo.frontend.worker_backend)
                body["idle_prefill_workers"] = {m: {"workers": i.workers, "reason": i.reason} for m, i in idle.items()}
            return json_response(body)
        message = ("no model is served: no live worker is registered" if not models
                   else "loading the tokenizer of " + ", ".join(models))
        return json_response({"status": "unhealthy", "models": models, "ready": [], "message": message},
                             status=503)

    async def preload_tokenizers(self, interval: float = 0.5) -> None:
        """Load each model's tokenizer as soon as its first worker appears, not on its first request
        (loading transformers takes seconds)."""
        while True:
            for card in self.backend.models():
                if not self.tokenizers.is_loaded(card) and not self.tokenizers.is_loading(card):
                    task = asyncio.ensure_future(self.tokenizers.get(card))
                    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # logged by the cache
            await asyncio.sleep(interval)

    async def router_state(self, request: Request) -> Response:
        """What the router knows: for a KV router, its index (blocks per worker, event counts) and its
        predicted loads. For debugging; behind the API key like /v1/*."""
        try:
            self._check_auth(request)
        except ApiError as error:
            return error_response(error)
        state = getattr(self.backend, "router_state", None)
        return json_response(state() if state is not None else {"mode": "unknown"})

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, media_type="application/json")

    async def live(self, request: Request) -> Response:
        return json_response({"status": "live"})

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def _model_entry(card: Any) -> dict[str, Any]:
    return {"id": card.served_model_name, "object": "model", "created": 0, "owned_by": "dynamo",
            "max_model_len": card.context_length}


def _request_id(request: Request, prefix: str) -> str:
    # A caller-supplied id (printable, bounded) lets logs be joined across systems.
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return prefix + uuid.uuid4().hex


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}; see /v1/models, /v1/chat/completions, "
                    "/v1/completions, /tokenize, /detokenize, /health, /live, /metrics, /openapi.json",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, exc.detail)
    response = error_response(ApiError(exc.status_code, message))
    response.headers.update(exc.headers or {})  # 405's Allow (RFC 9110)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(to_api_error(exc))


def create_app(backend: ServingBackend, *, api_key: str | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, metrics: FrontendMetrics | None = None,
               max_inflight: int = 0, tool_call_parser: str | None = None,
               reasoning_parser: str | None = None) -> Starlette:
    """The HTTP app over `backend`. With `api_key`, /v1/* requires 'Authorization: Bearer KEY'."""
    state = FrontendApp(backend, api_key=api_key, max_body_bytes=max_body_bytes, metrics=metrics,
                        max_inflight=max_inflight, tool_call_parser=tool_call_parser,
                        reasoning_parser=reasoning_parser)
    routes = [
        Route("/v1/chat/completions", state.chat_completions, methods=["POST"]),
        Route("/v1/completions", state.completions, methods=["POST"]),
        Route("/v1/models", state.list_models, methods=["GET"]),
        Route("/tokenize", state.tokenize, methods=["POST"]),
        Route("/detokenize", state.detokenize, methods=["POST"]),
        Route("/v1/models/{model:path}", state.get_model, methods=["GET"]),
        Route("/v1/router/state", state.router_state, methods=["GET"]),
        Route("/health", state.health, methods=["GET"]),
        Route("/live", state.live, methods=["GET"]),
        Route("/openapi.json", state.openapi, methods=["GET"]),
        Route("/metrics", state.metrics_endpoint, methods=["GET"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        preload = asyncio.create_task(state.preload_tokenizers(), name="tokenizer preload")
        try:
            yield
        finally:
            preload.cancel()

    app = FrontendStarlette(routes=routes, lifespan=lifespan,
                            exception_handlers={HTTPException: _http_error, Exception: _server_error})
    app.generate_routes = {"/v1/chat/completions": state.chat_completions, "/v1/completions": state.completions}
    app.state.frontend = state
    return app


class FrontendStarlette(Starlette):
    """Starlette, but a POST to a generate route goes straight to its handler.

    Those are nearly every request under load; Starlette's way to them (two middlewares, the route
    table, two exception-handling wrappers, each wrapping `send` again for every SSE chunk) was ~5%
    of the frontend's CPU per request. The handlers answer their own errors (OpenAI's shape), so
    only an error that escapes them needs catching here, as Starlette's error middleware would."""

    generate_routes: dict[str, Callable[[Request], Any]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            handler = self.generate_routes.get(scope["path"])
            if handler is not None:
                scope["app"] = self
                request = Request(scope, receive)
                try:
                    response = await handler(request)
                except Exception as exc:
                    response = await _server_error(request, exc)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
