"""A ``--config`` file's values checked against the settings' types before pydantic reads them.

pydantic converts in lax mode, as it must for environment variables (every one a string), so a TOML file's
``max_batch = true`` became 1, ``exactly_once = "yes"`` true and ``workers = 2.0`` 2, without a word. TOML
has types of its own: a value of the wrong one is a mistake in the file, said here.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr

#: What TOML type each settings type takes (bool is not an int here: ``true`` is no batch size).
_TOML_TYPES: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
                                            Path: (str,), SecretStr: (str,)}
_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def toml_type_errors(data: dict[str, Any], fields: dict[str, Any]) -> list[str]:
    """``name: what is wrong`` for each value of ``data`` whose TOML type its setting does not take (an unknown
    name is left to the settings' own refusal, which suggests the closest one)."""
    errors = []
    for name, value in data.items():
        field = fields.get(name)
        if field is None:
            continue
        allowed = _accepted(field.annotation)
        if allowed and type(value) not in allowed:  # type(), not isinstance: True is an int to isinstance
            wanted = " or ".join(sorted({_NAMES.get(kind, kind.__name__) for kind in allowed}))
            errors.append(f"{name}: {value!r} is {_described(value)}, where the setting takes {wanted}")
    return errors


def _accepted(annotation: Any) -> set[type]:
    """The TOML types a settings annotation takes (empty: not checked here)."""
    if typing.get_origin(annotation) is typing.Literal:
        return {type(choice) for choice in typing.get_args(annotation)}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_accepted(arg) for arg in typing.get_args(annotation) if arg is not type(None)))
    return set(_TOML_TYPES.get(annotation, ()))


def _described(value: Any) -> str:
    for kind in (bool, int, float, str):
        if type(value) is kind:
            return _NAMES[kind]
    return "a TOML " + ("table" if isinstance(value, dict) else "array" if isinstance(value, list) else "value")


__all__ = ["toml_type_errors"]
