"""Submodules are imported on first use as attributes (``caffe_lmdb.storage.name``), as they were
when ``import caffe_lmdb`` imported everything."""


def __getattr__(name):
    from importlib import import_module

    try:
        return import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
