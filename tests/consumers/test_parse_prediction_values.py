"""The values inside a prediction's objects are checked too: one record with a string among its scores gave the
viewer's /api/state a 500 and cut every browser's event stream, and a NaN score (which Python's json reads and
writes, though it is not JSON) reached browsers as an event their parser refuses."""

from __future__ import annotations

import json

import pytest
from test_subscribe import make_prediction

from fusionstream.consumers.subscribers import BadPrediction, parse_prediction
from fusionstream.consumers.viewer.state import ViewerState


def _value() -> dict:
    return json.loads(make_prediction("cam", 3, 10**18).to_json(capture_to_publish_ms=12.5))


@pytest.mark.parametrize("change", [
    {"scores": {"7": "x"}},
    {"scores": {"7": float("nan")}},
    {"score": float("nan")},
    {"score": float("inf")},
    {"coverage": {"video": "full"}},
    {"modalities": {"video": 1}},
    {"latency_ms": {"queue": "fast"}},
    {"labels": {"7": float("nan")}},
])
def test_a_value_that_is_no_finite_number_or_flag_is_a_bad_field(change: dict) -> None:
    text = json.dumps(_value() | change)  # as a producer that allows NaN writes it
    with pytest.raises(BadPrediction, match="bad-field"):
        parse_prediction(text)


def test_a_null_latency_is_still_a_prediction() -> None:
    value = _value()
    value["latency_ms"]["capture_to_publish"] = None
    assert parse_prediction(json.dumps(value)).latency_ms["capture_to_publish"] is None


def test_the_viewer_skips_a_bad_value_and_keeps_serving_its_state() -> None:
    state = ViewerState()
    good, bad = _value(), _value() | {"stream_id": "evil", "scores": {"7": "x"}}
    for value in (good, bad):
        try:
            state.on_prediction(parse_prediction(json.dumps(value)), now=0.0)
        except BadPrediction as exc:
            state.ignore(exc.reason)
    assert list(state.streams) == ["cam"] and state.ignored == {"bad-field": 1}
    json.dumps(state.snapshot("cam", now=0.0), allow_nan=False)
