"""The converters' defaults that the command line shows in its help, in a module that imports
nothing heavy (building the ``caffe-lmdb`` parser must not import NumPy, OpenCV or LMDB)."""
from __future__ import annotations

import os

__all__ = ["DEFAULT_TIMEOUT", "default_workers"]

#: seconds an image may take before it is skipped as hung (see executors.ordered_map)
DEFAULT_TIMEOUT = 60.0


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1
