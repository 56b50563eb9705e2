"""More hostile requests, found by hammering a hand-started server: each one used to stall,
crash or silently ignore something; now each is refused with a 400 naming it (or completes),
the server keeps serving others, and the KV pool is whole afterwards."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from reliability_utils import assert_server_well

from sglite_runtime.constrained.xgrammar_backend import check_ebnf

# A rule with no finite derivation: xgrammar's find_jump_forward_string looped forever on
# these inside the scheduler (every other request stalled until the watchdog killed it).
ENDLESS_EBNF = [
    ('root ::= "a" root', "'root' can never end"),
    ('root ::= x\nx ::= root', "can never end"),
    ('root ::= "b" | "c" x\nx ::= "a" x', "'x' can never end"),  # dead only after "c"
    ('root ::= x{2,3}\nx ::= "a" x', "can never end"),
    ('root ::= [^\\x00-\\U0010FFFF]', "can never end"),  # an empty class: nothing is allowed
    ('root ::= [^a-z\\x00-\\x60\\x7b-\\U0010FFFF]', "can never end"),
]
FINE_EBNF = ['root ::= "(" root ")" | ""', 'root ::= root "a" | "b"', 'root ::= x "a"\nx ::= x | ""',
             'root ::= ([a-z]+ | "(" root ")")* "x"? [^a]{2,3}', 'root ::= x{0,3} "y"\nx ::= "a" | "b" x',
             'root ::= [^a-z\\x00-\\x5f\\x7b-\\U0010FFFF]', 'root ::= "b" | [^\\x00-\\U0010FFFF]*']


@pytest.mark.parametrize("spec,needle", ENDLESS_EBNF)
def test_endless_ebnf_refused(spec, needle):
    with pytest.raises(ValueError, match=needle):
        check_ebnf(spec)


@pytest.mark.parametrize("spec", FINE_EBNF)
def test_finite_ebnf_accepted(spec):
    check_ebnf(spec)


def _post(url: str, path: str, body: dict, timeout: float = 30) -> httpx.Response:
    return httpx.post(url + path, content=json.dumps(body), timeout=timeout,
                      headers={"content-type": "application/json"})


def test_endless_ebnf_is_400_and_never_stalls(rserver):
    url = rserver.url
    # Another request keeps being served meanwhile (a stalled scheduler would time it out).
    side: list[int] = []

    def other() -> None:
        side.append(_post(url, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}}).status_code)

    t = threading.Thread(target=other)
    t.start()
    for path, body in [
        ("/generate", {"text": "hi", "sampling_params": {"ebnf": 'root ::= "a" root', "max_new_tokens": 8}}),
        ("/v1/completions", {"prompt": "hi", "ebnf": 'root ::= "b" | "c" x\nx ::= "a" x', "max_tokens": 8}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                                  "ebnf": 'root ::= x\nx ::= root'}),
    ]:
        t0 = time.monotonic()
        r = _post(url, path, body)
        assert r.status_code == 400 and "can never end" in r.json()["error"]["message"], (path, r.text[:300])
        assert time.monotonic() - t0 < 10
    t.join(30)
    assert side == [200]
    assert_server_well(url)


def test_openai_fields_are_honoured_or_refused(rserver):
    """Fields the /v1 routes used to drop silently (each changes what the client gets)."""
    url = rserver.url
    # [true] was read as token id 1 by the lax pydantic model.
    r = _post(url, "/v1/completions", {"prompt": [True], "max_tokens": 2})
    assert r.status_code == 400, r.text[:300]
    # Completions have no tool calling: refused by name instead of ignored.
    r = _post(url, "/v1/completions", {"prompt": "hi", "max_tokens": 2, "tools": [{"type": "function"}]})
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"], r.text[:300]
    # response_format on /v1/completions (vLLM's field) constrains the output like on chat.
    r = _post(url, "/v1/completions", {"prompt": "hi", "max_tokens": 40, "temperature": 1.0, "seed": 3,
                                       "response_format": {"type": "json_object"}})
    assert r.status_code == 200, r.text[:300]
    assert isinstance(json.loads(r.json()["choices"][0]["text"]), dict), r.text[:300]
    # stop_regex (SGLang's field) reaches the sampler on both routes: validated, then applied.
    for path, body in [("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})]:
        r = _post(url, path, body | {"max_tokens": 8, "stop_regex": "("})
        assert r.status_code == 400 and "stop_regex" in r.json()["error"]["message"], (path, r.text[:300])
        r = _post(url, path, body | {"max_tokens": 8, "stop_regex": "[\\s\\S]", "ignore_eos": True})
        assert r.status_code == 200, r.text[:300]
        assert r.json()["choices"][0]["finish_reason"] == "stop" and r.json()["usage"]["completion_tokens"] == 1, r.text
    assert_server_well(url)


def test_top_logprobs_with_jump_forward_keeps_the_server_alive(rserver):
    """Jump-forward tokens (a regex's forced literal) appended their top logprobs one list too
    deep; the detokenizer could not decode the message and died, taking the server down."""
    url = rserver.url
    r = _post(url, "/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": 2, "sampling_params": {
        "max_new_tokens": 40, "regex": "(yes|no), the quick brown fox jumps over the lazy dog"}}, timeout=60)
    assert r.status_code == 200, r.text[:300]
    meta = r.json()["meta_info"]
    tops = meta["output_top_logprobs"]
    assert len(tops) == len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    for pos in tops:  # each position: a list of (logprob, token id, text) triples
        assert pos and all(len(entry) == 3 and isinstance(entry[1], int) for entry in pos), pos
    assert r.json()["text"].endswith("the quick brown fox jumps over the lazy dog")
    assert_server_well(url)


def test_native_bodies_are_strict(rserver):
    """/run_program read ``"stream": "yes"`` as true and dropped unknown fields (a typo such as
    ``sampling_param`` changed nothing, silently); /detokenize read ``[true]`` as token 1."""
    url = rserver.url
    graph = {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": 0, "text": "hi"}]}]}
    for body, needle in [({"graph": graph, "stream": "yes"}, "stream must be a boolean"),
                         ({"graph": graph, "sampling_param": {"temperature": 0}}, "'sampling_param'")]:
        r = _post(url, "/run_program", body)
        assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text[:300]
    assert _post(url, "/run_program", {"graph": graph, "stream": False}).status_code == 200
    assert _post(url, "/detokenize", {"tokens": [True]}).status_code == 400
    assert _post(url, "/detokenize", {"tokens": [1]}).status_code == 200
    assert_server_well(url)
