"""The request plane over TLS: a worker started with a certificate serves gRPC over TLS only (its
record says so), a frontend that trusts its CA and holds a client certificate serves through it,
and whoever lacks either (a plaintext client, a frontend without a client certificate, a frontend
trusting another CA) gets nothing from the worker, which goes on serving the others."""

from __future__ import annotations

from pathlib import Path

import grpc
import openai
import pytest

from dynamo.llm.proto import worker_pb2 as pb
from dynamo.llm.proto import worker_pb2_grpc as pb_grpc
from tests.support.processes import FrontendProcess, WorkerProcess
from tests.support.tls import Certs, make_certs

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def _complete(fe: FrontendProcess, model: str) -> int:
    r = await fe.client(timeout=30).completions.create(model=model, prompt="over tls", max_tokens=5,
                                                       extra_body={"ignore_eos": True})
    assert r.usage is not None
    return r.usage.completion_tokens


async def test_mutual_tls_between_frontend_and_worker(tmp_path: Path, tiny_model_dir: Path, certs: Certs) -> None:
    worker = await WorkerProcess("mocker", ["--model", str(tiny_model_dir), "--speedup-ratio", "50",
                                            "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
                                            "--tls-ca", str(certs.ca)], tmp_path, name="tls-worker").ready(60)
    assert worker.record is not None and worker.record.tls and not worker.record.local_socket
    client_tls = ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]
    frontends = {"mtls": FrontendProcess(tmp_path, *client_tls),
                 "no client cert": FrontendProcess(tmp_path, "--tls-ca", str(certs.ca)),
                 "other CA": FrontendProcess(tmp_path, "--tls-ca", str(certs.other_ca), "--tls-cert",
                                             str(certs.client_cert), "--tls-key", str(certs.client_key))}
    model = tiny_model_dir.name
    try:
        for fe in frontends.values():
            await fe.wait_models({model})
        assert await _complete(frontends["mtls"], model) == 5
        for refused in ("no client cert", "other CA"):
            with pytest.raises(openai.APIStatusError) as err:
                await _complete(frontends[refused], model)
            assert err.value.status_code in (502, 503), refused
        # a plaintext client gets no answer from the TLS port
        async with grpc.aio.insecure_channel(worker.record.target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as rpc:
                await pb_grpc.WorkerStub(channel).ModelInfo(pb.ModelInfoRequest(), timeout=5)
        assert rpc.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await _complete(frontends["mtls"], model) == 5  # still serving
    finally:
        for fe in frontends.values():
            fe.close()
        await worker.close()


async def test_half_a_key_pair_is_refused_at_start(tmp_path: Path, tiny_model_dir: Path, certs: Certs) -> None:
    worker = WorkerProcess("mocker", ["--model", str(tiny_model_dir), "--tls-cert", str(certs.server_cert)],
                           tmp_path, name="tls-half")
    assert worker.proc.wait(60) == 2
    assert "--tls-cert and --tls-key go together" in worker.log()
    await worker.close()
