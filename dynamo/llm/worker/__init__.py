"""The worker shell shared by every backend: flags, roles, registration, gRPC, health, metrics,
KV-event relay and the decode side of disaggregation. A backend's main is a few lines."""

from dynamo.llm.worker.args import WorkerConfig, add_worker_args
from dynamo.llm.worker.main import ModelSource, run_worker

__all__ = ["ModelSource", "WorkerConfig", "add_worker_args", "run_worker"]
