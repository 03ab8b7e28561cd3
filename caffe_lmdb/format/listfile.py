"""Caffe's list files: ``path label`` lines, as convert_imageset and the ImageData layer read
them (the label after the LAST space, so paths may hold spaces)."""
from __future__ import annotations

import os
import re
from collections.abc import Iterator

from ..errors import ListFileError

__all__ = ["parse_list_line", "read_list_file"]

_INTEGER = re.compile(rb"\s*[+-]?[0-9]+\s*")


def parse_list_line(raw, where, targets=0):
    """Parse one line of a Caffe list file (bytes, without the newline).

    The label is the integer after the LAST space (paths may contain spaces), as Caffe's
    convert_imageset reads it. With ``targets=K``, the line is ``path label v1 ... vK``: the
    last K + 1 space-separated fields are the label and K floats, everything before them is the
    path. Returns ``(path_bytes, label, values)``; raises ListFileError naming ``where``.
    """
    line = raw.rstrip(b"\r")
    parts = line.rsplit(b" ", 1 + targets)
    if len(parts) < 2 + targets or not parts[0]:
        want = "a path, a label" + (f" and {targets} target values" if targets else "")
        got = "an empty line" if not line.strip() else f"{line[:80]!r}"
        raise ListFileError(f"expected {want} separated by spaces, got {got}", *where)
    path, label_text, values = parts[0], parts[1], parts[2:]
    try:
        if not _INTEGER.fullmatch(label_text):  # int() would also take "1_000"
            raise ValueError
        label = int(label_text)
    except ValueError:
        raise ListFileError(f"label {label_text.decode('utf-8', 'replace')!r} is not an integer"
                            " (the label is what follows the last space of the line)",
                            *where) from None
    if not -(1 << 31) <= label < (1 << 31):
        raise ListFileError(f"label {label} does not fit Caffe's int32 label", *where)
    try:
        if any(b"_" in v for v in values):  # float() would take "1_0" as 10
            raise ValueError
        floats = tuple(float(v) for v in values)
    except ValueError:
        raise ListFileError(f"target values {b' '.join(values).decode('utf-8', 'replace')!r} "
                            "are not all numbers", *where) from None
    return path, label, (floats if targets else None)


def read_list_file(path, targets: int = 0) -> Iterator[tuple[bytes, int, tuple | None]]:
    """``(path, label, values)`` of every line of a list file, in order (see
    :func:`parse_list_line`). Blank lines at the end are not records; a blank line between
    records is an error naming its line, since the records after it would shift by one."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for n, raw in enumerate(lines, 1):
        if not targets:  # the common line, `path label` with a plain label, read at once
            head, _, label = raw.rpartition(b" ")
            if head and label.isdigit() and len(label) < 10:
                yield head, int(label), None
                continue
        yield parse_list_line(raw, (path, n), targets)
