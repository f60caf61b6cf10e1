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
    from .server import GracefulServer, uvicorn_config
    from .worker_backend import create_serving_backend  # the gRPC side; heavy imports

    metrics = FrontendMetrics()
    backend = await create_serving_backend(config, router_observer=metrics.router)
    try:
        app = create_app(backend, api_key=config.api_key, max_body_bytes=config.max_body_bytes, metrics=metrics)
        freeze_startup_heap()
        server = GracefulServer(uvicorn_config(app, config.http_host, config.http_port,
                                               config.log_level))
        log.info("frontend listening on http://%s:%d, serving namespace %r (discovery: %s, "
                 "router: %s, migration limit %d%s)", config.http_host, config.http_port,
                 config.namespace, config.discovery.backend,
                 config.router_mode + ("" if config.router_mode != "kv" or config.kv_router.kv_events
                                       else " without KV events"),
                 config.migration_limit, ", API key required" if config.api_key else "")
        await server.serve()  # returns after SIGINT/SIGTERM, once open requests have drained
    finally:
        await backend.close()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_level)
    from .server import new_event_loop_factory

    with asyncio.Runner(loop_factory=new_event_loop_factory()) as runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
