"""Subpackages whose submodules are imported on first use as attributes
(``caffe_lmdb.format.datum``), as they were when ``import caffe_lmdb`` imported everything."""
from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from types import ModuleType

__all__ = ["submodule_getattr"]


def submodule_getattr(package: str) -> Callable[[str], ModuleType]:
    """A module ``__getattr__`` for ``package`` that imports ``package.name`` when asked."""

    def __getattr__(name: str) -> ModuleType:
        try:
            return import_module(f"{package}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    return __getattr__
