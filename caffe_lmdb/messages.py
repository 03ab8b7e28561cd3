"""How keys and sizes read in messages (errors, summaries, reports)."""
from __future__ import annotations

__all__ = ["show_key", "human_bytes"]


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
