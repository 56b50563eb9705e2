"""Where a RuntimeEndpoint sends compiled programs: the server itself, or a replica behind
sglang-router, chosen by the router's own cache-aware placement.

The router forwards only /generate and /v1, never /run_program. So for each program the
client sends a prefill of the program's static prefix (``max_tokens=0``) THROUGH the
router: the router places it by its radix tree of prefixes (and learns it, so later
programs with that prefix go to the same replica), the replica caches it, and the reply's
``X-Sglite-Worker-Id`` header says which replica it was. The graph is then posted to that
replica's /run_program, where the prefix is already cached. A program without a static
prefix goes to the least-loaded replica (the router's /get_loads).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from sglite.lang.plan import rendered_static_prefix
from sglite.protocol.graph import decode_nodes

logger = logging.getLogger(__name__)

WORKER_ID_HEADER = "x-sglite-worker-id"  # sglite_runtime/entrypoints/program_api.py


class ProgramRouting:
    """Probes once what ``endpoint`` is ("direct", "router" or "none") and places graphs."""

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self.mode: Optional[str] = None
        self.reason = ""
        self.workers: dict[str, str] = {}  # worker id -> worker URL
        self.fallbacks = 0  # placements the router did not make (no prefix, or the prefill failed)
        self._lock = threading.Lock()

    # -- probing ------------------------------------------------------------
    def support(self) -> tuple[bool, str]:
        """``(True, "")`` when graphs can run here, else ``(False, why)``."""
        with self._lock:
            if self.mode is None:
                self._probe()
        return self.mode != "none", self.reason

    def _probe(self) -> None:
        ep = self.endpoint
        info = ep._request("GET", "/program_info")
        if info.status_code == 200:
            self.mode = "direct"
            return
        workers = ep._request("GET", "/workers")
        listed = workers.json().get("workers") if workers.status_code == 200 else None
        if isinstance(listed, list):
            self._refresh(listed)
            if self.workers:
                self.mode = "router"
                logger.info("%s is a router: compiled programs go to its replicas %s", ep.base_url,
                            sorted(self.workers.values()))
                return
            self.reason = (f"the router at {ep.base_url} does not forward /run_program and none of its "
                           f"workers answers GET /program_info (not sglite servers?)")
        else:
            self.reason = (f"the server at {ep.base_url} cannot run compiled programs (GET /program_info: "
                           f"HTTP {info.status_code}; an SGLang server or an older sglite?)")
        self.mode = "none"

    def _refresh(self, listed: Optional[list[dict[str, Any]]] = None) -> None:
        if listed is None:
            resp = self.endpoint._request("GET", "/workers")
            listed = resp.json().get("workers", []) if resp.status_code == 200 else []
        found: dict[str, str] = {}
        for w in listed:
            url = str(w.get("url", "")).rstrip("/")
            if not url or not w.get("is_healthy", True):
                continue
            try:
                r = self.endpoint._session.get(url + "/program_info", timeout=10)
            except Exception as e:  # noqa: BLE001 - an unreachable worker is just skipped
                logger.warning("worker %s is unreachable from this client: %s", url, e)
                continue
            if r.status_code == 200 and r.json().get("worker_id"):
                found[r.json()["worker_id"]] = url
        self.workers = found

    # -- placement ----------------------------------------------------------
    def base_url_for(self, graph: dict[str, Any]) -> str:
        """The URL whose /run_program should run ``graph``."""
        if self.mode != "router":
            return self.endpoint.base_url
        ep = self.endpoint
        prefix = rendered_static_prefix(decode_nodes(graph["streams"][0]["nodes"]), ep.chat_template)
        if prefix:
            resp = self._prefill(prefix)
            wid = resp.headers.get(WORKER_ID_HEADER)
            if resp.status_code == 200 and wid:
                if wid not in self.workers:
                    with self._lock:
                        self._refresh()
                if wid in self.workers:
                    return self.workers[wid]
            self.fallbacks += 1
            logger.warning("the router did not place the prefix of %s (HTTP %s: %s); using the least-loaded "
                           "replica", graph.get("name"), resp.status_code, resp.text[:200])
        return self._least_loaded()

    def _prefill(self, prefix: str) -> Any:
        # /v1/completions rather than /generate: the router adds a "model" field to /generate
        # bodies, which a strict server may refuse; both are placed by the same prefix tree.
        model = self.endpoint.get_model_info().get("served_model_name")
        if model:
            return self.endpoint._request("POST", "/v1/completions",
                                          json={"model": model, "prompt": prefix, "max_tokens": 0})
        return self.endpoint._request("POST", "/generate",
                                      json={"text": prefix, "sampling_params": {"max_new_tokens": 0}})

    def _least_loaded(self) -> str:
        urls = list(self.workers.values())
        resp = self.endpoint._request("GET", "/get_loads")
        if resp.status_code == 200:
            loads = {str(w.get("worker", "")).rstrip("/"): w.get("load", 0) for w in resp.json().get("workers", [])}
            urls.sort(key=lambda u: loads.get(u, 0))
        return urls[0]

    def run_batch(self, graphs: list[dict[str, Any]], sampling_params: Optional[dict[str, Any]]) -> list[Any]:
        """Run a batch: graphs that share a static prefix go to one replica together, one
        /run_program call per replica, all replicas at once; results in input order."""
        ep = self.endpoint

        def post(url: str, batch: list[dict[str, Any]]) -> list[Any]:
            body = {"graphs": batch, "sampling_params": sampling_params}
            return ep._checked(ep._request("POST", "/run_program", json=body, base_url=url)).json()["results"]

        if self.mode != "router":
            return post(ep.base_url, graphs)
        placed: dict[str, list[int]] = {}
        by_prefix: dict[str, str] = {}
        spread = sorted(self.workers.values())
        for i, g in enumerate(graphs):
            prefix = rendered_static_prefix(decode_nodes(g["streams"][0]["nodes"]), ep.chat_template)
            if not prefix:
                url = spread[i % len(spread)]  # nothing to be cache-aware about: spread them
            elif prefix in by_prefix:
                url = by_prefix[prefix]
            else:
                url = by_prefix[prefix] = self.base_url_for(g)
            placed.setdefault(url, []).append(i)
        results: list[Any] = [None] * len(graphs)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(placed)) as pool:
            futures = {url: pool.submit(post, url, [graphs[i] for i in idx]) for url, idx in placed.items()}
            for url, idx in placed.items():
                for i, res in zip(idx, futures[url].result()):
                    results[i] = res
        return results
