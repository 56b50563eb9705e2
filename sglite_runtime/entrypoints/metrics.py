"""Prometheus metrics of the HTTP server (``/metrics``), SGLang's names with an ``sglite:`` prefix.

Counters and histograms are fed by the TokenizerManager's hooks (``on_output`` on every batch of
new tokens, ``on_finish`` once per request); gauges are refreshed from the scheduler's internal
state when ``/metrics`` is scraped, so an idle server costs nothing.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sglite_runtime.managers.io_struct import FinishAbort
from sglite_runtime.managers.req_state import ReqState

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 20.0, 40.0, 80.0, 160.0)
_ITL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
                0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServerMetrics:
    """A private registry (several servers may live in one test process) with one model label."""

    def __init__(self, model_name: str):
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = {"model_name": model_name}
        names = list(self.labels)
        r = self.registry

        def counter(name: str, doc: str) -> Any:
            return Counter(f"sglite:{name}", doc, names, registry=r).labels(**self.labels)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(f"sglite:{name}", doc, names, registry=r).labels(**self.labels)

        def hist(name: str, doc: str, buckets: tuple) -> Any:
            return Histogram(f"sglite:{name}", doc, names, buckets=buckets, registry=r).labels(**self.labels)

        self.prompt_tokens = counter("prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = counter("generation_tokens_total", "Tokens generated.")
        self.cached_tokens = counter("cached_tokens_total", "Prompt tokens served from the prefix cache.")
        self.num_requests = counter("num_requests_total", "Finished requests.")
        self.num_aborted = counter("num_aborted_requests_total", "Requests that ended in an abort.")
        self.num_running = gauge("num_running_reqs", "Requests in the running batch.")
        self.num_queue = gauge("num_queue_reqs", "Requests waiting to be scheduled.")
        self.cache_hit_rate = gauge("cache_hit_rate", "Cached prompt tokens / prompt tokens.")
        self.token_usage = gauge("token_usage", "Fraction of the KV pool held by requests.")
        self.num_used_tokens = gauge("num_used_tokens", "KV slots held by requests.")
        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between output tokens.", _ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency.", _LATENCY_BUCKETS)

    # ---- TokenizerManager hooks ----------------------------------------------------------------
    def on_output(self, state: ReqState, new_ids: list[int], now: float) -> None:
        """Called for every batch of new tokens, before ``state.last_token_time`` is updated."""
        if not new_ids:
            return
        self.generation_tokens.inc(len(new_ids))
        if len(state.output_ids) == len(new_ids) or state.last_token_time is None:  # the first tokens
            self.ttft.observe(max(now - state.created, 0.0))
        else:
            # Several tokens in one message (stream_interval > 1, jump-forward) share the gap.
            gap = max(now - state.last_token_time, 0.0) / len(new_ids)
            for _ in new_ids:
                self.itl.observe(gap)

    def on_finish(self, state: ReqState, now: float) -> None:
        m = state.meta
        self.num_requests.inc()
        self.prompt_tokens.inc(m.get("prompt_tokens", 0) or 0)
        self.cached_tokens.inc(m.get("cached_tokens", 0) or 0)
        if isinstance(state.finish_reason, FinishAbort):
            self.num_aborted.inc()
        self.e2e.observe(max(now - state.created, 0.0))

    # ---- scrape -----------------------------------------------------------------------------------
    def refresh(self, internal_state: dict) -> None:
        pool = internal_state.get("kv_pool", {})
        total = max(int(pool.get("total", 0)), 1)
        used = total - int(pool.get("available", 0)) - int(pool.get("evictable", 0))
        self.num_running.set(internal_state.get("num_running_reqs", 0))
        self.num_queue.set(internal_state.get("num_waiting_reqs", 0))
        self.cache_hit_rate.set(internal_state.get("cache_hit_rate", 0.0))
        self.num_used_tokens.set(max(used, 0))
        self.token_usage.set(max(used, 0) / total)

    def render(self) -> bytes:
        return generate_latest(self.registry)
