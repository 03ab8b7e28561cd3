"""The key schemes of Caffe's tools, and checks on key order.

LMDB sorts keys as bytes and Caffe reads them in that order, so a record's position is its
key's rank. Zero-padded decimal keys keep record i at position i; unpadded ones ("0", "1",
"10", "100", ...) do not.
"""
import re

#: LMDB's default maximum key size in bytes (mdb_env_get_maxkeysize).
MAX_KEY_BYTES = 511

_DIGITS = re.compile(rb"^(\d+)(.*)$", re.S)


def imageset_key(line_index, path):
    """convert_imageset's key: ``%08d`` of the list-file line index, ``_``, the path as listed
    (bytes, or str encoded as UTF-8)."""
    return b"%08d_" % line_index + (path.encode("utf-8") if isinstance(path, str) else path)


def path_of(key):
    """The path part of a ``%08d_<path>`` key (bytes), or None for any other key."""
    head, sep, rest = bytes(key).partition(b"_")
    return rest if sep and head.isdigit() and rest else None


def index_key(index, width=8):
    """A zero-padded index key: ``%08d`` (MNIST, arrays), ``%05d`` (CIFAR), ``%010d`` (features)."""
    return b"%0*d" % (width, index)


def index_keys(first, n, width=8):
    """``[index_key(i, width) for i in range(first, first + n)]``, made with NumPy for the
    whole run (a bytes object per key, in one C-level step)."""
    if n <= 0:
        return []
    if first < 0 or first + n > 10 ** min(width, 18):  # wider numbers: printf's own way
        return [b"%0*d" % (width, i) for i in range(first, first + n)]
    import numpy as np

    numbers = np.arange(first, first + n, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = ((numbers[:, None] // powers) % 10 + 48).astype(np.uint8)
    return digits.view(f"V{width}").ravel().tolist()


def key_index(key):
    """The leading decimal number of a key (``b"00000042_cat.jpg"`` -> 42), or None."""
    m = _DIGITS.match(bytes(key))
    return int(m.group(1)) if m else None


def describe_pattern(keys):
    """A short printf-like description of a sample of keys, e.g. ``%08d_<path>`` or ``%010d``."""
    patterns = set()
    for key in keys:
        m = _DIGITS.match(bytes(key))
        if not m:
            patterns.add("<other>")
            continue
        digits, rest = m.groups()
        width = len(digits)
        padded = width > 1 and digits.startswith(b"0")
        num = f"%0{width}d" if padded or width >= 5 else "%d"
        if rest.startswith(b"_"):
            patterns.add(num + "_<path>")
        elif rest:
            patterns.add(num + "<suffix>")
        else:
            patterns.add(num)
    return ", ".join(sorted(patterns)) if patterns else "<empty>"
