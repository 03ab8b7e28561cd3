"""What the writer and the readers agree on about an LMDB environment.

* :data:`MAX_READERS`: the reader slots asked for by every environment this package opens with a
  lock file. LMDB sizes the reader table when the first process opens ``lock.mdb``; a process
  that opens it while another holds it gets the existing table, whatever it asks for. So the
  writer must ask for as many as the readers do: a converter opened with LMDB's default of 126
  would make the 127th concurrent ``lock=True`` reader fail with MDB_READERS_FULL.
* :func:`check_complete`: a ``data.mdb`` shorter than its own last page (an interrupted copy, a
  full disk during a copy) would crash the reading process with SIGBUS at the first access to
  a missing page, since LMDB maps the file into memory; it is refused with an error instead.
"""
import os

__all__ = ["MAX_READERS", "truncation"]

MAX_READERS = 1024


def truncation(env, path):
    """None when ``path``/data.mdb holds every page the environment's newest meta page refers
    to; else a message saying how short it is."""
    last_page = env.info()["last_pgno"]
    needed = (last_page + 1) * env.stat()["psize"]
    size = os.path.getsize(os.path.join(path, "data.mdb"))
    if size >= needed:
        return None
    return (f"{path}/data.mdb is truncated: {size:,} bytes, but its pages run to {needed:,} "
            "(an interrupted copy?); copy it again from the original")
