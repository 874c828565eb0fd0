"""One prediction as a typed record, and the parser that checks a prediction's JSON value against the schema
the service writes (docs/predictions.md)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from fusionstream.consumers.subscribers.errors import BadPrediction

#: The keys of a prediction's JSON value (consumers/pipeline/prediction.py writes them).
FIELDS = (
    "window_id", "stream_id", "t_start_ns", "t_end_ns", "label", "score", "scores", "modalities", "coverage",
    "model_version", "closed_by", "latency_ms", "batch_size",
)  # fmt: skip
#: Keys only some predictions have: ``labels`` (multi-label), ``embedding`` (embedding models), ``revision``
#: and ``final`` (services since revisions; absent means 0 and true).
OPTIONAL_FIELDS = ("labels", "embedding", "revision", "final")

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return _EMPTY


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One window's prediction as read from the predictions topic, with where it was read from.

    The fields are the JSON value's (docs/predictions.md); keys this version does not know
    are kept in ``extra``. ``topic``, ``partition``, ``offset`` and ``timestamp_ms`` (the
    Kafka record's) are -1 / "" for a record parsed outside Kafka.
    """

    window_id: str
    stream_id: str
    t_start_ns: int
    t_end_ns: int
    label: str
    score: float
    scores: Mapping[str, float] = field(default_factory=_empty)
    modalities: Mapping[str, bool] = field(default_factory=_empty)
    coverage: Mapping[str, float] = field(default_factory=_empty)
    model_version: str = ""
    closed_by: str = ""
    latency_ms: Mapping[str, float | None] = field(default_factory=_empty)
    batch_size: int = 0
    #: Multi-label models: every class at or above its threshold → its score, best first (else None).
    labels: Mapping[str, float] | None = None
    #: Embedding models: the fused vector (else None); their ``label`` is empty and ``score`` 0.
    embedding: tuple[float, ...] | None = None
    #: Predictions of this window made before this one (docs/predictions.md#revisions).
    revision: int = 0
    #: False for a provisional prediction: a final one of the same window follows.
    final: bool = True
    topic: str = ""
    partition: int = -1
    offset: int = -1
    timestamp_ms: int = -1
    extra: Mapping[str, Any] = field(default_factory=_empty, repr=False)

    @property
    def t_start(self) -> datetime:
        """The window's start as an aware UTC datetime (microsecond precision)."""
        return datetime.fromtimestamp(self.t_start_ns / 1e9, tz=UTC)

    @property
    def present(self) -> tuple[bool, bool, bool]:
        """Which of video, audio and text the window had, in that order."""
        return tuple(bool(self.modalities.get(m)) for m in ("video", "audio", "text"))  # type: ignore[return-value]

    @property
    def task(self) -> str:
        """What kind of model made it, read from its fields: ``embedding``, ``multi_label`` or ``single_label``."""
        if self.embedding is not None:
            return "embedding"
        return "multi_label" if self.labels is not None else "single_label"

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes it asserts: its ``label`` (single-label), every label at or above its threshold
        (multi-label, best first, possibly none), none for an embedding."""
        if self.embedding is not None:
            return ()
        return tuple(self.labels) if self.labels is not None else (self.label,)

    @property
    def capture_to_publish_ms(self) -> float | None:
        """Event time (the window's newest media) to publication, as the service measured it."""
        return self.latency_ms.get("capture_to_publish")

    def to_dict(self) -> dict[str, Any]:
        """The JSON value as published (unknown keys included), without the Kafka coordinates."""
        value: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        for name in ("scores", "modalities", "coverage", "latency_ms"):
            value[name] = dict(value[name])
        if self.labels is not None:
            value["labels"] = dict(self.labels)
        if self.embedding is not None:
            value["embedding"] = list(self.embedding)
        value["revision"], value["final"] = self.revision, self.final
        return value | dict(self.extra)


def parse_prediction(
    value: bytes | str | Mapping[str, Any] | None,
    *,
    topic: str = "",
    partition: int = -1,
    offset: int = -1,
    timestamp_ms: int = -1,
) -> PredictionRecord:
    """Parse and check one prediction value; :class:`BadPrediction` says what is wrong with it."""
    where = f"{topic}[{partition}]@{offset}" if topic else ""
    if isinstance(value, Mapping):
        data: Any = value
    else:
        try:
            data = json.loads(value)
        except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:  # TypeError: no value at all
            raise BadPrediction("not-json", str(exc), where) from None
    if not isinstance(data, Mapping):
        raise BadPrediction("not-json", f"a JSON {type(data).__name__}, not an object", where)

    def need(name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if name not in data:
            if default is ...:
                raise BadPrediction("missing-field", f"no {name!r}", where)
            return default
        item = data[name]
        # bool is an int to Python; a true/false where a number belongs is still a broken record.
        if not isinstance(item, kind) or (isinstance(item, bool) and bool not in _kinds(kind)):
            raise BadPrediction("bad-field", f"{name!r} is {item!r}", where)
        return item

    stream_id = need("stream_id", str)
    t_start_ns = need("t_start_ns", int)
    t_end_ns = need("t_end_ns", int)
    if t_end_ns < t_start_ns:
        raise BadPrediction("bad-field", f"t_end_ns {t_end_ns} < t_start_ns {t_start_ns}", where)
    # Only multi-label (labels) and embedding (embedding) models publish these; null counts as absent.
    labels, embedding = data.get("labels"), data.get("embedding")
    if labels is not None and not (isinstance(labels, Mapping) and all(map(_is_number, labels.values()))):
        raise BadPrediction("bad-field", f"'labels' is {labels!r}, not an object of class scores", where)
    if embedding is not None and not (isinstance(embedding, list) and all(map(_is_number, embedding))):
        raise BadPrediction("bad-field", "'embedding' is not a list of numbers", where)
    score = need("score", (int, float))
    if not _is_number(score):
        raise BadPrediction("bad-field", f"'score' is {score!r}", where)
    # Every value a client computes with or draws: a string among the scores broke the viewer's page.
    for name, valid, what in (("scores", _is_number, "numbers"), ("coverage", _is_number, "numbers"),
                              ("modalities", _is_bool, "booleans"), ("latency_ms", _is_number_or_null, "numbers")):
        mapping = need(name, Mapping, _EMPTY)
        if not all(map(valid, mapping.values())):
            raise BadPrediction("bad-field", f"{name!r} is {mapping!r}, not an object of {what}", where)
    return PredictionRecord(
        window_id=need("window_id", str, f"{stream_id}@{t_start_ns}"),
        stream_id=stream_id,
        t_start_ns=t_start_ns,
        t_end_ns=t_end_ns,
        label=str(need("label", (str, int))),
        score=float(score),
        scores=MappingProxyType(dict(need("scores", Mapping, _EMPTY))),
        modalities=MappingProxyType(dict(need("modalities", Mapping, _EMPTY))),
        coverage=MappingProxyType(dict(need("coverage", Mapping, _EMPTY))),
        model_version=str(need("model_version", (str, int), "")),
        closed_by=need("closed_by", str, ""),
        latency_ms=MappingProxyType(dict(need("latency_ms", Mapping, _EMPTY))),
        batch_size=need("batch_size", int, 0),
        labels=None if labels is None else MappingProxyType({str(k): float(v) for k, v in labels.items()}),
        embedding=None if embedding is None else tuple(float(v) for v in embedding),
        revision=need("revision", int, 0),
        final=need("final", bool, True),
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        extra=MappingProxyType({k: v for k, v in data.items() if k not in FIELDS and k not in OPTIONAL_FIELDS}),
    )


def _is_number(value: Any) -> bool:
    """A finite number: Python's json reads NaN and Infinity, which are not JSON and no score."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_number_or_null(value: Any) -> bool:
    return value is None or _is_number(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


__all__ = ["FIELDS", "OPTIONAL_FIELDS", "PredictionRecord", "parse_prediction"]
