"""gRPC core's I/O settings for dynamo's processes, applied before grpc is first imported.

grpc 1.85 moves client and server sockets onto its EventEngine ("experiments" that are on by
default): every received message then crosses one more thread before the completion queue that
grpc.aio polls, and each such thread wake-up is expensive on a virtual machine. With the
`event_engine_client` and `event_engine_listener` experiments off, the completion-queue poller does
the socket I/O itself (grpc's long-standing iomgr path). Measured on our 2-core machines, side by
side (benchmarks/grpc_io.py): a unary round trip over a Unix socket 552 -> 472 us at p50; a
streaming client's CPU per message 27-35% lower; the server's at 16 streams 6-28% lower.

Applied once, from `dynamo/__init__.py`, so every entrypoint (workers, frontend, mocker, tools that
import dynamo before grpc) gets it. grpc reads the variable when it is imported: a process that
imported grpc before dynamo keeps grpc's defaults. Set GRPC_EXPERIMENTS yourself (even to an empty
string, which means grpc's own defaults) and dynamo leaves it alone.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

#: the experiments dynamo turns off unless GRPC_EXPERIMENTS is set
DEFAULT_EXPERIMENTS = "-event_engine_client,-event_engine_listener"


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set GRPC_EXPERIMENTS to dynamo's default unless it is set. True if it was set by this call.
    Too late (and so a no-op) once grpc's core is loaded."""
    if "GRPC_EXPERIMENTS" in environ or "grpc._cython.cygrpc" in sys.modules:
        return False
    environ["GRPC_EXPERIMENTS"] = DEFAULT_EXPERIMENTS
    return True
