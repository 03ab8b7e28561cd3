"""Submodules are imported on first use as attributes (see :mod:`caffe_lmdb.lazy`)."""
from ..lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)

#: the default pixel limit (width x height) of the converters: Pillow's bomb threshold (here,
#: not in imagesize, so that the command line shows it without importing the image code)
DEFAULT_MAX_PIXELS = 178_956_970
