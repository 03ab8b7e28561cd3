"""How keys and sizes read in messages (errors, summaries, reports)."""
from __future__ import annotations

__all__ = ["show_key", "human_bytes", "lmdb_1_message", "damaged_message"]


def show_key(key):
    """A key as it reads best in a message (text when it is UTF-8)."""
    if isinstance(key, (bytes, bytearray, memoryview)):
        key = bytes(key)
        try:
            return repr(key.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(key)
    return repr(key)


def human_bytes(n: float) -> str:
    """A byte count as people read it: ``512 B``, ``1.5 KB``, ``3.2 MB``, ``1.1 GB``, ..."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def lmdb_1_message(path):
    """What to say about a database in the 1.0 format where Caffe's is needed."""
    return (f"{path} is an LMDB 1.0 database: Caffe (LMDB 0.9) cannot open this file "
            "(MDB_INVALID). Copy its records into a new 0.9-format database with "
            f"`caffe-lmdb salvage {path} NEW_DB` (caffe-lmdb always writes 0.9)")


def damaged_message(path, detail):
    """What to say about a database whose data.mdb LMDB finds damaged."""
    return (f"{path}/data.mdb is damaged ({detail}): `caffe-lmdb verify {path}` lists the "
            f"problems, and `caffe-lmdb salvage {path} NEW_DB` copies every record that can "
            "still be read into a new database")
