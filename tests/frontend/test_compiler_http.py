"""``POST /run_program`` over FastAPI's test client, the executor answered by the fake runtime."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fake_runtime import FakeModel
from test_compiler import CHATML, FakeTM, few_shot, sot

from sglite_runtime.entrypoints.program_api import program_router


@pytest.fixture
def client():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.state.sg = SimpleNamespace(tm=FakeTM(FakeModel(chat_template=CHATML)))
    app.include_router(program_router)
    with TestClient(app) as c:
        yield c


def _events(resp) -> list[dict]:
    out = []
    for line in resp.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


def test_run_program_collected(client):
    graph = few_shot.compile(question="Japan?").graph.to_dict()
    resp = client.post("/run_program", json={"graph": graph, "sampling_params": {"temperature": 0}})
    assert resp.status_code == 200
    events = resp.json()["events"]
    assert [e["type"] for e in events] == ["var", "done"]
    assert events[0]["name"] == "answer" and events[1]["texts"][0].endswith(events[0]["value"])


def test_run_program_streams_sse(client):
    graph = sot.compile(k=2).graph.to_dict()
    resp = client.post("/run_program", json={"graph": graph, "stream": True})
    assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")
    events = _events(resp)
    assert events[-1]["type"] == "done"
    root = "".join(e["delta"] for e in events if e["type"] == "text" and e["stream"] == 0)
    assert root == events[-1]["texts"][0]
    assert {e["stream"] for e in events if e["type"] == "var" and e["name"] == "tip"} == {0, 1, 2}


def test_run_program_batch(client):
    graphs = [few_shot.compile(question=q).graph.to_dict() for q in ("A?", "B?")]
    resp = client.post("/run_program", json={"graphs": graphs})
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert len(results) == 2 and all(r["events"][-1]["type"] == "done" for r in results)
    assert "Q: B?" in results[1]["events"][-1]["texts"][0]


@pytest.mark.parametrize("body", [
    {"graph": {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "shell", "id": 0}]}]}},
    {"graph": {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": True, "text": "a"}]}]}},
    {"graph": {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": 0, "text": "a", "x": 1}]}]}},
    {"graph": {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": 2**70, "text": "a"}]}]}},
    {"graph": {"version": 7}},
    {"graphs": []},
    {"graph": {}, "graphs": []},
    {"nothing": 1},
    {"graph": {"version": 1, "streams": [{"id": 0, "nodes": []}]}, "sampling_params": {"bogus": 1}},
])
def test_malformed_requests_are_400(client, body):
    resp = client.post("/run_program", json=body)
    assert resp.status_code == 400
    assert resp.json()["error"]["message"]


def test_a_bad_node_field_is_named_in_the_400(client):
    graph = {"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": 0, "text": "a"},
                                                            {"op": "gen", "id": "1"}]}]}
    resp = client.post("/run_program", json={"graph": graph})
    assert resp.status_code == 400
    assert "`$.streams[0].nodes[1].id`" in resp.json()["error"]["message"]


def test_non_json_body_is_400(client):
    resp = client.post("/run_program", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
