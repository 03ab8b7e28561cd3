"""Submodules are imported on first use as attributes (see :mod:`caffe_lmdb.lazy`)."""
from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
