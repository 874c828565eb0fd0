"""``train``'s options for frozen pretrained encoders, kept out of ``cli.py`` (one line there: the decorator).

``@frozen_options`` adds ``--encoders``, ``--task``, ``--embedding-size`` and ``--head-epochs`` to the
``train`` command. With ``--encoders`` the command trains a fusion head on that encoders directory
(``frozen.py``) using train's own ``OUT``, ``--fusion``, ``--data``, ``--train-seconds``, ``--seed``,
``--workers`` and ``--cache``; without it, train runs as before and the new options are refused.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from fusionstream.consumers.cli_errors import one_of, usage_error


def fusion_heads() -> tuple[str, ...]:
    """What ``train --fusion`` takes: every head, or ``best`` (train all, keep the best on validation)."""
    from fusionstream.engines.spec import FUSION_HEADS

    return (*FUSION_HEADS, "best")


#: ``train --fusion``'s check, a usage error naming the choices.
check_fusion = one_of(fusion_heads)


def tasks() -> tuple[str, ...]:
    """What ``train --task`` takes (model-format.md's ``task.kind``)."""
    from fusionstream.engines.manifest import TASKS

    return TASKS


#: ``frozen_heads.HEAD_EPOCHS``, not imported: ``cli.py`` imports this module, and ``--help`` stays light.
HEAD_EPOCHS = 40

_EXTRA = {
    "encoders": (Annotated[Optional[Path], typer.Option("--encoders", exists=True, file_okay=False, help="Train only a fusion head, on the frozen encoders of this encoders directory (`fusionstream model import`); OUT becomes a complete format-2 model (docs/model-format.md).")], None),  # noqa: E501, UP045
    "task": (Annotated[str, typer.Option("--task", callback=one_of(tasks), help="With --encoders: single_label (softmax), multi_label (per-class sigmoid, thresholds chosen on validation) or embedding (the fused vector).")], "single_label"),  # noqa: E501
    "embedding_size": (Annotated[Optional[int], typer.Option("--embedding-size", min=1, help="With --task embedding: the fused vector's size (default 128).")], None),  # noqa: E501, UP045
    "head_epochs": (Annotated[int, typer.Option("--head-epochs", min=1, help="With --encoders: epochs of fusion-head training on the cached embeddings.")], HEAD_EPOCHS),  # noqa: E501
}

#: train's options that have no meaning for a head on frozen encoders.
_ENCODER_TRAINING = {"epochs": "--epochs", "compare": "--compare", "init": "--init", "augment": "--no-augment"}


def frozen_options(command: Callable[..., None]) -> Callable[..., None]:
    """Decorate ``train``: add the options above and dispatch to ``frozen_train_command`` with ``--encoders``."""
    # Typer reads the signature: give it the command's (annotations evaluated in cli.py) plus ours.
    signature = inspect.signature(command, eval_str=True)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
             for name, (annotation, default) in _EXTRA.items()]
    defaults = {name: p.default for name, p in signature.parameters.items()}

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        ours = {name: kwargs.pop(name) for name in _EXTRA}
        if ours["encoders"] is None:
            given = [f"--{n.replace('_', '-')}" for n, (_, d) in _EXTRA.items() if ours[n] != d]
            if given:
                usage_error(f"{', '.join(given)}: only with --encoders DIR (a fusion head on frozen encoders)")
            return command(**kwargs)
        _run_frozen(kwargs, ours, defaults)
        return None

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])  # type: ignore[attr-defined]
    return wrapper


def _run_frozen(train: dict[str, Any], ours: dict[str, Any], defaults: dict[str, Any]) -> None:
    from fusionstream.consumers.cli_errors import TRAINING_INTERRUPTED, one_line_errors
    from fusionstream.consumers.training.frozen import DEFAULT_EMBEDDING_SIZE, FrozenOptions, frozen_train_command
    from fusionstream.engines.errors import EngineError
    from fusionstream.stream.errors import FusionStreamError

    unused = [flag for name, flag in _ENCODER_TRAINING.items() if train.get(name) != defaults.get(name)]
    if unused:
        usage_error(f"{', '.join(unused)}: not with --encoders (the encoders stay frozen; only a head is trained)")
    if ours["embedding_size"] is not None and ours["task"] != "embedding":
        usage_error("--embedding-size goes with --task embedding")
    options = FrozenOptions(
        out=train["out"], encoders=ours["encoders"], fusion=train["fusion"], task=ours["task"],
        embedding_size=ours["embedding_size"] or DEFAULT_EMBEDDING_SIZE, data=train["data"],
        train_seconds=train["train_seconds"], head_epochs=ours["head_epochs"], seed=train["seed"],
        workers=train["workers"], cache=train["cache"], version=train["version"],
    )
    # the encoders directory, --data's clips
    with one_line_errors(FusionStreamError, EngineError, interrupted=TRAINING_INTERRUPTED.format(out=train["out"])):
        frozen_train_command(options)


__all__ = ["check_fusion", "frozen_options", "fusion_heads", "tasks"]
