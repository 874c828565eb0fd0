"""Errors of the prediction subscribers."""

from __future__ import annotations

from fusionstream.stream.errors import FusionStreamError


class BadPrediction(FusionStreamError):
    """A record on the predictions topic that is not a prediction (not JSON, a field missing or mistyped).

    ``reason`` is short and machine-readable (``not-json``, ``missing-field``, ``bad-field``);
    ``where`` names the record (``topic[partition]@offset``) when known.
    """

    def __init__(self, reason: str, detail: str, where: str = "") -> None:
        self.reason = reason
        self.detail = detail
        self.where = where
        super().__init__(f"{where + ': ' if where else ''}{reason}: {detail}")


__all__ = ["BadPrediction"]
