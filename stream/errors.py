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
