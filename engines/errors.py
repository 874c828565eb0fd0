"""Errors of the ``engines`` package.

One root (:class:`EngineError`) so a caller can catch everything this package raises on
purpose, and a few subclasses that say *whose* fault it is: a bad model directory, a
runtime that is not installed on this machine, or a batch that does not fit the model.
Like ``stream``'s errors, each class says whether retrying the same call could succeed;
``engines`` does not import ``stream``, so the two roots are separate classes.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line for a log or an error (ONNX Runtime's run to hundreds of
    characters and several lines): its first line, cut at ``limit``; its type's name when it has none."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


class EngineError(Exception):
    """Root of every error ``engines`` raises on purpose."""

    #: Whether trying the same call again could succeed (none of ours: inputs and files do not heal).
    retriable: bool = False


class ModelDirError(EngineError):
    """A model directory is missing, incomplete, or its ``model.json`` is invalid."""


class BackendUnavailable(EngineError):
    """A backend's runtime (TensorRT, CUDA, ...) is not usable on this machine."""


class InputError(EngineError, ValueError):
    """A batch (or a window's arrays) has the wrong shape, dtype or values for the model.

    Also a ``ValueError``, so generic input-checking code that catches that still works.
    """
