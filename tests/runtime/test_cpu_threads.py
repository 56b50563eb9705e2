"""CPU intra-op thread choice (model_executor.model_runner.cpu_threads) and the oversubscription warning."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sglite_runtime.model_executor import model_runner
from sglite_runtime.model_executor.model_runner import cpu_threads, warn_if_oversubscribed
from sglite_runtime.server_args import ServerArgs

SMALL, LARGE = SimpleNamespace(hidden_size=192), SimpleNamespace(hidden_size=2048)


@pytest.fixture
def cores(monkeypatch):
    def set_cores(n: int) -> None:
        monkeypatch.setattr(model_runner.os, "cpu_count", lambda: n)
    monkeypatch.delenv("SGLITE_NUM_THREADS", raising=False)
    return set_cores


def test_small_models_use_one_thread_large_ones_leave_the_scheduler_a_core(cores):
    cores(8)
    assert cpu_threads(ServerArgs(), SMALL) == 1
    assert cpu_threads(ServerArgs(), LARGE) == 7
    cores(1)
    assert cpu_threads(ServerArgs(), LARGE) == 1


def test_explicit_count_wins(cores, monkeypatch):
    cores(8)
    assert cpu_threads(ServerArgs(num_threads=3), LARGE) == 3
    monkeypatch.setenv("SGLITE_NUM_THREADS", "5")
    assert cpu_threads(ServerArgs(), SMALL) == 5


def test_the_default_does_not_depend_on_overlap(cores):
    # Outputs must stay bitwise equal with overlap on and off: same thread count both ways.
    cores(8)
    for cfg in (SMALL, LARGE):
        assert cpu_threads(ServerArgs(), cfg) == cpu_threads(ServerArgs(disable_overlap_schedule=True), cfg)


def test_oversubscription_is_reported_only_when_overlap_runs(cores, caplog):
    cores(2)
    with caplog.at_level(logging.WARNING, logger=model_runner.__name__):
        warn_if_oversubscribed(ServerArgs(), 2)
        assert "--num-threads 1" in caplog.text and "--disable-overlap-schedule" in caplog.text
        caplog.clear()
        warn_if_oversubscribed(ServerArgs(), 1)  # leaves the scheduler thread a core
        warn_if_oversubscribed(ServerArgs(disable_overlap_schedule=True), 2)  # no overlap thread
        assert caplog.text == ""
