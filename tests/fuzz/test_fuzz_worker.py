"""Hypothesis against a worker's gRPC Generate (a mocker process): every field of GenerateRequest
over its wire type's whole range (token ids past the vocabulary, NaN and infinite floats, huge or
negative numbers, empty or oversized lists, foreign handoff params), and raw bytes. The answer is
OK or INVALID_ARGUMENT, never a crash, and the worker keeps serving. Bounded by example count."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamo.llm.proto import worker_pb2 as pb
from tests.support.processes import WorkerProcess, start_mocker

pytestmark = pytest.mark.timeout(600)

EXAMPLES = 150
U32 = st.integers(0, 2**32 - 1) | st.integers(0, 1100)  # the tiny model's vocabulary is 1024
FLOATS = st.floats(width=32) | st.floats(-3, 3, width=32)
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def optional(strategy: st.SearchStrategy) -> st.SearchStrategy:  # type: ignore[type-arg]
    return st.none() | strategy


requests = st.builds(
    lambda rid, model, ids, t, p, k, mp, seed, pp, fp, rp, mx, mn, stops, eos, lp, params, annotations: pb.GenerateRequest(
        request_id=rid, model=model, token_ids=ids,
        sampling=pb.SamplingOptions(**{n: v for n, v in dict(
            temperature=t, top_p=p, top_k=k, min_p=mp, seed=seed, presence_penalty=pp, frequency_penalty=fp,
            repetition_penalty=rp).items() if v is not None}),
        stop=pb.StopConditions(**{n: v for n, v in dict(max_tokens=mx, min_tokens=mn).items() if v is not None},
                               stop_token_ids=stops, ignore_eos=eos),
        output=pb.OutputOptions(**({"logprobs": lp} if lp is not None else {})),
        disaggregated_params=params, annotations=annotations),
    st.text(max_size=20), st.sampled_from(["", "tiny-fuzz", "other"]) | st.text(max_size=8),
    st.lists(U32, max_size=40), optional(FLOATS), optional(FLOATS), optional(st.integers(-2**31, 2**31 - 1)),
    optional(FLOATS), optional(st.integers(-2**63, 2**63 - 1)), optional(FLOATS), optional(FLOATS), optional(FLOATS),
    optional(st.integers(0, 2**32 - 1) | st.integers(0, 64)), optional(st.integers(0, 2**32 - 1) | st.integers(0, 8)),
    st.lists(U32, max_size=5), st.booleans(), optional(st.integers(0, 2**32 - 1) | st.integers(0, 25)),
    st.none() | st.builds(lambda e, j, ids: pb.DisaggregatedParams(engine=e, payload_json=j, first_token_ids=ids),
                          st.sampled_from(["mocker", "vllm", ""]), st.text(max_size=30) | st.just("{}"),
                          st.lists(U32, max_size=3)),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
)


@pytest.fixture(scope="module")
async def worker(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> AsyncIterator[WorkerProcess]:
    w = await start_mocker(tmp_path_factory.mktemp("fuzz-worker"), tiny_model_dir, "--speedup-ratio", "1000",
                           "--served-model-name", "tiny-fuzz", "--max-model-len", "256", name="fuzz-worker")
    try:
        yield w
    finally:
        await w.close()


async def _call(w: WorkerProcess, request: pb.GenerateRequest | bytes) -> grpc.StatusCode:
    assert w.record is not None
    async with grpc.aio.insecure_channel(w.record.target) as channel:
        path = f"/{pb.DESCRIPTOR.services_by_name['Worker'].full_name}/Generate"
        call = channel.unary_stream(path, request_serializer=(None if isinstance(request, bytes)
                                                              else pb.GenerateRequest.SerializeToString))(
            request, timeout=30)
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def _fuzz(w: WorkerProcess, strategy: st.SearchStrategy) -> None:  # type: ignore[type-arg]
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(request: pb.GenerateRequest | bytes) -> None:
        code = asyncio.run(_call(w, request))
        assert code in ALLOWED, f"{code} for {request!r}"

    one()


async def _still_serves(w: WorkerProcess) -> None:
    ok = pb.GenerateRequest(request_id="after", token_ids=[5, 6, 7], stop=pb.StopConditions(max_tokens=3))
    assert await _call(w, ok) == grpc.StatusCode.OK
    assert w.proc.poll() is None
    assert "Traceback" not in w.log()
    assert (await w.stats()).unfinished_requests == 0


async def test_generate_requests(worker: WorkerProcess) -> None:
    await asyncio.to_thread(_fuzz, worker, requests)
    await _still_serves(worker)


async def test_bytes(worker: WorkerProcess) -> None:
    await asyncio.to_thread(_fuzz, worker, st.binary(max_size=120))
    await _still_serves(worker)
