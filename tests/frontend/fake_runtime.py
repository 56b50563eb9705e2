"""A deterministic fake of the runtime's /generate contract, for frontend tests.

``FakeModel`` implements SGLang's native request/response shapes (list text,
``input_ids``, prefill-only, logprob triples, n>1, stop trimming, streaming
chunks with cumulative text and incremental logprobs). It is wrapped three ways:
``FakeBackend`` (in-process BaseBackend), ``FakeEngine`` (the ``sglite.Engine``
API, streaming deltas) and ``FakeHTTPServer`` (loopback HTTP for RuntimeEndpoint).
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional

from sglite.backend.base import BaseBackend
from sglite.protocol.sampling import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

# " organ" is one token, a lone space is a token: enough to exercise boundaries.
TOKEN_RE = re.compile(r" ?[A-Za-z0-9]+| |\n|[^ \nA-Za-z0-9]|<s>")
BOS = "<s>"
CANNED = " lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor"


class FakeError(Exception):
    pass


def default_responder(prompt: str, sp: dict[str, Any], index: int) -> str:
    regex = sp.get("regex")
    if regex == REGEX_INT:
        return "42"
    if regex == REGEX_FLOAT:
        return "3.5"
    if regex == REGEX_BOOL:
        return "True"
    if regex == REGEX_STR:
        return '"hello"'
    if sp.get("json_schema"):
        return '{"name": "sglite"}'
    return CANNED if index == 0 else f" sample{index}" + CANNED


def default_logprob(prev: list[str], tok: str) -> float:
    return -0.5 - 0.1 * len(tok.strip())


class FakeModel:
    """Deterministic "model": regex tokenizer, pluggable logprobs and responses."""

    def __init__(self, chat_template: Optional[str] = None, add_bos: bool = True,
                 responder: Callable[[str, dict, int], str] = default_responder,
                 logprob_fn: Callable[[list[str], str], float] = default_logprob,
                 image_support: bool = False) -> None:
        self.add_bos = add_bos
        self.responder = responder
        self.logprob_fn = logprob_fn
        self.fail_on: Optional[Callable[[dict], Optional[str]]] = None
        self.requests: list[dict[str, Any]] = []
        self.vocab: dict[str, int] = {BOS: 1}
        self.inv: dict[int, str] = {1: BOS}
        self.lock = threading.Lock()
        self.flushes = 0
        self.stream_delay = 0.0  # seconds between streamed chunks
        self.model_info = {
            "model_path": "fake/model", "tokenizer_path": "fake/model", "is_generation": True,
            "chat_template": chat_template, "bos_token": BOS if add_bos else None,
            "eos_token": "</s>", "max_context_length": 4096,
        }
        if image_support:
            self.model_info["has_image_understanding"] = True
            self.model_info["image_token"] = "<image>"

    # -- tokenizer ----------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        toks = TOKEN_RE.findall(text)
        assert "".join(toks) == text, f"fake tokenizer cannot round-trip {text!r}"
        with self.lock:
            for t in toks:
                if t not in self.vocab:
                    self.vocab[t] = len(self.vocab) + 1
                    self.inv[self.vocab[t]] = t
        return ([1] if self.add_bos else []) + [self.vocab[t] for t in toks]

    # -- one request --------------------------------------------------------
    def _one(self, text: Optional[str], ids: Optional[list[int]], payload: dict, index: int
             ) -> tuple[list[str], dict[str, Any], list[int], list[str]]:
        sp = payload.get("sampling_params") or {}
        if ids is None:
            if not text:
                raise FakeError("the prompt is empty")
            ids = self.tokenize(text)
        prompt = [self.inv[i] for i in ids]
        prompt_text = "".join(t for t in prompt if t != BOS)
        out_tokens: list[str] = []
        finish: dict[str, Any] = {"type": "length", "length": 0}
        max_new = sp.get("max_new_tokens", 128)
        if max_new:
            full = self.responder(prompt_text, sp, index)
            stops = sp.get("stop") or []
            stops = [stops] if isinstance(stops, str) else stops
            cut = min([full.find(s) for s in stops if s and s in full] or [len(full)])
            matched = full[cut:] if cut < len(full) else None
            toks = TOKEN_RE.findall(full[:cut])
            if len(toks) > max_new:
                toks, finish = toks[:max_new], {"type": "length", "length": max_new}
            elif matched is not None:
                finish = {"type": "stop", "matched": next(s for s in stops if full[cut:].startswith(s))}
            else:
                finish = {"type": "stop", "matched": 2}
            out_tokens = toks
            self.tokenize("".join(toks))  # register ids
        meta: dict[str, Any] = {
            "id": f"req{len(self.requests)}-{index}", "finish_reason": finish,
            "prompt_tokens": len(ids), "completion_tokens": len(out_tokens), "cached_tokens": 0,
        }
        if payload.get("return_logprob"):
            with_text = bool(payload.get("return_text_in_logprobs"))
            start = payload.get("logprob_start_len", -1)
            start = len(ids) if start is None or start < 0 else start
            entries = []
            for pos in range(start, len(ids)):
                lp = None if pos == 0 else self.logprob_fn(prompt[:pos], prompt[pos])
                entries.append([lp, ids[pos], prompt[pos] if with_text else None])
            meta["input_token_logprobs"] = entries
            ctx = list(prompt)
            out_lps = []
            for t in out_tokens:
                out_lps.append([self.logprob_fn(ctx, t), self.vocab[t], t if with_text else None])
                ctx.append(t)
            meta["output_token_logprobs"] = out_lps
            meta["output_token_logprobs_length"] = len(out_lps)
        return out_tokens, meta, ids, prompt

    def handle(self, payload: dict[str, Any]) -> Any:
        """Answer a non-streaming /generate body (dict or list, like SGLang)."""
        self.requests.append(json.loads(json.dumps(payload)))
        if self.fail_on is not None:
            msg = self.fail_on(payload)
            if msg:
                raise FakeError(msg)
        text, ids = payload.get("text"), payload.get("input_ids")
        n = (payload.get("sampling_params") or {}).get("n") or 1
        batch = isinstance(text, list) or (ids is not None and ids and isinstance(ids[0], list))
        items = (text if text is not None else ids) if batch else [text if text is not None else ids]
        out = []
        for item in items:
            for k in range(n):
                toks, meta, _, _ = self._one(item if text is not None else None,
                                             item if text is None else None, payload, k)
                out.append({"text": "".join(toks), "meta_info": meta})
        return out if batch or n > 1 else out[0]

    def stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Streaming chunks: cumulative text, incremental output logprobs."""
        full = self.handle(dict(payload, stream=False))
        self.requests[-1]["stream"] = True  # record what the client actually sent
        meta = full["meta_info"]
        toks = TOKEN_RE.findall(full["text"])
        lps = meta.get("output_token_logprobs")
        for i in range(len(toks)):
            if self.stream_delay:
                time.sleep(self.stream_delay)
            m = dict(meta, completion_tokens=i + 1, finish_reason=None if i + 1 < len(toks) else meta["finish_reason"])
            if lps is not None:
                m["output_token_logprobs"] = lps[i:i + 1]
                m["output_token_logprobs_length"] = i + 1
            yield {"text": "".join(toks[:i + 1]), "meta_info": m}


class FakeBackend(BaseBackend):
    """BaseBackend whose transport is a FakeModel in the same process."""

    def __init__(self, model: Optional[FakeModel] = None, **kwargs: Any) -> None:
        super().__init__()
        self.model = model or FakeModel(**kwargs)

    def _fetch_model_info(self) -> dict[str, Any]:
        return self.model.model_info

    def _generate_raw(self, payload: dict[str, Any]) -> Any:
        try:
            return self.model.handle(payload)
        except FakeError as e:
            raise RuntimeError(str(e)) from None

    def _generate_raw_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            yield from self.model.stream(payload)
        except FakeError as e:
            raise RuntimeError(str(e)) from None

    def flush_cache(self) -> bool:
        self.model.flushes += 1
        return True

    def get_server_info(self) -> dict[str, Any]:
        return {"version": "fake"}


class FakeEngine:
    """The in-process ``sglite.Engine`` API over a FakeModel (streams DELTAS)."""

    def __init__(self, model: Optional[FakeModel] = None) -> None:
        self.model = model or FakeModel()
        self.calls: list[dict[str, Any]] = []

    def generate(self, prompt=None, sampling_params=None, input_ids=None, return_logprob=False,
                 logprob_start_len=None, top_logprobs_num=None, stream=False):
        self.calls.append({"prompt": prompt, "input_ids": input_ids, "stream": stream})
        payload = {"sampling_params": sampling_params or {}, "return_logprob": return_logprob,
                   "return_text_in_logprobs": True}
        payload["text" if input_ids is None else "input_ids"] = prompt if input_ids is None else input_ids
        if logprob_start_len is not None:
            payload["logprob_start_len"] = logprob_start_len
        if not stream:
            return self.model.handle(payload)

        def deltas():
            prev = ""
            for chunk in self.model.stream(payload):
                yield dict(chunk, text=chunk["text"][len(prev):])
                prev = chunk["text"]

        return deltas()

    def get_model_info(self) -> dict[str, Any]:
        return self.model.model_info

    def flush_cache(self) -> None:
        self.model.flushes += 1

    def get_server_info(self) -> dict[str, Any]:
        return {"version": "fake-engine"}


class FakeHTTPServer:
    """A loopback HTTP server speaking the native contract over a FakeModel."""

    def __init__(self, model: Optional[FakeModel] = None, legacy_server_info: bool = False) -> None:
        self.model = model or FakeModel()
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _json(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                outer.headers.append(dict(self.headers))
                if self.path == "/get_model_info":
                    self._json(200, outer.model.model_info)
                elif self.path == "/server_info" and not legacy_server_info:
                    self._json(200, {"version": "fake", "path": "/server_info"})
                elif self.path == "/get_server_info":
                    self._json(200, {"version": "fake", "path": "/get_server_info"})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                outer.headers.append(dict(self.headers))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)) or 0)
                if self.path == "/flush_cache":
                    outer.model.flushes += 1
                    self._json(200, "Cache flushed.")
                    return
                if self.path != "/generate":
                    self._json(404, {"error": {"message": "not found"}})
                    return
                payload = json.loads(body)
                try:
                    if not payload.get("stream"):
                        self._json(200, outer.model.handle(payload))
                        return
                    chunks = list(outer.model.stream(payload))
                except FakeError as e:
                    self._json(400, {"error": {"message": str(e)}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for c in chunks:
                    self.wfile.write(f"data: {json.dumps(c)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
