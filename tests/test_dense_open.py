"""open() of a database whose keys look like a dense %0Nd run reads O(log n) keys, and a key
that breaks the run (a gap filled by a foreign key, a shorter or longer key sorting in between)
is never given as the record of a wrong position, whatever the access path."""
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from helpers import write_lmdb

import caffe_lmdb
from caffe_lmdb.format.datum import array_to_datum_bytes
from caffe_lmdb.read.keyindex import DenseKeys, PackedKeys, probe_dense, run_bytes

SHAPE = (1, 3, 2)


def _db(path, keys):
    """An LMDB holding, under each key, a record whose label and pixels identify the key."""
    items = []
    for key in keys:
        ident = int.from_bytes(key.ljust(12, b"\0")[:12], "big") % 1000003
        image = np.full(SHAPE, ident % 251, np.uint8)
        items.append((key, array_to_datum_bytes(image, ident)))
    write_lmdb(path, items)
    truth = sorted(keys)  # LMDB's order: bytes
    return str(path), truth


def _label_of(key):
    return int.from_bytes(key.ljust(12, b"\0")[:12], "big") % 1000003


def _all_paths(db, truth):
    """Every way of reading positions, each checked against the true key order."""
    n = len(truth)
    want = np.array([_label_of(k) for k in truth])
    assert len(db) == n
    # sequential passes: batches (blocks and single), items, scan, value_chunks, iteration
    for batch in (1, 3, 64):
        got = np.concatenate([y for _, y in db.batches(batch)])
        np.testing.assert_array_equal(got, want)
        got = np.concatenate([y.copy() for _, y in db.batches(batch, reuse=True)])
        np.testing.assert_array_equal(got, want)
    assert [k for k, _, _ in db.items()] == truth
    assert [int(lab) for _, lab in db] == want.tolist()
    got = np.concatenate([lab.copy() for _, _, lab in db.scan(chunk=4)])
    np.testing.assert_array_equal(got, want)
    # shards start in the middle
    for world in (2, 3):
        got = np.concatenate([y for rank in range(world)
                              for _, y in db.batches(2, shard=(rank, world))])
        np.testing.assert_array_equal(got, want)
    # random access
    for i in [n - 1, 0, n // 2, 5, 6, 7, -1, -n]:
        assert db[i][1] == want[i]
    positions = np.random.default_rng(0).permutation(n)
    np.testing.assert_array_equal(db.read(positions)[1], want[positions])
    got = np.concatenate([y for _, y in db.batches(4, shuffle=True, seed=3)])
    perm = np.random.default_rng([3, 0]).permutation(n)
    np.testing.assert_array_equal(got, want[perm])
    assert list(db.keys()) == truth
    for i, key in enumerate(truth):
        assert db.index(key) == i


def _fresh(path):
    return caffe_lmdb.open(path)


BREAKERS = {
    # a foreign key sorts between 00000005 and 00000006, and 00000009 is missing: the first and
    # last keys and the count are those of a dense run 0..19
    "longer key": ([b"%08d" % i for i in range(20) if i != 9] + [b"000000055"]),
    "suffix key": ([b"%08d" % i for i in range(20) if i != 9] + [b"00000005x"]),
    "shorter key": ([b"%08d" % i for i in range(20) if i != 13] + [b"0000001"]),
    "colon key": ([b"%08d" % i for i in range(20) if i != 2] + [b"0000000:"]),
    "letters": ([b"%08d" % i for i in range(20) if i != 17] + [b"0000001!"]),
    # gap and foreign key at the very start and end of the run
    "second key": ([b"%08d" % i for i in range(20) if i != 1] + [b"00000000_"]),
    "before last": ([b"%08d" % i for i in range(20) if i != 18] + [b"00000018x"]),
}


@pytest.mark.parametrize("name", sorted(BREAKERS))
def test_a_key_breaking_the_run_never_shifts_a_record(tmp_path, name):
    path, truth = _db(tmp_path / "db", BREAKERS[name])
    assert truth[0] == b"00000000" and truth[-1] == b"00000019" and len(truth) == 20
    # every access path, each on a fresh open (so that each meets the unchecked index first)
    _all_paths(_fresh(path), truth)
    db = _fresh(path)
    assert db[7][1] == _label_of(truth[7])  # random access first
    _all_paths(db, truth)
    db = _fresh(path)
    assert [int(y[0]) for _, y in db.batches(1)][6] == _label_of(truth[6])
    _all_paths(db, truth)
    # once found out, the index is the full one
    assert isinstance(db.keys(), PackedKeys)


@pytest.mark.parametrize("width", [5, 8, 10])
def test_a_dense_run_opens_without_reading_the_keys(tmp_path, width, monkeypatch):
    first = 10 ** (width - 1) - 7  # the run crosses a power of ten and a 10,000 boundary
    keys = [b"%0*d" % (width, first + i) for i in range(300)]
    path, truth = _db(tmp_path / "db", keys)
    import caffe_lmdb.read.reader as reader

    def no_scan(txn):
        raise AssertionError("open() scanned every key")

    monkeypatch.setattr(reader, "scan_keys", no_scan)
    db = _fresh(path)
    index = db._unchecked()
    assert isinstance(index, DenseKeys) and index.checked == 1 and len(db) == 300
    # a sequential pass reads no key index at all
    got = np.concatenate([y for _, y in db.batches(64)])
    np.testing.assert_array_equal(got, [_label_of(k) for k in truth])
    assert index.checked == 1
    # random access checks the prefix it needs (keys only), then the whole run
    assert db[100][1] == _label_of(truth[100])
    assert index.checked >= 101
    assert list(db.keys()) == truth and index.complete
    monkeypatch.undo()
    _all_paths(_fresh(path), truth)


def test_probe_needs_the_same_width_digits_and_count(tmp_path):
    cases = {
        "dense": ([b"%05d" % i for i in range(3, 40)], True),
        "wider last": ([b"%05d" % i for i in range(3, 40)] + [b"000040"], False),
        "gap": ([b"%05d" % i for i in range(3, 40) if i != 9], False),
        "not digits": ([b"a%04d" % i for i in range(3, 40)], False),
        "one key": ([b"00042"], True),
        "unpadded": ([b"%d" % i for i in range(12)], False),
    }
    for name, (keys, dense) in cases.items():
        path, truth = _db(tmp_path / name, keys)
        env = lmdb.open(path, readonly=True, lock=False)
        try:
            from caffe_lmdb.storage.lmdb import LMDBTxn

            with env.begin() as txn:
                probed = probe_dense(LMDBTxn(txn, env=env))
        finally:
            env.close()
        assert (probed is not None) == dense, name
        db = _fresh(path)
        assert list(db.keys()) == truth, name
        assert [k for k, _, _ in db.items()] == truth, name


def test_run_bytes_is_printf():
    rng = np.random.default_rng(1)
    for _ in range(300):
        width = int(rng.integers(1, 19))
        first = int(rng.integers(0, 10 ** width))
        k = int(min(rng.integers(1, 25000), 10 ** width - first))
        assert run_bytes(first, k, width) == b"".join(b"%0*d" % (width, x)
                                                      for x in range(first, first + k))


def test_a_record_deleted_after_open_is_reported(tmp_path):
    path, truth = _db(tmp_path / "db", [b"%08d" % i for i in range(50)])
    db = _fresh(path)
    code = ("import lmdb, sys\nenv = lmdb.open(sys.argv[1])\n"
            "with env.begin(write=True) as txn:\n    txn.delete(b'00000030')\nenv.close()")
    subprocess.run([sys.executable, "-c", code, path], check=True)  # another process
    with pytest.raises(caffe_lmdb.NotADatumDBError, match="modified|changed"):
        for _ in db.batches(8):
            pass
