"""Package exports imported on first use (PEP 562), so importing one light module of a package does not import
all of it: ``from fusionstream.consumers.subscribers import subscribe`` imported numpy, pydantic and the
producers through the packages on its way (0.7-1.6 s before an app could start)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each name of ``exports`` from its module (a submodule's
    name relative to ``package``), imported when the name is first read and kept in the package from then on.

    An exported name must not also be a submodule's: importing that submodule (from anywhere) sets the
    package's attribute of that name to the module, and the export would read as the module from then on.
    """
    namespace = importlib.import_module(package).__dict__

    def attribute(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def names() -> list[str]:
        return sorted({*namespace, *exports})

    return attribute, names


__all__ = ["lazy_exports"]
