"""Where an LMDB's values lie in its data file: sequential runs of values without the cursor.

py-lmdb's cursor costs about half a microsecond of Python per record, most of what a pass
over small records takes. LMDB's file format (version 1, what LMDB 0.9 writes and Caffe reads)
is plain: every value of the main database sits in a leaf page (or, when large, in overflow
pages the leaf points to), and the leaves, read left to right through the branch pages, hold
the records in key order. :class:`PageMap` reads those pages through a read-only memory map of
``data.mdb`` with NumPy, many pages per call, and hands out where each value lies (offsets
and sizes into the map), so that a batch decoder can read the values where they lie.

It reads the snapshot of one read transaction: the meta page whose transaction id is the
transaction's (so the pages it walks are the ones LMDB's cursor would walk). Anything it does
not expect (another data version or byte order, a 32-bit build, database flags such as
duplicate-sort or integer keys, named databases, a page number past the transaction's last
page, a page whose header names another page or is of the wrong kind, a pointer or a value
outside its page, an overflow run too short for its value) makes it answer None, and the caller
reads through the cursor instead, which reports damage in LMDB's own words. It never writes and
never trusts an offset it has not checked against the pages and the map's size.

Facts of the format used here (LMDB's mdb.c, 64-bit): a page starts with a 16-byte header
(page number, 2 bytes of padding, flags, then ``lower`` and ``upper``, the ends of the node
pointer array and of the free space); the node pointers (2 bytes each, offsets in the page)
follow it. A node is ``lo, hi, flags, ksize`` (2 bytes each), the key, then the data: in a leaf
the data size is ``lo | hi << 16``, and a node flagged BIGDATA holds instead the 8-byte number
of the overflow page whose header (16 bytes; its ``lower`` and ``upper`` read as one count
of pages) the value follows; in a branch the child's page
number is ``lo | hi << 16 | flags << 32``. Meta pages 0 and 1 hold, after the page header, the
magic 0xBEEFC0DE, the data version, and the records of the free and main databases (the free
one's first field is the page size), the last page number and the transaction id.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading

import numpy as np

__all__ = ["PageMap"]

_U8, _U16 = np.dtype(np.uint8), np.dtype("<u2")
_HEADER = 16  # page header bytes
_NODE = 8  # node header bytes
_P_BRANCH, _P_LEAF, _P_OVERFLOW = 0x01, 0x02, 0x04
_P_KINDS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40  # branch leaf overflow meta leaf2 subpage
_F_BIGDATA = 0x01
_MAGIC, _VERSION = 0xBEEFC0DE, 1
_META = struct.Struct("<II8x8x" + "IHH5Q" * 2 + "QQ")  # after the page header
_INVALID = (1 << 64) - 1  # P_INVALID: the root of an empty database
#: largest number of leaves whose headers one take reads at once
_LEAF_GROUP = 1 << 14


class _Snapshot:
    """The tree of one transaction's main database: its leaves in key order, known through the
    lowest level of branch pages (``parents``, with ``ends``, the running count of their
    children), so that memory stays a 200th of the leaves' count; and where a sequential
    reader stopped (``end``: the key of the last value handed out, its leaf and node)."""

    __slots__ = ("txnid", "psize", "last", "parents", "ends", "root", "count", "end", "_near")

    def __init__(self, txnid, psize, last, root=None, parents=None, ends=None):
        self.txnid, self.psize, self.last, self.root = txnid, psize, last, root
        self.parents, self.ends = parents, ends
        self.count = 0 if root is None else 1 if parents is None else int(ends[-1])
        self.end = None  # (key, leaf index, node index of the next value)
        self._near = (0, 0, None)  # (first leaf, stop, page numbers) last read

    def leaves(self, pages, i, j):
        """Page numbers of leaves i .. j - 1 (fewer at the end); None when a parent is bad."""
        j = min(j, self.count)
        if i >= j:
            return np.empty(0, np.int64)
        if self.parents is None:
            return np.array([self.root], np.int64)
        first, stop, near = self._near
        if not first <= i < j <= stop:  # the parents of leaves i .. j - 1, and a few after
            a = int(np.searchsorted(self.ends, i, side="right"))
            b = int(np.searchsorted(self.ends, j - 1, side="right")) + 1
            b = min(len(self.parents), max(b, a + 8))
            near = pages._children(self.parents[a:b], self.psize, self.last)
            if near is None:
                return None
            first = int(self.ends[a - 1]) if a else 0
            self._near = first, first + len(near), near
        return near[i - first:j - first]


class PageMap:
    """Values of an LMDB read from its pages (see the module documentation).

    ``take(txnid, after, count)``: up to ``count`` values after key ``after`` (from the first
    when None), as ``(base, offsets, sizes, last_key)``: ``base`` a uint8 array over the
    file, value i being ``base[offsets[i]:offsets[i] + sizes[i]]``; or None when this map
    cannot answer (the caller then uses the cursor). ``close()`` unmaps the file (when no
    array of it is alive; else when the last one goes)."""

    def __init__(self, path):
        self.path = os.path.join(path, "data.mdb")
        self._lock = threading.Lock()
        self._map = self._u8 = self._u16 = None
        self._snapshot = None
        self._broken = struct.calcsize("P") != 8  # the 32-bit layout differs: never tried
        self._pid = os.getpid()

    # -- the map --------------------------------------------------------------------------------

    def _ensure(self, pages_needed, psize):
        """The map covers ``pages_needed`` pages (remapped when the file has grown)."""
        if self._u8 is not None and len(self._u8) >= pages_needed * psize:
            return True
        self.close()
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            size = os.fstat(fd).st_size
            if size < pages_needed * psize or size < 2 * psize:
                return False
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._u8 = np.frombuffer(self._map, _U8)
        self._u16 = self._u8[:len(self._u8) & ~1].view(_U16)
        return True

    def close(self):
        self._u8 = self._u16 = self._snapshot = None
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view of it is alive: unmapped with it
                self._map.close()
            self._map = None

    def _meta(self, psize, txnid):
        """(main database record, last page) of the meta page of transaction ``txnid``."""
        for page in (0, 1):
            fields = _META.unpack_from(self._map, page * psize + _HEADER)
            if fields[0] != _MAGIC or fields[1] != _VERSION:
                return None
            if fields[-1] == txnid:
                return fields[10:18], fields[-2]
        return None

    def _snapshot_of(self, txnid):
        snap = self._snapshot
        if snap is not None and snap.txnid == txnid:
            return snap
        self._snapshot = None
        psize = self._page_size()
        if psize < 256 or psize & (psize - 1) or psize > 1 << 16:
            return None
        if not self._ensure(2, psize):
            return None
        meta = self._meta(psize, txnid)
        if meta is None:
            return None
        (_pad, flags, depth, _branches, _leaves, _overflows, entries, root), last = meta
        if flags or not self._ensure(last + 1, psize):
            return None  # duplicate-sort, integer or reverse keys: not read here
        if root == _INVALID or entries == 0:
            snap = _Snapshot(txnid, psize, last)
        elif depth == 1:
            snap = _Snapshot(txnid, psize, last, root)
        else:  # the branch pages down to the leaves' parents
            parents = np.array([root], np.int64)
            for _ in range(depth - 2):
                parents = self._children(parents, psize, last)
                if parents is None:
                    return None
            checked = self._pages_ok(parents, last, _P_BRANCH, psize)
            if checked is None:
                return None
            snap = _Snapshot(txnid, psize, last, root, parents, np.cumsum(checked[1]))
        self._snapshot = snap
        return snap

    def _page_size(self):
        """The page size, from meta page 0 (the free database's first field)."""
        if self._u8 is not None:
            return int(self._u8[_HEADER + 24:_HEADER + 28].view("<u4")[0])
        with open(self.path, "rb") as f:
            head = f.read(_HEADER + 28)
        return struct.unpack_from("<I", head, _HEADER + 24)[0] if len(head) == _HEADER + 28 \
            else 0

    # -- the tree -------------------------------------------------------------------------------

    def _pages_ok(self, pages, last, kind, psize):
        """Every page number is in the file, its page says it is that page and is of
        ``kind``; returns (bases, counts of nodes) or None."""
        if len(pages) == 0 or pages.min() < 2 or pages.max() > last:
            return None
        base = pages * psize
        if not self._numbered(base, pages):
            return None
        u16 = self._u16
        flags = u16[(base + 10) >> 1] & _P_KINDS
        lower = u16[(base + 12) >> 1].astype(np.int64)
        if not (flags == kind).all() or lower.min() < _HEADER + 2 or lower.max() > psize \
                or (lower & 1).any():
            return None
        return base, (lower - _HEADER) >> 1

    def _numbered(self, base, pages):
        """The pages at ``base`` hold their own numbers ``pages`` in their headers."""
        window = np.lib.stride_tricks.as_strided(self._u16, (len(self._u16) - 3, 4), (2, 2),
                                                 writeable=False)
        return bool((window[base >> 1].copy().view("<u8")[:, 0] == pages).all())

    def _nodes(self, base, counts, psize):
        """Offsets of the nodes of the pages at ``base`` (their ``counts``), in page order and
        pointer order, each checked to lie in its page; None when one does not."""
        u16 = self._u16
        most = int(counts.max())
        window = np.lib.stride_tricks.as_strided(u16, (len(u16) - most + 1, most), (2, 2),
                                                 writeable=False)
        pointers = window[(base + _HEADER) >> 1]
        pointers = pointers[:, 0] if most == 1 else pointers[np.arange(most) < counts[:, None]]
        pointers = pointers.astype(np.int64)
        if len(pointers) == 0 or pointers.min() < _HEADER + 2 \
                or pointers.max() > psize - _NODE or (pointers & 1).any():
            return None
        return np.repeat(base, counts) + pointers

    def _children(self, parents, psize, last):
        """Page numbers of the children of branch pages ``parents``, in order (None when one
        is not a branch page as expected)."""
        checked = self._pages_ok(parents, last, _P_BRANCH, psize)
        if checked is None:
            return None
        nodes = self._nodes(*checked, psize)
        if nodes is None:
            return None
        at = nodes >> 1
        u16 = self._u16
        return (u16[at].astype(np.int64) | u16[at + 1].astype(np.int64) << 16
                | u16[at + 2].astype(np.int64) << 32)

    # -- values ---------------------------------------------------------------------------------

    def take(self, txnid, after, count):
        if self._broken or count <= 0:
            return None
        if self._pid != os.getpid():  # a forked child: a lock held at the fork stays held
            self._lock, self._pid = threading.Lock(), os.getpid()
        with self._lock:
            try:
                return self._take(txnid, after, count)
            except (OSError, ValueError, IndexError, TypeError, OverflowError, struct.error):
                self.close()  # an unreadable or changing file: the cursor reads this one
                return None

    def _take(self, txnid, after, count):
        snap = self._snapshot_of(txnid)
        if snap is None:
            return None
        if after is None:
            leaf, node = 0, 0
        elif snap.end is not None and snap.end[0] == after:
            _, leaf, node = snap.end
        else:
            found = self._find(snap, after)
            if found is None:
                return None
            leaf, node = found
        psize = snap.psize
        # read the headers of enough leaves for ``count`` values
        group = max(2, min(_LEAF_GROUP, (count + node) // 4 + 2))
        while True:
            part = snap.leaves(self, leaf, leaf + group)
            if part is None:
                return None
            if len(part) == 0:
                return self._empty()
            checked = self._pages_ok(part, snap.last, _P_LEAF, psize)
            if checked is None:
                return None
            base, counts = checked
            total = np.cumsum(counts)
            if total[-1] >= node + count or leaf + group >= snap.count:
                break
            group *= 2
        used = int(np.searchsorted(total, node + count)) + 1  # leaves holding the values
        base, counts = base[:used], counts[:used]
        nodes = self._nodes(base, counts, psize)
        if nodes is None:
            return None
        nodes = nodes[node:node + count]
        page_end = np.repeat(base + psize, counts)[node:node + count]
        values = self._values(nodes, page_end, psize, snap.last)
        if values is None:
            return None
        offsets, sizes, key_at, key_len = values
        # where the next take starts: after the last value handed out
        done = node + len(nodes)
        past = int(np.searchsorted(total, done, side="right"))
        snap_end = (leaf + past, done - (int(total[past - 1]) if past else 0))
        last_key = bytes(self._u8[key_at[-1]:key_at[-1] + key_len[-1]])
        snap.end = (last_key, *snap_end)
        return self._u8, offsets, sizes, last_key

    def _empty(self):
        return self._u8, np.empty(0, np.int64), np.empty(0, np.int64), None

    def _values(self, nodes, page_end, psize, last):
        """(offsets, sizes, key offsets, key sizes) of the values of leaf nodes ``nodes``."""
        u8, u16 = self._u8, self._u16
        at = nodes >> 1
        head = np.lib.stride_tricks.as_strided(u16, (len(u16) - 3, 4), (2, 2),
                                               writeable=False)[at].astype(np.int64)
        sizes = head[:, 0] | head[:, 1] << 16
        flags, key_len = head[:, 2], head[:, 3]
        data = nodes + _NODE + key_len
        big = flags == _F_BIGDATA
        if not ((flags == 0) | big).all():
            return None  # sub-databases or duplicates: not Caffe's, not read here
        if big.any():
            if (data[big] + 8 > page_end[big]).any():
                return None  # (the overflow page's number lies in the node)
            window = np.lib.stride_tricks.as_strided(u8, (len(u8) - 7, 8), (1, 1),
                                                     writeable=False)
            pages = window[data[big]].copy().view("<u8")[:, 0].astype(np.int64)
            if pages.min() < 2 or pages.max() > last:
                return None
            heads = pages * psize
            if not self._numbered(heads, pages):
                return None
            kinds = u16[(heads + 10) >> 1] & _P_KINDS
            spans = np.lib.stride_tricks.as_strided(u16, (len(u16) - 1, 2), (2, 2),
                                                    writeable=False)[(heads + 12) >> 1]
            span = (spans[:, 0].astype(np.int64) | spans[:, 1].astype(np.int64) << 16) * psize
            if not (kinds == _P_OVERFLOW).all() or (sizes[big] + _HEADER > span).any() \
                    or (heads + span).max() > (last + 1) * psize:
                return None
            data[big] = heads + _HEADER
            inline = ~big
            if (data[inline] + sizes[inline] > page_end[inline]).any():
                return None
        elif (data + sizes > page_end).any():
            return None
        return data, sizes, nodes + _NODE, key_len

    def _find(self, snap, key):
        """(leaf index, node index) just after ``key``; None when it is not in the tree."""
        psize = snap.psize
        if not snap.count:
            return None

        def leaf_base(i):
            leaf = snap.leaves(self, i, i + 1)
            if leaf is None or not len(leaf):
                raise ValueError("a bad branch page")  # (take: the cursor reads it)
            return int(leaf[0]) * psize

        # binary search over the leaves' first keys (each leaf read once on the way)
        lo, hi = 0, snap.count - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._key(leaf_base(mid), 0) <= key:
                lo = mid
            else:
                hi = mid - 1
        base = leaf_base(lo)
        count = (int(self._u16[(base + 12) >> 1]) - _HEADER) >> 1
        for j in range(count):
            k = self._key(base, j)
            if k == key:
                return (lo, j + 1) if j + 1 < count else (lo + 1, 0)
            if k > key:
                return None
        return None

    def _key(self, base, j):
        base = int(base)
        node = base + int(self._u16[(base + _HEADER) // 2 + j])
        size = int(self._u16[(node + 6) >> 1])
        return bytes(self._u8[node + _NODE:node + _NODE + size])
