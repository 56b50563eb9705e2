"""Fixtures for frontend tests: fake runtimes, no GPU, no torch."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from fake_runtime import FakeBackend, FakeModel  # noqa: E402

import sglite  # noqa: E402


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


@pytest.fixture
def backend(model: FakeModel) -> FakeBackend:
    b = FakeBackend(model)
    sglite.set_default_backend(b)
    yield b
    sglite.set_default_backend(None)


@pytest.fixture(scope="session")
def engine_backend(request):
    """An in-process ``sglite.Engine`` over the shipped model, shared by the session."""
    engine = sglite.Engine(model_path=request.getfixturevalue("shipped_model_path"), max_total_tokens=8192)
    yield sglite.backend.as_backend(engine)
    engine.shutdown()


@pytest.fixture(scope="session")
def http_backend(request):
    """An sglite server (``sglite.Runtime``) over the shipped model, shared by the session."""
    runtime = sglite.Runtime(model_path=request.getfixturevalue("shipped_model_path"), max_total_tokens=8192)
    yield sglite.backend.as_backend(runtime)
    runtime.shutdown()


@pytest.fixture(scope="session")
def openai_backend(http_backend):
    """``sglite.OpenAI`` (completion model) over the same server's /v1, through the openai SDK."""
    import requests

    model = requests.get(http_backend.base_url + "/v1/models", timeout=10).json()["data"][0]["id"]
    return sglite.OpenAI(model, base_url=http_backend.base_url + "/v1", api_key="none", is_chat_model=False,
                         chat_template=http_backend.chat_template)


@pytest.fixture(params=["engine", "http"])
def real_backend(request):
    """Both of the above, one after the other; the caller resets any default backend it sets."""
    return request.getfixturevalue(f"{request.param}_backend")
