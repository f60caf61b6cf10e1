"""`python -m dynamo.frontend`: discover workers, serve the OpenAI API over them."""

from __future__ import annotations

import asyncio
import logging
import sys

from dynamo.runtime.config import setup_logging

from .args import FrontendConfig, parse_args

log = logging.getLogger("dynamo.frontend")


async def serve(config: FrontendConfig) -> None:
    from dynamo.runtime.gc_heap import freeze_startup_heap

    from .app import create_app
    from .metrics import FrontendMetrics
    from .multiprocess import inherited_socket, process_index
    from .server import GracefulServer, uvicorn_config
    from .worker_backend import create_serving_backend  # the gRPC side; heavy imports

    metrics = FrontendMetrics()
    backend = await create_serving_backend(config, router_observer=metrics.router)
    try:
        app = create_app(backend, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics,
                         max_inflight=config.max_inflight, tool_call_parser=config.tool_call_parser,
                         reasoning_parser=config.reasoning_parser)
        freeze_startup_heap()
        server = GracefulServer(uvicorn_config(app, config.http_host, config.http_port,
                                               config.log_level))
        sock = inherited_socket()  # one of --num-workers processes (multiprocess.py)
        index = process_index()
        log.info("frontend%s listening on http://%s:%d, serving namespace %r (discovery: %s, "
                 "router: %s, migration limit %d%s)", f" process {index}" if index is not None else "",
                 config.http_host, sock.getsockname()[1] if sock is not None else config.http_port,
                 config.namespace, config.discovery.backend,
                 config.router_mode + ("" if config.router_mode != "kv" or config.kv_router.kv_events
                                       else " without KV events"),
                 config.migration_limit, ", API key required" if config.api_key else "")
        await server.serve(sockets=[sock] if sock is not None else None)  # returns once drained after SIGTERM
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    from .multiprocess import is_child, run_processes

    if config.num_workers > 1 and not is_child():
        return run_processes(config.num_workers, config.http_host, config.http_port,
                             sys.argv[1:] if argv is None else argv)
    from .server import new_event_loop_factory

    with asyncio.Runner(loop_factory=new_event_loop_factory()) as runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
