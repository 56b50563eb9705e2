"""The finish reason is one typed tagged union on the wire, and its JSON form is SGLang's."""

from __future__ import annotations

import json

import msgspec
import pytest

from sglite_runtime.managers.io_struct import (
    BatchStrOut,
    BatchTokenIDOut,
    FinishAbort,
    FinishLength,
    FinishStop,
    decode,
    encode,
    finish_reason_json,
)
from sglite_runtime.sampling.stop import match_stop_text, trim_stop

# (reason, the exact JSON clients see in meta_info.finish_reason), as SGLang writes it.
SHAPES = [
    (FinishStop(matched=None), '{"type":"stop","matched":null}'),
    (FinishStop(matched=2), '{"type":"stop","matched":2}'),
    (FinishStop(matched="</s>"), '{"type":"stop","matched":"</s>"}'),
    (FinishStop(matched=r"\d+", regex=True), '{"type":"stop","matched":"\\\\d+","regex":true}'),
    (FinishLength(length=7), '{"type":"length","length":7}'),
    (FinishAbort("Abort"), '{"type":"abort","message":"Abort"}'),
    (FinishAbort("bad", status_code=400), '{"type":"abort","message":"bad","status_code":400}'),
]


@pytest.mark.parametrize("reason,wire", SHAPES)
def test_json_form_is_sglangs(reason, wire):
    assert json.dumps(finish_reason_json(reason), separators=(",", ":")) == wire
    assert finish_reason_json(None) is None


def _token_out(reasons):
    n = len(reasons)
    return BatchTokenIDOut([str(i) for i in range(n)], [[1]] * n, list(reasons), [1] * n, [1] * n, [0] * n,
                           [True] * n, [False] * n, [None] * n, [None] * n, [None] * n, [None] * n)


def test_round_trips_typed_through_the_wire():
    reasons = [r for r, _ in SHAPES] + [None]
    back = decode(encode(_token_out(reasons)))
    assert isinstance(back, BatchTokenIDOut) and back.finished_reasons == reasons
    assert [type(r) for r in back.finished_reasons] == [type(r) for r in reasons]
    out = BatchStrOut(["a"], ["t"], [[1]], [FinishLength(length=1)], [1], [1], [0], [None], [None], [None], [None])
    assert decode(encode(out)) == out


@pytest.mark.parametrize("bad", [
    {"type": "finished"},  # an unknown kind
    {"type": "length"},  # a length without its length
    {"type": "length", "length": "3"},  # wrongly typed
    {"type": "abort", "status_code": 500},  # an abort without its message
])
def test_a_malformed_reason_is_refused_when_decoding(bad):
    msg = msgspec.to_builtins(_token_out([None]))
    msg["finished_reasons"] = [bad]
    with pytest.raises(msgspec.ValidationError, match="finished_reasons"):
        decode(msgspec.msgpack.encode(msg))


class _SP:
    def __init__(self, stop):
        self.stop, self.stop_str_max_len, self.stop_regex, self.skip_special_tokens = stop, 3, [r"\d\d"], True


def test_stop_matching_and_trimming_use_the_typed_reason():
    chars = list("ab END 42")

    def dec(ids, _skip):
        return "".join(chars[i] for i in ids)

    assert match_stop_text(_SP(["END"]), list(range(3)), dec) is None
    assert match_stop_text(_SP(["END"]), list(range(6)), dec) == FinishStop(matched="END")
    assert match_stop_text(_SP([]), list(range(9)), dec) == FinishStop(matched=r"\d\d", regex=True)
    assert trim_stop("ab END 42", FinishStop(matched="END")) == "ab "
    assert trim_stop("ab END 42", FinishStop(matched=r"\d\d", regex=True)) == "ab END "
    assert trim_stop("ab END 42", FinishStop(matched=7)) == "ab END 42"  # a token id: trimmed by ids


def test_metrics_count_aborts_from_the_typed_reason():
    from sglite_runtime.entrypoints.metrics import ServerMetrics
    from sglite_runtime.managers.req_state import ReqState

    m = ServerMetrics("m")
    for reason in (FinishStop(matched=None), FinishLength(length=1), FinishAbort("gone"), FinishAbort("x", 500)):
        m.on_finish(ReqState(finish_reason=reason), 0.0)
    assert m.num_requests._value.get() == 4 and m.num_aborted._value.get() == 2


def test_abort_reason_is_one_rule_for_every_abort_path():
    # Decode and jump-forward both end an aborted request through abort_reason: a recorded error
    # wins, else the abort's message, and an abort without one still says "Abort" (never "").
    from types import SimpleNamespace

    from sglite_runtime.managers.scheduler_output import abort_reason, internal_error

    err = internal_error(RuntimeError("boom"))
    assert abort_reason(SimpleNamespace(error_reason=err, to_abort_message="x")) is err
    assert abort_reason(SimpleNamespace(error_reason=None, to_abort_message="client left")) == FinishAbort("client left")
    assert abort_reason(SimpleNamespace(error_reason=None, to_abort_message="")) == FinishAbort("Abort")
