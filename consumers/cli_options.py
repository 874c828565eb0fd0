"""Options and error handling shared by the ``fusionstream`` commands that live in modules of their own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from fusionstream.consumers.cli_errors import one_line_errors

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="TOML settings file (lowest precedence after defaults).")]  # noqa: UP045
ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Model directory (default: the model shipped in the package).")]  # noqa: UP045
BackendOpt = Annotated[Optional[str], typer.Option("--backend", help="onnxruntime (CPU default), torch, or tensorrt.")]  # noqa: UP045
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on the last line.")]


@contextmanager
def engine_errors() -> Iterator[None]:
    """An engine error (no CUDA, no TensorRT, a bad model directory) as one line and exit status 1,
    not a traceback: it is the user's setup, not a bug."""
    from fusionstream.engines.errors import EngineError

    with one_line_errors(EngineError):
        yield


__all__ = ["BackendOpt", "ConfigOpt", "JsonOpt", "ModelOpt", "engine_errors"]
