"""The worker shell shared by every backend: flags, roles, registration, gRPC, health, metrics,
KV-event relay and the decode side of disaggregation. A backend's main is one call: `serve_engine`."""

from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from dynamo.llm.worker.main import run_worker, serve_engine

__all__ = ["WorkerConfig", "add_worker_args", "run_worker", "serve_engine"]
