"""TEST DOUBLE of ``tensorrt_llm/executor/utils.py``: ``RequestError``, ``ErrorResponse``, ``has_event_loop``."""

import asyncio
from typing import NamedTuple


def has_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RequestError(RuntimeError):
    ''' The error raised when the request is failed. '''


class ErrorResponse(NamedTuple):
    client_id: int
    error_msg: str
    request_id: int
