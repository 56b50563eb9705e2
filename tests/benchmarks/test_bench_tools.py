"""The benchmarks' own tools: the RTT proxy really delays and passes bytes intact; the extended
tokenizer of the random benchmark models is a valid BPE whose every id decodes."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from model_zoo import extended_tokenizer  # noqa: E402
from rtt_proxy import RttProxy, measured_rtt_ms  # noqa: E402

PAYLOAD = bytes(range(256)) * 400  # 100 KiB: several reads per direction


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        body = b"ok" if self.path == "/health" else PAYLOAD
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[::-1])

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def http_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.mark.parametrize("in_process", [True, False], ids=["thread", "subprocess"])
def test_rtt_proxy_delays_each_round_trip_and_keeps_bytes(http_server, in_process):
    import requests

    base = f"http://127.0.0.1:{http_server}"
    direct = measured_rtt_ms(base)
    with RttProxy("127.0.0.1", http_server, rtt_ms=40, in_process=in_process) as proxy:
        rtt = measured_rtt_ms(proxy.url)
        with requests.Session() as s:
            assert s.get(proxy.url + "/blob", timeout=10).content == PAYLOAD
            assert s.post(proxy.url + "/echo", data=PAYLOAD, timeout=10).content == PAYLOAD[::-1]
            t = time.perf_counter()
            for _ in range(3):  # keep-alive: every request on the same connection pays one RTT
                s.get(proxy.url + "/health", timeout=10)
            per_request = (time.perf_counter() - t) / 3 * 1e3
    assert 40 <= rtt < 40 + direct + 60, (rtt, direct)
    assert per_request >= 40


def test_extended_tokenizer_is_a_valid_bpe_whose_ids_all_decode():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(json.dumps(extended_tokenizer(6000, seed=0)))
    assert tok.get_vocab_size() == 6000
    assert all(tok.decode([i]) for i in range(4096, 6000)), "an added id decodes to nothing"
    for i in (4096, 5000, 5999):
        piece = tok.id_to_token(i)
        assert piece is not None and tok.token_to_id(piece) == i
    sample = "The records are static and the total is known."
    assert tok.decode(tok.encode(sample).ids) == sample
    # The same seed gives the same vocabulary (models built on two machines agree).
    assert extended_tokenizer(4200, seed=0)["model"]["vocab"] == extended_tokenizer(4200, seed=0)["model"]["vocab"]
