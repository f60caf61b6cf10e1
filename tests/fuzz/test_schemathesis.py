"""schemathesis against a live frontend (a real process, over a mocker worker), driven by the
frontend's own /openapi.json: for every operation, bodies that fit the description and bodies that do
not. Checked: never a 5xx, every status and content type one the description names, every JSON
body in the described shape (errors in OpenAI's {"error": {...}}), invalid data refused.

Not checked: that every body fitting the description is accepted. A JSON schema cannot say "prompt
plus max_tokens within the model's context" or "min_tokens <= max_tokens", so such bodies are 400s
by design (schemathesis's positive_data_acceptance is left out for that reason).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency (pip install -e .[dev])")
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS

from dynamo.frontend.openapi import openapi_document
from tests.support.processes import FrontendProcess, WorkerProcess, start_mocker

SERVED = "tiny"


def _pinned_to_served_model(doc: dict[str, Any]) -> dict[str, Any]:
    """The description with `model` limited to the one served model, so that generated requests
    reach the request path instead of stopping at 404 (an unknown model is a case of its own)."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        schemas[name]["properties"]["model"] = {"enum": [SERVED]}
    for path in ("/tokenize", "/detokenize"):
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"] = \
            {"enum": [SERVED]}
    return doc


schema = schemathesis.openapi.from_dict(_pinned_to_served_model(openapi_document()))


@pytest.fixture(scope="module")
async def frontend(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> AsyncIterator[FrontendProcess]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    worker: WorkerProcess = await start_mocker(tmp, tiny_model_dir, "--speedup-ratio", "1000",
                                               "--served-model-name", SERVED, name="schemathesis-mocker")
    fe = FrontendProcess(tmp, "--max-body-bytes", "65536")
    try:
        await fe.wait_models({SERVED})
        yield fe
    finally:
        fe.close()
        await worker.close()


@pytest.fixture(scope="module")
def base_url(frontend: FrontendProcess) -> Iterator[str]:
    yield frontend.url


_EXCLUDED = [c for c in CHECKS.get_all() if c.__name__ == "positive_data_acceptance"]


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_frontend_honours_its_openapi_description(case: Any, base_url: str, frontend: FrontendProcess) -> None:
    case.call_and_validate(base_url=base_url, timeout=30, excluded_checks=_EXCLUDED)
    assert frontend.proc.poll() is None, "the frontend died"


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"model": SERVED, "prompt": "def f(x):", "max_tokens": 8, "stream": True}),
    ("/v1/chat/completions", {"model": SERVED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                              "stream": True, "stream_options": {"include_usage": True}}),
])
def test_a_streamed_answer_honours_the_description(path: str, body: dict[str, Any], base_url: str) -> None:
    """Every SSE event of a successful stream (chunks, the usage chunk, [DONE]) against the description:
    generated bodies reach a successful stream only now and then, so one is sent here every time."""
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call(base_url=base_url, timeout=30)
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    assert b"data: [DONE]" in response.content
    case.validate_response(response, excluded_checks=_EXCLUDED)
