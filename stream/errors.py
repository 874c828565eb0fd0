"""Errors of the ``stream`` package.

One root (:class:`FusionStreamError`) for the whole product, and :class:`BadRecord`
for input that can never be processed. The error says what the service does with
it (``retriable``); callers do not guess from the message.
"""

from __future__ import annotations


class FusionStreamError(Exception):
    """Root of every error fusionstream raises on purpose."""

    #: Whether trying the same input again could succeed.
    retriable: bool = False


#: Every reason a record is dead-lettered for (``BadRecord.reason``, the ``fs.reason`` header; the table in
#: docs/wire-format.md#errors): the service's metrics start each one's series at zero, so that a rate or an
#: alert on it works before the first such record.
DEAD_LETTER_REASONS: tuple[str, ...] = (
    "truncated", "trailing-bytes", "bad-magic", "unsupported-version", "unknown-modality", "unknown-encoding",
    "encoding-mismatch", "t_end-before-t_start", "bad-time", "too-long", "bad-stream-id", "bad-meta", "bad-size",
    "bad-sample-rate", "bad-channels", "bad-pcm-size", "sample-rate-mismatch", "bad-pcm", "bad-utf8",
    "bad-progress", "key-mismatch", "bad-jpeg", "late", "future",
)


class BadRecord(FusionStreamError):
    """A record that cannot be decoded or placed in a window.

    ``reason`` is a short machine-readable code (``unsupported-version``,
    ``bad-jpeg``, ``late`` ...) written into the dead-letter record's headers;
    ``detail`` is the human sentence for logs.
    """

    retriable = False

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail or reason
        super().__init__(f"{reason}: {self.detail}" if detail else reason)

    def __reduce__(self) -> tuple[type[BadRecord], tuple[str, str]]:
        # Keeps the reason when the error crosses a process boundary.
        return (type(self), (self.reason, self.detail))
