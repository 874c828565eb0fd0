"""The packages that export lazily (fusionstream/lazy.py) still export everything they name, as what it is."""

from __future__ import annotations

import importlib
import types

import pytest


@pytest.mark.parametrize("package", ["fusionstream.stream", "fusionstream.consumers.kafka"])
def test_every_name_a_lazy_package_exports_is_the_object_not_a_module(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:  # each read imports its module: one sharing an export's name would replace it
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module: a name shared with one"
        assert name in dir(module)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        module.no_such_name  # noqa: B018
