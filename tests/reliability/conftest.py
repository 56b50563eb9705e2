"""Fixtures of the reliability suite: one server per module with a KV pool smaller than the
context (so the admission rule is exercised too); see reliability_utils for the checks that the
server is still well after each group of hostile requests.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from reliability_utils import start_server


@pytest.fixture(scope="session")
def rserver(shipped_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server shared by the reliability modules (the chaos test starts its own)."""
    handle = start_server(shipped_model_path, tmp_path_factory)
    yield handle
    handle.shutdown()
    handle.log_file.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The chaos test kills the shared server: run it after every other test that uses it.
    items.sort(key=lambda item: item.path.name == "test_chaos.py")
