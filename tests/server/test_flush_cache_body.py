"""``/flush_cache`` reads its optional body: ``empty_cache`` is honoured, and a wrong type is a 400."""

from __future__ import annotations

import httpx


def test_empty_cache_body_is_accepted_and_strict(server, wait_clean):
    wait_clean(server.url)
    for body in ({"empty_cache": True}, {"empty_cache": False}, {}):
        r = httpx.post(server.url + "/flush_cache", json=body)
        assert r.status_code == 200, (body, r.text)
    assert wait_clean(server.url)["kv_pool"]["evictable"] == 0
    for bad in ("yes", 1, None):
        r = httpx.post(server.url + "/flush_cache", json={"empty_cache": bad})
        if bad is None:  # JSON null is the documented "not set"
            assert r.status_code == 200, r.text
        else:
            assert r.status_code == 400 and "empty_cache" in r.text, (bad, r.text)
