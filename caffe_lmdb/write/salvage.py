"""Salvage: copy every record that can still be read from a damaged (or LMDB 1.0) database into
a new LMDB 0.9 database, in key order, and say what was lost.

A damaged ``data.mdb`` (bytes overwritten by a failing disk or an interrupted copy) makes LMDB
stop at the first bad page (``MDB_CORRUPTED``, ``MDB_PAGE_NOTFOUND``): a plain cursor walk loses
everything after it. :func:`salvage` walks forward until the first error, then backward from
the last key until an error, and between the two probes the keys of the missing stretch
(``%0Nd`` numbered keys: each number in turn; other keys: the successor of the last key read)
to resume the walk past the bad pages. Values that are not valid Datum records are left out and
counted. The output is written by the converters' sink (so in Caffe's LMDB 0.9 format).
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import lmdb

from ..errors import DatumDecodeError, NotADatumDBError, show_key
from ..format.datum import parse_datum
from ..format.keys import key_index
from .sink import DEFAULT_MAP_SIZE, open_sink, prepare_output

__all__ = ["salvage", "SalvageReport"]

_ERRORS = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.PanicError,
           lmdb.BadValsizeError)
_MAX_PROBES = 1_000_000


@dataclass
class SalvageReport:
    """What :func:`salvage` copied and what it could not."""
    source: str
    out: str
    copied: int = 0
    entries_claimed: int = 0        # what the source's own counter says
    unreadable_ranges: list = field(default_factory=list)   # (after key, before key)
    bad_records: list = field(default_factory=list)         # keys of unparsable values
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return max(0, self.entries_claimed - self.copied)

    def __str__(self):
        lines = [f"{self.source} -> {self.out}: {self.copied} records copied"
                 + (f" of {self.entries_claimed}" if self.entries_claimed else "")
                 + f" ({self.seconds:.2f} s)"]
        if self.lost or self.unreadable_ranges or self.bad_records:
            lines.append(f"lost: {self.lost} records")
            for after, before in self.unreadable_ranges:
                lines.append(f"  unreadable pages between {show_key(after)} and "
                             f"{show_key(before)}")
            for key in self.bad_records[:20]:
                lines.append(f"  record {show_key(key)}: not a valid Datum, left out")
        else:
            lines.append("nothing lost")
        return "\n".join(lines)


def _walk(cursor, start_ok, step, keep):
    """Call keep(key, value) from the cursor's position on, moving with ``step``; True when
    the walk ended on damage (not at the end)."""
    try:
        ok = start_ok()
        while ok:
            keep(bytes(cursor.key()), bytes(cursor.value()))
            ok = step()
    except _ERRORS:
        return True
    return False


def salvage(source, out, *, overwrite: bool = False, map_size: int = DEFAULT_MAP_SIZE,
            progress=None) -> SalvageReport:
    """Copy the readable records of ``source`` into a new LMDB ``out`` (see the module);
    returns a :class:`SalvageReport`. ``out`` is refused if it exists, unless ``overwrite``."""
    t0 = time.perf_counter()
    source, out = os.fspath(source), os.fspath(out)
    if not os.path.isfile(os.path.join(source, "data.mdb")):
        raise NotADatumDBError(f"{source} holds no data.mdb: give the folder of an LMDB")
    report = SalvageReport(source, out)
    try:
        env = lmdb.open(source, readonly=True, lock=False, subdir=True, create=False)
    except lmdb.Error as exc:
        raise NotADatumDBError(f"{source}/data.mdb cannot be opened at all ({exc}): "
                               "nothing can be salvaged from it") from exc
    try:
        with env.begin(buffers=False) as txn:
            segments = _read_segments(txn, report)
    finally:
        env.close()
    records = [r for seg in segments for r in seg]
    for i in range(1, len(segments)):
        a, b = segments[i - 1], segments[i]
        report.unreadable_ranges.append((a[-1][0] if a else b"", b[0][0] if b else b""))
    prepare_output(out, overwrite=overwrite)
    sink = open_sink(out, map_size=map_size)
    try:
        for i, (key, value) in enumerate(records):
            sink.put(key, value)
            if sink.batch_full:
                sink.commit()
            if progress is not None and i % 1000 == 0:
                progress(i, len(records))
    finally:
        sink.close()
    report.copied = len(records)
    report.seconds = time.perf_counter() - t0
    return report


def _read_segments(txn, report):
    """The readable records as runs of consecutive keys, with the damage between runs."""
    with contextlib.suppress(lmdb.Error):
        report.entries_claimed = txn.stat()["entries"]

    def keeper(dest):
        def keep(key, value):
            try:
                parse_datum(value)
            except DatumDecodeError:
                report.bad_records.append(key)
                return
            dest.append((key, value))
        return keep

    head = []
    cur = txn.cursor()
    if not _walk(cur, cur.first, cur.next, keeper(head)):
        return [head]
    tail = []
    cur = txn.cursor()
    _walk(cur, cur.last, cur.prev, keeper(tail))
    tail.reverse()
    after = head[-1][0] if head else None
    before = tail[0][0] if tail else None
    segments = [head]
    last = after
    for probe in _candidates(after, before):
        if last is not None and probe <= last:
            continue
        if before is not None and probe >= before:
            break
        got = []
        cur = txn.cursor()
        try:
            if not cur.set_range(probe):
                break
        except _ERRORS:
            continue
        _walk(cur, lambda: True, cur.next, keeper(got))
        got = [(k, v) for k, v in got if (last is None or k > last)
               and (before is None or k < before)]
        if got:
            segments.append(got)
            last = got[-1][0]
    tail = [(k, v) for k, v in tail if last is None or k > last]
    segments.append(tail)
    return [seg for seg in segments if seg] or [[]]


def _candidates(after, before):
    """Keys to place a cursor at past the damage: each number in turn for numbered keys
    (``%0Nd...``), else byte successors of ``after``."""
    number = key_index(after) if after else None
    if number is not None:
        width = len(after) - len(after.lstrip(b"0123456789"))
        stop = key_index(before) if before and key_index(before) is not None \
            else number + _MAX_PROBES
        for n in range(number + 1, min(stop, number + _MAX_PROBES) + 1):
            yield b"%0*d" % (width, n)
        return
    if after:
        yield after + b"\x00"
        for i in range(len(after) - 1, -1, -1):
            if after[i] < 0xFF:
                yield after[:i] + bytes([after[i] + 1])
    else:
        yield b"\x00"
