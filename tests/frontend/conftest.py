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
