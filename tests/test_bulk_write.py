"""The bulk writers: write_arrays and DatumWriter serialize blocks of arrays with NumPy and
put them with one call; the bytes, keys and commits are those of one record at a time."""
import numpy as np
import pytest

import caffe_lmdb
from caffe_lmdb.format.datum import array_to_datum_bytes, arrays_to_datum_bytes
from caffe_lmdb.format.keys import index_key, index_keys


def _pairs(path):
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


LABELS = [0, 1, 127, 128, 300, 16383, 16384, 2 ** 21, 2 ** 28, 2 ** 31 - 1, -1, -2 ** 31, 7]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int16, np.bool_])
@pytest.mark.parametrize("labelled", [True, False])
def test_block_serialization_is_record_by_record(dtype, labelled):
    rng = np.random.default_rng(3)
    for shape in [(1, 1, 1), (3, 2, 5), (1, 28, 28), (200, 1, 1)]:
        arrays = rng.integers(0, 256, (13,) + shape).astype(dtype)
        labels = rng.choice(LABELS, 13) if labelled else None
        want = [array_to_datum_bytes(a, None if labels is None else int(labels[i]))
                for i, a in enumerate(arrays)]
        assert arrays_to_datum_bytes(arrays, labels) == want


def test_index_keys_are_printf():
    for first, n, width in [(0, 1, 8), (99_999_990, 20, 8), (0, 3000, 5), (123, 77, 10),
                            (10 ** 17 - 3, 6, 18), (5, 0, 8)]:
        assert index_keys(first, n, width) == [index_key(i, width)
                                               for i in range(first, first + n)]


def _one_by_one(path, arrays, labels, commit_every=1000):
    """The reference: the writer's put of one record at a time, serialized values."""
    with caffe_lmdb.DatumWriter(path, commit_every=commit_every) as w:
        for i, a in enumerate(arrays):
            w.put(array_to_datum_bytes(a, None if labels is None else int(labels[i])))


@pytest.mark.parametrize("labels", ["ints", "none", "numpy"])
def test_write_arrays_bytes_as_one_by_one(tmp_path, labels):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2345, 1, 28, 28), dtype=np.uint8)
    lab = {"ints": [int(x) for x in rng.integers(0, 1000, 2345)], "none": None,
           "numpy": rng.integers(-5, 1 << 20, 2345)}[labels]
    calls = []
    s = caffe_lmdb.write_arrays(tmp_path / "a", images, lab,
                                progress=lambda d, t: calls.append((d, t)))
    _one_by_one(tmp_path / "b", images, lab)
    assert _pairs(tmp_path / "a") == _pairs(tmp_path / "b")
    assert s.written == 2345 and calls[-1] == (2345, 2345)


def test_write_arrays_float_hw_and_channels_last(tmp_path):
    rng = np.random.default_rng(1)
    floats = rng.standard_normal((1500, 2, 3, 4)).astype(np.float32)
    caffe_lmdb.write_arrays(tmp_path / "f", floats, list(range(1500)))
    _one_by_one(tmp_path / "g", floats, list(range(1500)))
    assert _pairs(tmp_path / "f") == _pairs(tmp_path / "g")
    hw = rng.integers(0, 256, (50, 7, 9), dtype=np.uint8)
    caffe_lmdb.write_arrays(tmp_path / "hw", hw)
    _one_by_one(tmp_path / "hw2", hw[:, None], None)
    assert _pairs(tmp_path / "hw") == _pairs(tmp_path / "hw2")
    hwc = rng.integers(0, 256, (50, 7, 9, 3), dtype=np.uint8)
    caffe_lmdb.write_arrays(tmp_path / "c", hwc, channels_last=True)
    _one_by_one(tmp_path / "c2", hwc.transpose(0, 3, 1, 2), None)
    assert _pairs(tmp_path / "c") == _pairs(tmp_path / "c2")


def test_write_arrays_resume_completes_the_same_database(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3000, 1, 4, 4), dtype=np.uint8)
    caffe_lmdb.write_arrays(tmp_path / "full", images, np.arange(3000))

    class Stop(Exception):
        pass

    def progress(done, total):
        if done >= 2000:
            raise Stop

    with pytest.raises(Stop):
        caffe_lmdb.write_arrays(tmp_path / "part", images, np.arange(3000), progress=progress)
    assert 0 < len(_pairs(tmp_path / "part")) < 3000  # a committed prefix
    caffe_lmdb.write_arrays(tmp_path / "part", images, np.arange(3000), resume=True)
    assert _pairs(tmp_path / "part") == _pairs(tmp_path / "full")


def test_datum_writer_blocks_keep_order_kinds_and_commits(tmp_path):
    rng = np.random.default_rng(4)
    small = rng.integers(0, 256, (2500, 1, 5, 5), dtype=np.uint8)
    other = rng.standard_normal((3, 2, 2, 2)).astype(np.float32)
    want = []
    with caffe_lmdb.DatumWriter(tmp_path / "db", commit_every=700) as w:
        for i in range(1200):
            w.put(small[i], i)  # buffered
            want.append(array_to_datum_bytes(small[i], i))
        w.put(other[0])  # another shape and dtype: the block before is written first
        want.append(array_to_datum_bytes(other[0]))
        w.put(small[1200])  # no label: a new block
        want.append(array_to_datum_bytes(small[1200]))
        w.put(array_to_datum_bytes(other[1], 9))  # bytes as they are
        want.append(array_to_datum_bytes(other[1], 9))
        w.put(small[1201], 3, key="zz-last")  # an explicit key
        want.append(array_to_datum_bytes(small[1201], 3))
        assert w.index == 1204
    pairs = _pairs(tmp_path / "db")
    assert [v for _, v in pairs] == want
    assert [k for k, _ in pairs] == [index_key(i) for i in range(1203)] + [b"zz-last"]
    with pytest.raises(ValueError, match="int32"), caffe_lmdb.DatumWriter(tmp_path / "bad") as w:
        w.put(small[0], 1 << 31)


def test_datum_writer_commits_what_was_put_before_a_failure(tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (1500, 1, 3, 3), dtype=np.uint8)
    with pytest.raises(RuntimeError), caffe_lmdb.DatumWriter(tmp_path / "db") as w:
        for i, image in enumerate(images):
            w.put(image, i)
        raise RuntimeError("the caller's loop fails")
    pairs = _pairs(tmp_path / "db")
    assert len(pairs) == 1500 and pairs[-1][1] == array_to_datum_bytes(images[-1], 1499)


@pytest.mark.parametrize("backend", ["lmdb", "leveldb"])
def test_default_commits_small_records_in_batches_of_about_4_mib(tmp_path, backend):
    """commit_every left out: Caffe's 1000 for records of 4 KiB and more, about 4 MiB per
    commit for smaller ones; a number given is kept exactly (both engines)."""
    if backend == "leveldb":
        pytest.importorskip("plyvel")
    from caffe_lmdb.storage.base import COMMIT_MIN_BYTES, open_writer

    def commits(value_size, n, **options):
        points = []
        writer = open_writer(str(tmp_path / f"{backend}_{value_size}_{len(options)}"),
                             backend=backend, hook=points.append, **options)
        value = b"x" * value_size
        for i in range(n):
            writer.put(b"%08d" % i, value)
            if writer.batch_full:
                writer.commit()
        writer.commit()
        writer.close()
        return points.count("committed"), writer.commit_every

    done, every = commits(784, 12_000)
    assert every == -(-COMMIT_MIN_BYTES // 784) and done == -(-12_000 // every)
    assert commits(784, 3_000, commit_every=1000) == (3, 1000)
    assert commits(5000, 2_500) == (3, 1000)


def test_datum_writer_thread_owns_the_sink_and_hands_it_back(tmp_path, monkeypatch):
    """Blocks go to a writer thread (the caller's loop runs on during a commit); an explicit
    commit, a record of another kind and close() take the sink back with everything put
    committed, in order; every put and commit of LMDB happens in one thread at a time."""
    import threading

    from caffe_lmdb.storage.lmdb import LMDBWriter

    seen = []
    for name in ("put_many", "put", "commit"):
        original = getattr(LMDBWriter, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            seen.append((_name, threading.current_thread().name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(LMDBWriter, name, spy)
    images = np.random.default_rng(6).integers(0, 256, (9000, 1, 4, 4), dtype=np.uint8)
    with caffe_lmdb.DatumWriter(tmp_path / "db", commit_every=1000) as w:
        for i in range(4000):
            w.put(images[i], i)
        w.commit()
        assert w._sink.entries == 4000  # committed
        for i in range(4000, 8000):
            w.put(images[i], i)
        w.put(array_to_datum_bytes(images[8000], 8000))  # another kind: no thread from now on
        for i in range(8001, 9000):
            w.put(images[i], i)
    want = [array_to_datum_bytes(images[i], i) for i in range(9000)]
    assert [v for _, v in _pairs(tmp_path / "db")] == want
    threads = {t for _, t in seen}
    assert "caffe_lmdb-writer" in threads and threading.current_thread().name in threads
    last_writer = max(i for i, (_, t) in enumerate(seen) if t == "caffe_lmdb-writer")
    first_single = min(i for i, (n, _) in enumerate(seen) if n == "put")
    assert last_writer < first_single  # the thread was done before this thread wrote again


def test_datum_writer_thread_error_is_raised_and_earlier_commits_kept(tmp_path, monkeypatch):
    from caffe_lmdb.errors import WriteError
    from caffe_lmdb.storage.lmdb import LMDBWriter

    images = np.random.default_rng(7).integers(0, 256, (5000, 1, 4, 4), dtype=np.uint8)
    original = LMDBWriter.put_many
    calls = []

    def failing(self, keys, values, replace=False, ascending=False):
        calls.append(len(keys))
        if sum(calls) > 3000:
            raise WriteError("disk full (simulated)")
        return original(self, keys, values, replace, ascending)

    monkeypatch.setattr(LMDBWriter, "put_many", failing)
    with pytest.raises(WriteError, match="simulated"):
        with caffe_lmdb.DatumWriter(tmp_path / "db", commit_every=1000) as w:
            for i in range(5000):
                w.put(images[i], i)
    pairs = _pairs(tmp_path / "db")
    assert 2000 <= len(pairs) <= 3000 and len(pairs) % 1000 == 0
    assert [v for _, v in pairs] == [array_to_datum_bytes(images[i], i) for i in range(len(pairs))]


def test_put_many_ascending_still_refuses_what_it_cannot_append(tmp_path):
    """ascending=True skips the per-key checks, not the check against the database's last key
    nor the length of the keys: a block that does not follow goes record by record."""
    from caffe_lmdb.errors import DuplicateKeyError
    from caffe_lmdb.storage.lmdb import LMDBWriter

    w = LMDBWriter(str(tmp_path / "db"))
    w.put_many([b"%08d" % i for i in range(5)], [b"v"] * 5, ascending=True)
    with pytest.raises(DuplicateKeyError):
        w.put_many([b"%08d" % i for i in range(4, 8)], [b"v"] * 4, ascending=True)
    w.abort()
    w.put_many([b"%08d" % i for i in (99999998, 99999999, 100000000)], [b"v"] * 3,
               ascending=True)  # the last key is longer: it sorts first, put one by one
    w.commit()
    w.close()
    assert [k for k, _ in _pairs(tmp_path / "db")] == [b"100000000", b"99999998", b"99999999"]


def test_put_many_blocks_are_put_again_when_the_map_grows(tmp_path):
    """The open transaction's blocks are replayed whole after the map grows (one entry per
    block in the writer's batch), between single puts, in order."""
    from caffe_lmdb.storage.lmdb import LMDBWriter

    w = LMDBWriter(str(tmp_path / "db"), map_size=64 << 10, commit_every=10 ** 6)
    want = []
    for b in range(6):
        keys = [b"%08d" % (100 * b + i) for i in range(40)]
        values = [bytes([b]) * 3000 for _ in keys]
        w.put_many(keys, values, ascending=True)
        w.put(b"%08d" % (100 * b + 50), b"single")
        want += list(zip(keys, values)) + [(b"%08d" % (100 * b + 50), b"single")]
    assert w.grown > 0 and w.pending == len(want)
    w.commit()
    w.close()
    assert _pairs(tmp_path / "db") == want
