"""One-line errors for the ``fusionstream`` command line.

Every failure a user can cause (a usage error, an unreachable broker, a bad model
directory, a missing file) is printed as one plain line on stderr::

    fusionstream: error: <what went wrong> (see 'fusionstream produce video --help')

Plain ``sys.stderr.write``, not rich: rich wraps at the terminal's width and boxes click's
usage errors, so a long path became several lines (and a test or a script reading the
error got a fragment). :func:`run_app` runs the typer app without click's standalone mode
so that its usage errors come here too; :func:`fail` is for the commands' own errors.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
import typer.main
import typer.rich_utils
from rich.measure import Measurement
from rich.table import Table

from fusionstream.consumers.settings import Settings, SettingsFileError

PROG = "fusionstream"
#: Exit status of a usage error (click's), of a failure, and after Ctrl-C (128 + SIGINT).
EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def describe(exc: BaseException) -> str:
    """What an exception says to a user: its message (settings errors field by field), else its repr."""
    if type(exc).__name__ == "ValidationError" and hasattr(exc, "errors"):  # pydantic: one clause per field
        # A validator's own message comes as "Value error, <message>": the message is what the user needs.
        fields = [
            (f"{'.'.join(str(part) for part in error['loc'])}: " if error["loc"] else "")
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors()
        ]
        return "invalid settings: " + "; ".join(fields)
    from fusionstream.consumers.kafka.errors import explain_denial

    return explain_denial(exc) or str(exc) or repr(exc)


def print_error(message: str) -> None:
    """``fusionstream: error: MESSAGE`` as one line on stderr."""
    _write(f"{PROG}: error: {one_line(message)}")


def note(message: str) -> None:
    """``fusionstream: MESSAGE`` as one line on stderr: something the user should know, not an error."""
    _write(f"{PROG}: {one_line(message)}")


def _write(line: str) -> None:
    sys.stdout.flush()  # what a command printed before comes first
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print ``message`` as the one error line and exit with ``code``."""
    print_error(message)
    raise typer.Exit(code)


#: What Ctrl-C during a training says (``interrupted=`` of :func:`one_line_errors`, formatted with ``out``).
TRAINING_INTERRUPTED = "interrupted: {out} is as it was (a model directory is written only once complete and checked)"


@contextmanager
def one_line_errors(*errors: type[BaseException], code: int = EXIT_FAILURE,
                    interrupted: str | None = None) -> Iterator[None]:
    """Turn the expected ``errors`` (the user's setup, not bugs) into the one error line and exit ``code``;
    Ctrl-C into exit status 130 without a traceback (after the line ``interrupted``, if given). Anything else
    propagates: a bug keeps its traceback."""
    try:
        yield
    except KeyboardInterrupt:
        if interrupted:
            note(interrupted)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except errors as exc:
        fail(describe(exc), code)


def load_settings(config: Path | None = None, **flags: Any) -> Settings:
    """:meth:`Settings.load`, with an invalid value or a missing ``--config`` file as the one error line."""
    from pydantic import ValidationError

    model_dir = flags.get("model_dir")
    if model_dir is not None and not Path(model_dir).is_dir():  # the command line's path: a typo, as click's checks
        usage_error(f"model directory {model_dir} " + ("is a file" if Path(model_dir).exists() else "does not exist"))
    try:
        try:
            return Settings.load(config, **flags)
        except (FileNotFoundError, SettingsFileError) as exc:
            if config is not None and not config.is_file():  # the path given, not what the file holds
                usage_error(describe(exc))
            raise
    except (FileNotFoundError, SettingsFileError) as exc:
        fail(describe(exc))
    except ValidationError as exc:
        message = settings_error(exc, config, flags)
        if any(str(error["loc"][0]) in flags and flags[str(error["loc"][0])] is not None
               for error in exc.errors() if error["loc"]):
            usage_error(message)  # an option's value: exit status 2 and the --help pointer, as click's own
        fail(message)
    raise AssertionError("unreachable")  # pragma: no cover  (one_line_errors exits)


def usage_error(message: str) -> NoReturn:
    """Refuse the command line as click refuses a bad option: the one error line with a pointer to the
    command's ``--help`` and exit status 2 (through :func:`run_app`), for checks made after parsing."""
    import importlib

    # typer >= 0.20 vendors click as typer._click; older versions use click: the module beside BadParameter's.
    package = typer.BadParameter.__module__.rsplit(".", 1)[0]
    context = importlib.import_module(f"{package}.globals").get_current_context(silent=True)
    ancestors = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    raise ancestors["UsageError"](message, ctx=context)


def one_of(choices: Callable[[], Sequence[str]]) -> Callable[[Any], Any]:
    """A typer callback that refuses a value not among ``choices()`` as a usage error. ``choices`` is called
    only when the option is parsed, so ``--help`` imports nothing for it."""

    def check(value: Any) -> Any:
        names = choices()
        if value is not None and value not in names:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(names)}.")
        return value

    return check


def settings_error(exc: Any, config: Path | None, flags: dict[str, Any]) -> str:
    """A settings ``ValidationError`` as one line, each bad value with where it came from (an option, a
    ``FUSIONSTREAM_*`` variable or the ``--config`` file, in that precedence) and an unknown key with the
    setting it is closest to."""
    import difflib
    import tomllib

    try:
        in_file = set(tomllib.loads(config.read_text(encoding="utf-8"))) if config is not None else set()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        in_file = set()
    clauses = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, list(Settings.model_fields), n=1)
            clauses.append(f"unknown setting {name!r}" + (f" in {config}" if name in in_file else "")
                           + (f" (did you mean {close[0]}?)" if close else ""))
            continue
        field = ".".join(str(part) for part in error["loc"])
        if not field:  # a check of several settings together: its message names them (not in a
            # path it quotes), and each one set is said with its source
            named = dict.fromkeys(re.findall(r"(?<![\w/.\\-])[a-z][a-z0-9_]*(?![\w/.\\-])", message))
            given = [f"{setting} from {source}" for setting in named if setting in Settings.model_fields
                     and (source := _source(setting, flags, config, in_file))]
            clauses.append(message + (f" ({', '.join(given)})" if given else ""))
            continue
        source = _source(name, flags, config, in_file)
        clauses.append(f"{field}{f' (from {source})' if source else ''}: {message}")
    return "invalid settings: " + "; ".join(clauses)


def _source(name: str, flags: dict[str, Any], config: Path | None, in_file: set[str]) -> str | None:
    """Where setting ``name``'s value came from, in the settings' precedence; ``None`` for its default."""
    variable = f"FUSIONSTREAM_{name.upper()}"
    return ("the command line" if flags.get(name) is not None else variable if os.environ.get(variable)
            else str(config) if name in in_file else None)


#: The width rich lays out for when the output is a file or a pipe and ``COLUMNS`` is not set.
FILE_COLUMNS = 160
#: The narrowest ``--help`` is laid out for.
HELP_MIN_COLUMNS = 80


def widen_for_files() -> None:
    """Output to a file or a pipe is laid out for ``FILE_COLUMNS``, not rich's 80: a log file's lines broke
    mid-phrase, tables cut their cells and ``--help`` its environment variables' names. ``COLUMNS`` set by
    the user (or a terminal) wins. Set before any console exists: rich reads it when one is made. For the
    console script only: in a process that goes on (tests), it would stay set."""
    if "COLUMNS" not in os.environ and not sys.stdout.isatty():
        os.environ["COLUMNS"] = str(FILE_COLUMNS)


def run_app(app: typer.Typer, args: Sequence[str] | None = None) -> int:
    """Run ``app`` on ``args`` (default: the process's) and return its exit status.

    Like typer's standalone mode, except that click's errors are printed by :func:`print_error`
    with a pointer to the command's ``--help`` (exit status 2 for usage errors), and Ctrl-C is
    exit status 130 without a traceback. ``--help`` still prints and exits 0.
    """
    # typer >= 0.20 vendors click (typer._click); older versions use click itself. BadParameter
    # is public in both, and its ancestors are the classes raised for every usage error.
    ancestors = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
    click_exception: type[Exception] = ancestors["ClickException"]
    usage_error: type[Exception] = ancestors["UsageError"]
    # aiokafka logs every failed connection attempt at ERROR. Without a configured handler Python's
    # last-resort handler would print those beside our one-line error; commands that set up
    # logging (serve, view, demo, bench) still get them through the root logger.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    if shutil.get_terminal_size().columns < HELP_MIN_COLUMNS:
        # At 40 columns --help cut the options' own names (`--from…`); wrapped lines still read.
        typer.rich_utils.MAX_WIDTH = HELP_MIN_COLUMNS
    _fold_long_words()
    command = typer.main.get_command(app)
    _refuse_non_finite(command)
    try:
        result = command(args=None if args is None else list(args), prog_name=PROG, standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # The help was printed when the error was made (rich help prints as it formats it).
            help_text = exc.format_message()  # type: ignore[attr-defined]
            if help_text.strip():
                sys.stderr.write(help_text + "\n")
            return int(exc.exit_code)  # type: ignore[attr-defined]
        # typer validates some types with pydantic, whose messages start "Value error, ".
        print_error(exc.format_message().replace("Value error, ", "") + _help_hint(exc))  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except click_exception as exc:
        print_error(exc.format_message())  # type: ignore[attr-defined]
        return int(exc.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:
        print_error("aborted")
        return EXIT_FAILURE
    except KeyboardInterrupt:  # outside a command (typer maps one inside a command to exit status 130)
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        # SystemExit("why") prints its text bare: give it the prefix every other refusal has.
        if isinstance(exc.code, str):
            print_error(exc.code.removeprefix(f"{PROG}: error: "))
            return EXIT_FAILURE
        raise
    # Without standalone mode a command's typer.Exit(n) comes back as n, and a normal return as None.
    return result if isinstance(result, int) else 0


def _fold_long_words() -> None:
    """Make ``--help`` fold a word longer than its column instead of cutting it: at 80 columns it read
    ``FUSIONSTREAM_INSTA…``, ``host:port[,host:po…`` and ``--read-uncommit…`` (rich's table cells end with an
    ellipsis by default). typer builds each option's help in a private function and its options panel with
    rich's Table; where a later typer differs, help stays as it lays it out."""
    build = getattr(typer.rich_utils, "_get_parameter_help", None)
    if build is None or getattr(build, "folds", False):
        return

    def folding(**options: Any) -> Any:
        columns = build(**options)
        if isinstance(getattr(columns, "renderables", None), list):
            columns.renderables = [_Folded(item) for item in columns.renderables]
        return columns

    folding.folds = True  # type: ignore[attr-defined]
    typer.rich_utils._get_parameter_help = folding
    if getattr(typer.rich_utils, "Table", None) is Table:
        typer.rich_utils.Table = _FoldingTable  # type: ignore[misc]


class _Folded:
    """A renderable drawn with long words folded, not cut."""

    def __init__(self, renderable: Any) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Any, options: Any) -> Any:
        yield from console.render(self.renderable, options.update(overflow="fold"))

    def __rich_measure__(self, console: Any, options: Any) -> Measurement:
        return Measurement.get(console, options, self.renderable)


class _FoldingTable(Table):
    """rich's table, whose columns (made by the rows typer adds) fold long words."""

    def add_row(self, *renderables: Any, **options: Any) -> None:
        while len(self.columns) < len(renderables):
            self.add_column(overflow="fold")
        super().add_row(*renderables, **options)


def _refuse_non_finite(command: Any) -> None:
    """Make every option and argument of ``command`` and its subcommands refuse ``inf`` and ``nan`` as a usage
    error: a range check lets ``--seconds inf`` through (it is >= 1), and it ended in an OverflowError traceback."""
    for param in command.params:
        param.process_value = _finite(param)
    for sub in getattr(command, "commands", {}).values():
        _refuse_non_finite(sub)


def _finite(param: Any) -> Callable[[Any, Any], Any]:
    process_value = param.process_value

    def finite(ctx: Any, value: Any) -> Any:
        value = process_value(ctx, value)
        for number in value if isinstance(value, list | tuple) else (value,):
            if isinstance(number, float) and not math.isfinite(number):
                raise typer.BadParameter(f"{number} is not a finite number.", ctx=ctx, param=param)
        return value

    return finite


def _help_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    if ctx is None or ctx.command.get_help_option(ctx) is None:
        return ""
    return f" (see '{ctx.command_path} {ctx.help_option_names[0]}')"


__all__ = [
    "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USAGE", "PROG", "describe", "fail", "load_settings", "note",
    "one_line", "one_line_errors", "one_of", "print_error", "run_app", "usage_error",
]
