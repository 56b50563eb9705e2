"""HTTP backend speaking SGLang's native runtime contract (frontend-spec §5)."""
from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any, Iterator, Optional, Union

from sglite.backend.base import BaseBackend
from sglite.backend.program_routing import ProgramRouting

logger = logging.getLogger(__name__)


def _raise_error(message: str, status: Any) -> None:
    """One error model on every backend: the caller's mistakes (4xx) are ``ValueError``s, as on
    ``sglite.Engine``; anything else is a ``RuntimeError``."""
    try:
        status = int(status)
    except (TypeError, ValueError):
        status = 500
    if 400 <= status < 500 and status not in (401, 403, 404, 408, 429, 499):
        raise ValueError(message)
    raise RuntimeError(message)


def _error_status(err: Any) -> Any:
    return err.get("code", 500) if isinstance(err, dict) else 500


def _error_message(resp: Any) -> str:
    """Pull ``error.message`` out of an error body, else the raw body."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text or f"HTTP {resp.status_code}"
    if isinstance(body, dict) and "error" in body:
        err = body["error"]
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return json.dumps(body)


class RuntimeEndpoint(BaseBackend):
    """A running sglite (or SGLang) server at ``base_url``.

    ``GET /get_model_info`` is called on construction so that a wrong URL fails
    at once. ``api_key`` is sent as a Bearer token on every request.
    """

    def __init__(self, base_url: str, api_key: Optional[str] = None,
                 verify: Union[None, bool, str] = None, timeout: Optional[float] = None) -> None:
        super().__init__()
        import requests  # imported here so `import sglite` stays light

        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self._session = requests.Session()
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        if verify is not None:
            self._session.verify = verify
        self._programs = ProgramRouting(self)  # /run_program here, or on a replica behind a router
        # thread id -> rids of the /generate call that thread waits on, for cancel_threads (Ctrl-C).
        self._inflight: dict[int, list[str]] = {}
        self.get_model_info()

    @property
    def url(self) -> str:
        return self.base_url

    # -- plumbing -----------------------------------------------------------
    def _request(self, method: str, path: str, base_url: Optional[str] = None, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self.timeout)
        return self._session.request(method, (base_url or self.base_url) + path, **kwargs)

    def _checked(self, resp: Any) -> Any:
        if resp.status_code != 200:
            _raise_error(_error_message(resp), resp.status_code)
        return resp

    def _fetch_model_info(self) -> dict[str, Any]:
        return self._checked(self._request("GET", "/get_model_info")).json()

    # -- transport ----------------------------------------------------------
    def _tagged(self, payload: dict[str, Any], stream: bool) -> dict[str, Any]:
        """The body with a fresh rid per prompt, remembered for this thread until the call ends,
        so that an interrupted call can be aborted on the server by exact rid."""
        batch = payload.get("text", payload.get("input_ids"))
        is_batch = isinstance(payload.get("text"), list) or (
            isinstance(batch, list) and bool(batch) and isinstance(batch[0], list))
        base = uuid.uuid4().hex
        rids = [f"{base}-{i}" for i in range(len(batch))] if is_batch and batch else [base]
        self._inflight[threading.get_ident()] = rids
        return dict(payload, stream=stream, rid=rids if is_batch else rids[0])

    def _generate_raw(self, payload: dict[str, Any]) -> Union[dict[str, Any], list[dict[str, Any]]]:
        body = self._tagged(payload, stream=False)
        try:
            return self._checked(self._request("POST", "/generate", json=body)).json()
        finally:
            self._inflight.pop(threading.get_ident(), None)

    def cancel_threads(self, thread_ids: list[int]) -> None:
        """Abort on the server the /generate calls these threads wait on (Ctrl-C while a program
        runs): the worker's blocking HTTP call cannot be interrupted, but its request can."""
        for tid in thread_ids:
            for rid in self._inflight.pop(tid, []):
                try:
                    self._request("POST", "/abort_request", json={"rid": rid}, timeout=5)
                except Exception as e:  # noqa: BLE001 - best effort: the server may be gone
                    logger.warning("could not abort request %s: %s", rid, e)

    def _generate_raw_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        body = self._tagged(payload, stream=True)
        resp = self._checked(self._request("POST", "/generate", json=body, stream=True))
        try:
            for raw in resp.iter_lines(decode_unicode=False):
                if not raw:
                    continue
                line = raw.decode("utf-8")
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if isinstance(chunk, dict) and "error" in chunk:
                    err = chunk["error"]
                    _raise_error(str(err.get("message", err)) if isinstance(err, dict) else str(err),
                                 _error_status(err))
                yield chunk
        finally:
            resp.close()
            self._inflight.pop(threading.get_ident(), None)

    # -- compiled programs ----------------------------------------------------
    def run_program(self, graph: Any, sampling_params: Optional[dict[str, Any]] = None,
                    stream: bool = False) -> Any:
        """``POST /run_program``: one graph (``{"events": [...]}``, or an event iterator
        with ``stream``) or a list of graphs (a list of results, in order)."""
        ok, why = self._programs.support()
        if not ok:
            raise RuntimeError(why)
        if isinstance(graph, list):
            return self._programs.run_batch(graph, sampling_params)
        url = self._programs.base_url_for(graph)
        body = {"graph": graph, "sampling_params": sampling_params, "stream": stream}
        if not stream:
            return self._checked(self._request("POST", "/run_program", json=body, base_url=url)).json()
        return self._program_events(body, url)

    def program_support(self) -> tuple[bool, str]:
        """Whether compiled programs can run here (directly or behind a router), and why not."""
        return self._programs.support()

    def _program_events(self, body: dict[str, Any], url: Optional[str] = None) -> Iterator[dict[str, Any]]:
        resp = self._checked(self._request("POST", "/run_program", json=body, stream=True, base_url=url))
        try:
            for raw in resp.iter_lines(decode_unicode=False):
                line = raw.decode("utf-8") if raw else ""
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if isinstance(event, dict) and "error" in event and "type" not in event:
                    err = event["error"]
                    _raise_error(str(err.get("message", err)) if isinstance(err, dict) else str(err),
                                 _error_status(err))
                yield event
        finally:
            resp.close()

    # -- server calls -------------------------------------------------------
    def flush_cache(self) -> bool:
        resp = self._request("POST", "/flush_cache")
        if resp.status_code != 200:
            logger.warning("flush_cache refused: %s", _error_message(resp))
        return resp.status_code == 200

    def get_server_info(self) -> Optional[dict[str, Any]]:
        resp = self._request("GET", "/server_info")
        if resp.status_code == 404:  # older servers only have the deprecated path
            resp = self._request("GET", "/get_server_info")
        return self._checked(resp).json()

    def shutdown(self) -> None:
        """Close the HTTP session (the server itself is not ours to stop)."""
        self._session.close()
