"""How generate requests travel to a worker, defined once for the frontend and decode workers.

`stream` (default): every request to one worker shares one long-lived GenerateStream call, and
outputs that are ready together travel in one message (stream_client.py). `unary`: one Generate
call per request. Both behave the same per request (errors, cancellation, migration).
"""

from __future__ import annotations

import argparse
from typing import Any

from dynamo.runtime.config import Environ, add_env_flag, choice

TRANSPORTS = ("stream", "unary")
DEFAULT_TRANSPORT = "stream"
TRANSPORT_ENV = "DYN_GENERATE_TRANSPORT"


def check_transport(transport: str) -> str:
    if transport not in TRANSPORTS:
        raise ValueError(f"unknown request transport {transport!r}; choose one of {', '.join(TRANSPORTS)}")
    return transport


def add_transport_arg(parser: argparse.ArgumentParser, env: Environ | None = None, group: Any = None) -> None:
    add_env_flag(parser, "--request-transport", env_var=TRANSPORT_ENV, default=DEFAULT_TRANSPORT, env=env,
                 group=group, type=choice(*TRANSPORTS),
                 help="how requests travel to a worker: 'stream' multiplexes them all on one gRPC "
                      "GenerateStream per worker, outputs ready together in one message; 'unary' "
                      "opens one Generate call per request")
