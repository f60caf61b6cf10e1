"""End-to-end fixtures: real frontend and worker processes sharing a file-discovery directory,
parametrized by backend like the conformance suite (tests/support/backends.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.backends import BACKENDS, BackendSpec
from tests.support.processes import FrontendProcess, WorkerProcess

SERVED = "tiny"


async def start_worker(spec: BackendSpec, tmp: Path, model: Path, namespace: str, role: str) -> WorkerProcess:
    reason = spec.available()
    if reason:
        pytest.skip(reason)
    role_args = [] if role == "agg" else ["--disaggregation-mode", role]
    w = WorkerProcess(spec.name, [*spec.args(model), *spec.role_args.get(role, []), "--served-model-name", SERVED,
                                  *role_args], tmp,
                      namespace=namespace, env=spec.env.get(role, {}), name=f"{spec.id}-{namespace}-{role}")
    return await w.ready(spec.startup_timeout)


@dataclass
class Serving:
    """A frontend over one aggregated worker, and (when the backend can) a second frontend over a
    prefill worker + a decode worker, each in a namespace of its own."""

    spec: BackendSpec
    agg: FrontendProcess
    workers: list[WorkerProcess]
    kv: FrontendProcess  # over the aggregated worker too, with KV-aware routing on its events alone
    disagg: FrontendProcess | None = None
    decode: WorkerProcess | None = None


@pytest.fixture(scope="module", params=[s.param() for s in BACKENDS])
async def serving(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                  tiny_model_dir: Path) -> AsyncIterator[Serving]:
    spec: BackendSpec = request.param
    tmp = tmp_path_factory.mktemp(f"e2e-{spec.id}")
    workers: list[WorkerProcess] = []
    frontends: list[FrontendProcess] = []
    try:
        workers.append(await start_worker(spec, tmp, tiny_model_dir, "agg", "agg"))
        frontends.append(FrontendProcess(tmp, namespace="agg"))
        frontends.append(FrontendProcess(tmp, "--router-mode", "kv", "--router-predicted-ttl", "0", namespace="agg"))
        decode = None
        if spec.disagg:
            workers.append(await start_worker(spec, tmp, tiny_model_dir, "disagg", "prefill"))
            decode = await start_worker(spec, tmp, tiny_model_dir, "disagg", "decode")
            workers.append(decode)
            frontends.append(FrontendProcess(tmp, namespace="disagg"))
        for fe in frontends:
            await fe.wait_models({SERVED}, timeout=120)
        yield Serving(spec, frontends[0], workers, frontends[1], frontends[2] if spec.disagg else None, decode)
    finally:
        for fe in frontends:
            fe.close()
        for w in workers:
            await w.close()
