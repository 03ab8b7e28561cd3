"""Values read from LMDB's pages (storage.lmdbpages) instead of through the cursor.

The page reader must give exactly the cursor's values, in the cursor's order, from the key
asked for; refuse (None) whatever it does not expect, so that the cursor reads it; and the
decoder must decode records that lie apart in the map (in leaf pages, in overflow pages) as it
decodes records one by one.
"""
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from conftest import LMDB_FIXTURES, read_lmdb
from hypothesis import given
from hypothesis import strategies as st
from test_decode_property import SETTINGS, _runs_of_records, batch_agrees_with_one_by_one

import caffe_lmdb
from caffe_lmdb.errors import DamagedDBError, DatumDecodeError
from caffe_lmdb.format.batch import BatchDecoder, JoinedValues
from caffe_lmdb.format.datum import datum_bytes
from caffe_lmdb.storage import lmdb as lmdb_engine
from caffe_lmdb.storage.lmdbpages import PageMap


def _txnid(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.id()
    finally:
        env.close()


def _taken(pages, txnid, after, count):
    got = pages.take(txnid, after, count)
    assert got is not None
    base, offsets, sizes, last = got
    spans = zip(offsets.tolist(), sizes.tolist(), strict=True)
    return [bytes(base[o:o + s]) for o, s in spans], last


def _agrees_with_cursor(path, steps, afters=()):
    """Every value, taken ``steps`` (a cycle of counts) at a time from the first key, then
    after each key of ``afters``, equals the cursor's."""
    items = read_lmdb(path)
    pages, txnid = PageMap(str(path)), _txnid(path)
    try:
        got, after, k = [], None, 0
        while True:
            values, last = _taken(pages, txnid, after, steps[k % len(steps)])
            k += 1
            if not values:
                break
            got += values
            after = last
            assert last == items[len(got) - 1][0]
        assert got == [v for _, v in items]
        for i in afters:
            values, _ = _taken(pages, txnid, items[i][0], 5)
            assert values == [v for _, v in items[i + 1:i + 6]]
    finally:
        pages.close()
    return len(items)


@pytest.mark.parametrize("name", LMDB_FIXTURES)
def test_pages_agree_with_the_cursor_on_caffes_databases(fixtures, name):
    """Databases written by Caffe's own tools (mdb_put record by record, commits every 1000)."""
    n = _agrees_with_cursor(fixtures / name, [1, 7, 3])
    assert n > 0


def test_pages_agree_with_the_cursor_on_the_other_real_databases(fixtures):
    """The SSD fork's AnnotatedDatum databases and the Data layer's transform fixtures."""
    folders = sorted(p.parent for p in fixtures.glob("*/*/data.mdb"))
    assert len(folders) >= 10
    for folder in folders:
        assert _agrees_with_cursor(folder, [2, 5]) > 0, folder


def _write(path, rng, n, max_size, shuffled, rewrite, key_size=8):
    env = lmdb.open(str(path), map_size=1 << 30)
    keys = [(b"%08d" % i).ljust(key_size, b"k") for i in range(n)]
    if shuffled:
        rng.shuffle(keys)
    step = int(rng.integers(1, 400))
    for a in range(0, n, step):
        with env.begin(write=True) as txn:
            for key in keys[a:a + step]:
                txn.put(key, rng.bytes(int(rng.integers(0, max_size))))
    if rewrite:  # pages freed and reused: leaves out of file order
        with env.begin(write=True) as txn:
            for key in keys[::7]:
                txn.delete(key)
            for key in keys[::11]:
                txn.put(key, rng.bytes(int(rng.integers(0, max_size))))
    env.close()


@pytest.mark.parametrize("seed", range(8))
def test_pages_agree_with_the_cursor(tmp_path, seed):
    """Values small and large (in leaf pages and in overflow pages), keys written in order and
    shuffled, many commits, records deleted and rewritten; taken in runs of various lengths
    from the first key, and after keys anywhere."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 2500))
    _write(tmp_path / "db", rng, n, [40, 900, 2100, 5000, 30000][seed % 5], seed % 3 == 1,
           seed % 2 == 1)
    afters = rng.integers(0, len(read_lmdb(tmp_path / "db")), 10).tolist()
    _agrees_with_cursor(tmp_path / "db", rng.integers(1, 400, 5).tolist(), afters)


def test_pages_of_a_deep_tree(tmp_path):
    """Keys of 480 bytes: a few per branch page, so a tree five levels deep (the leaves
    found through three levels of branch pages, read a parent at a time)."""
    rng = np.random.default_rng(3)
    _write(tmp_path / "db", rng, 3000, 300, False, True, key_size=480)
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    depth = env.stat()["depth"]
    env.close()
    assert depth >= 4
    afters = rng.integers(0, len(read_lmdb(tmp_path / "db")), 10).tolist()
    _agrees_with_cursor(tmp_path / "db", [1, 50, 333], afters)


def test_pages_refuse_what_they_cannot_answer(tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path / "db", rng, 300, 900, False, False)
    items = read_lmdb(tmp_path / "db")
    pages, txnid = PageMap(str(tmp_path / "db")), _txnid(tmp_path / "db")
    assert pages.take(txnid, b"no such key", 3) is None
    assert pages.take(txnid + 1, None, 3) is None  # no meta page of that transaction
    assert _taken(pages, txnid, items[-1][0], 3) == ([], None)  # after the last key: nothing
    pages.close()


def _first_leaf(path):
    """The byte offset in data.mdb of the first leaf page (found by the page reader)."""
    pages = PageMap(str(path))
    pages.take(_txnid(path), None, 1)
    at = int(pages._snapshot.leaves(pages, 0, 1)[0]) * pages._snapshot.psize
    pages.close()
    return at


@pytest.mark.parametrize("damage", ["flags", "pointer", "size", "number"])
def test_damaged_pages_go_to_the_cursor(tmp_path, damage):
    """A leaf page that is not as expected (wrong kind, a node pointer out of the page, a value
    running past its page, another page's number in its header): the page reader refuses
    it, and the reader gives what the cursor gives (LMDB's own error, or the same records)."""
    path = tmp_path / "db"
    with caffe_lmdb.DatumWriter(str(path)) as writer:
        for i in range(40):
            writer.put(datum_bytes(1, 16, 16, data=bytes([i]) * 256, label=i))
    leaf = _first_leaf(path)
    with open(path / "data.mdb", "r+b") as f:
        f.seek(leaf)
        page = bytearray(f.read(4096))
        if damage == "flags":
            page[10] = 0x04  # an overflow page where a leaf is expected
        elif damage == "pointer":
            page[16:18] = (4094).to_bytes(2, "little")  # node header past the page's end
        elif damage == "number":
            page[0:8] = (7).to_bytes(8, "little")  # another page's copy (a stale block)
        else:
            node = int.from_bytes(page[16:18], "little")
            page[node + 2:node + 4] = (1).to_bytes(2, "little")  # size + 64 KiB
        f.seek(leaf)
        f.write(page)
    assert PageMap(str(path)).take(_txnid(path), None, 40) is None
    try:
        with caffe_lmdb.open(str(path)) as db:
            images, labels = next(db.batches(40))
            want = [db._decoder.decode_one(v) for _, v in read_lmdb(path)]
    except (DamagedDBError, DatumDecodeError, lmdb.Error):
        return  # what the cursor path says of it
    assert labels.tolist() == [label for _, label in want]
    assert np.array_equal(images, np.stack([a for a, _ in want]))


def _no_cursor_runs(monkeypatch):
    def refuse(self, after=None):
        raise AssertionError("a cursor run where the pages should have been read")
    monkeypatch.setattr(lmdb_engine.LMDBTxn, "run", refuse)


@pytest.mark.parametrize("shape,floats", [((1, 28, 28), False), ((3, 32, 32), False),
                                          ((4096, 1, 1), True), ((10, 1, 1), True)])
def test_batches_read_from_the_pages(tmp_path, monkeypatch, shape, floats):
    """A sequential pass (batches, low-memory batches, scan) over pixel and float records,
    small (leaf pages) and large (overflow pages), with labels of 1 to 3 bytes, reads the
    pages, not the cursor, and gives the records' own arrays and labels."""
    rng = np.random.default_rng(7)
    n = 700
    labels = np.concatenate([np.arange(300), 20000 + np.arange(200), np.arange(200) * 3])
    if floats:
        arrays = rng.standard_normal((n, *shape)).astype(np.float32)
    else:
        arrays = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    with caffe_lmdb.DatumWriter(str(tmp_path / "db")) as writer:
        for arr, label in zip(arrays, labels.tolist(), strict=True):
            writer.put(arr, label)
    _no_cursor_runs(monkeypatch)
    db = caffe_lmdb.open(str(tmp_path / "db"))
    try:
        for size in (64, 256, n):
            got = list(db.batches(size))
            assert np.array_equal(np.concatenate([g for g, _ in got]), arrays)
            assert np.concatenate([lab for _, lab in got]).tolist() == labels.tolist()
            # the low-memory mode too (its batch decoded a quarter at a time)
            got = [(g.copy(), lab.copy()) for g, lab in db.batches(size, reuse=True)]
            assert np.array_equal(np.concatenate([g for g, _ in got]), arrays)
            assert np.concatenate([lab for _, lab in got]).tolist() == labels.tolist()
        start = 0
        for first, images, got_labels in db.scan(chunk=97):
            assert first == start
            assert np.array_equal(images, arrays[first:first + len(images)])
            assert got_labels.tolist() == labels[first:first + len(images)].tolist()
            start += len(images)
        assert start == n
    finally:
        db.close()


def test_a_shard_starts_from_its_key(tmp_path, monkeypatch):
    """A pass that starts in the middle (a shard) finds its first key in the pages."""
    arrays = np.arange(500 * 12, dtype=np.uint8).reshape(500, 1, 3, 4)
    with caffe_lmdb.DatumWriter(str(tmp_path / "db")) as writer:
        for i, arr in enumerate(arrays):
            writer.put(arr, i)
    _no_cursor_runs(monkeypatch)
    db = caffe_lmdb.open(str(tmp_path / "db"))
    try:
        images, labels = db[123:377]
        assert labels.tolist() == list(range(123, 377))
        assert np.array_equal(images, arrays[123:377])
    finally:
        db.close()


def test_a_database_read_while_it_grows(tmp_path, monkeypatch):
    """Records added by another process after a first pass (a new transaction, a longer
    file): after refresh() the next pass reads the new pages."""
    path = str(tmp_path / "db")
    with caffe_lmdb.DatumWriter(path) as writer:
        for i in range(100):
            writer.put(datum_bytes(1, 4, 4, data=bytes([i]) * 16, label=i))
    db = caffe_lmdb.open(path)
    try:
        assert np.concatenate([lab for _, lab in db.batches(32)]).tolist() == list(range(100))
        more = (f"import lmdb\nfrom caffe_lmdb.format.datum import datum_bytes\n"
                f"env = lmdb.open({path!r}, map_size=1 << 26)\n"
                "with env.begin(write=True) as txn:\n"
                "    for i in range(100, 3000):\n"
                "        txn.put(b'%08d' % i, datum_bytes(1, 4, 4, data=bytes([i % 256]) * 16,"
                " label=i))\n")
        subprocess.run([sys.executable, "-c", more], check=True)
        db.refresh()
        _no_cursor_runs(monkeypatch)  # the longer file is mapped again and read
        assert np.concatenate([lab for _, lab in db.batches(256)]).tolist() == \
            list(range(3000))
    finally:
        db.close()


# -- the decoder, on records apart in a buffer --------------------------------------------------

def _apart(data, bufs):
    """``bufs`` placed apart in one buffer, as LMDB places them: in pages of a few records one
    node apart from the page's end down, or one after another at a step, with jumps; the
    last record perhaps at the very end of the buffer."""
    width = max(map(len, bufs)) + data.draw(st.integers(0, 24))
    layout = data.draw(st.sampled_from(["pages", "steps", "random"]))
    offsets, at = [], 0
    if layout == "pages":
        count = data.draw(st.integers(1, 6))
        page = count * width + data.draw(st.integers(0, 64))
        for i in range(len(bufs)):
            block, j = divmod(i, count)
            jump = page * data.draw(st.integers(0, 1)) if j == 0 and i else 0
            at += jump
            offsets.append(at + block * page + (count - 1 - j) * width)
    elif layout == "steps":
        for i in range(len(bufs)):
            offsets.append(at)
            at += width + (data.draw(st.integers(0, 3)) * width if i % 17 == 16 else 0)
    else:
        for _ in bufs:
            offsets.append(at)
            at += width + data.draw(st.integers(0, 40))
    end = max(o + len(b) for o, b in zip(offsets, bufs, strict=True))
    extra = data.draw(st.integers(0, 16))
    buffer = bytearray(np.random.default_rng(len(bufs)).integers(0, 256, end + extra,
                                                                  dtype=np.uint8).tobytes())
    for o, b in zip(offsets, bufs, strict=True):
        buffer[o:o + len(b)] = b
    sizes = np.array([len(b) for b in bufs], np.int64)
    return JoinedValues(memoryview(bytes(buffer)), sizes.tolist(), np.array(offsets, np.int64),
                        sizes)


@SETTINGS
@given(st.data())
def test_records_apart_agree_with_decode(data):
    """Records apart in a map (pages of records, steps with jumps, random gaps), in runs of
    labels of different sizes, one byte perhaps changed: the batch equals the records decoded
    one by one, or fails on the first that fails alone or differs in shape."""
    bufs = _runs_of_records(data)
    values = _apart(data, bufs)
    assert [bytes(v) for v in values] == bufs
    batch_agrees_with_one_by_one(bufs, values)


def test_records_apart_take_the_strided_path(monkeypatch):
    """Records in pages of five (as LMDB lays out 1x28x28 records) are read through strided
    views, not gathered."""
    from caffe_lmdb.format import batch

    monkeypatch.setattr(batch._Stage, "gather", None)  # a gather would fail
    monkeypatch.setattr(batch, "decode", None)  # so would one by one
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (600, 1, 28, 28), dtype=np.uint8)
    bufs = [datum_bytes(1, 28, 28, data=img.tobytes(), label=i % 300)
            for i, img in enumerate(images)]
    buffer = bytearray(4096 * 130)
    offsets = []
    for i, buf in enumerate(bufs):
        page, j = divmod(i, 5)
        offsets.append(4096 * (page + page // 40) + 4096 - 814 * (j + 1))
        buffer[offsets[-1]:offsets[-1] + len(buf)] = buf
    sizes = np.array([len(b) for b in bufs], np.int64)
    values = JoinedValues(memoryview(bytes(buffer)), sizes.tolist(),
                          np.array(offsets, np.int64), sizes)
    got, labels = BatchDecoder().decode(values)
    assert labels.tolist() == [i % 300 for i in range(600)]
    assert np.array_equal(got, images)


def test_a_value_at_the_end_of_the_map_is_gathered():
    """The last record of a file ends at the map's end: its rows cannot be a window past it;
    it is copied alone, and decoded right."""
    bufs = [datum_bytes(1, 2, 3, data=bytes([i] * 6), label=i) for i in range(9)]
    buffer = b"".join(bufs)
    sizes = np.array([len(b) for b in bufs], np.int64)
    offsets = np.cumsum(sizes) - sizes
    offsets = offsets[::-1].copy()  # (not adjacent in order: the gather's case)
    values = JoinedValues(memoryview(buffer), sizes.tolist(), offsets, sizes)
    images, labels = BatchDecoder().decode(values)
    assert labels.tolist() == list(range(9))[::-1]
    assert images.reshape(9, -1)[:, 0].tolist() == list(range(9))[::-1]


@pytest.mark.parametrize("length", [4096, 10])
def test_features_decoded_whole_from_the_pages(tmp_path, monkeypatch, length):
    """extract_features' records (floats, no label), in overflow pages (4096 floats) and in
    leaf pages (10): read_features reads the pages and decodes whole batches, never record by
    record."""
    from caffe_lmdb.format import batch

    rng = np.random.default_rng(4)
    features = rng.standard_normal((300, length, 1, 1)).astype(np.float32)
    caffe_lmdb.write_features(str(tmp_path / "feats"), features)
    _no_cursor_runs(monkeypatch)
    monkeypatch.setattr(batch, "decode", None)  # one by one would fail
    assert np.array_equal(caffe_lmdb.read_features(str(tmp_path / "feats")), features)
