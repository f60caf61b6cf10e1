"""OpenAI-shaped errors: what the HTTP layer raises internally and how they become responses."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from dynamo.llm.protocol import InvalidRequest

from .backend import BackendError

# nginx's "client closed request": the client went away before its request was read. Not a server
# error: counted apart, logged at info (anyone could otherwise inflate the 5xx metric and the logs).
CLIENT_CLOSED = 499


class ApiError(Exception):
    """An error answered to the client as {"error": {message, type, param, code}} with `status`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def json_bytes(self) -> bytes:
        return orjson.dumps(self.body())


def invalid(message: str, param: str | None = None) -> ApiError:
    """A 400 about the request body; `param` names the offending field."""
    return ApiError(400, message, param=param)


def to_api_error(exc: BaseException) -> ApiError:
    """Map anything a request can fail with onto the error the client sees."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc))
    if isinstance(exc, ClientDisconnect):
        return ApiError(CLIENT_CLOSED, "the client closed the connection before its request was read",
                        type="client_closed_request")
    if isinstance(exc, BackendError):
        return ApiError(exc.http_status, str(exc) or type(exc).__name__, type=exc.error_type)
    return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="internal_error")
