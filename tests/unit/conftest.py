"""Fixtures of the frontend's HTTP unit tests: the real app over a module's scripted `backend`,
served in a thread, and the official `openai` client pointed at it. A module defines `backend`
(and may define its own `server` / `client`, as test_frontend_validation.py does, module-scoped)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from dynamo.frontend.app import create_app
from dynamo.frontend.testing import ScriptedBackend, ThreadedServer, serve_in_thread


@pytest.fixture(scope="session")
def hf(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model's transformers tokenizer (to script answers in its token ids)."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def server(backend: ScriptedBackend) -> Iterator[ThreadedServer]:
    with serve_in_thread(create_app(backend)) as srv:
        yield srv


@pytest.fixture()
def client(server: ThreadedServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10)
