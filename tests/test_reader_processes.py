"""DatumDB in worker processes: fork (the parent's environment is open and inherited) and
spawn (the object is pickled as its path and reopened), with py-lmdb >= 2's rule of one
environment per database per process."""
import multiprocessing as mp

import lmdb
import numpy as np
import pytest
from helpers import images_db, read_all, read_shard

import caffe_lmdb


def _expected(images, labels):
    return [(i, int(labels[i]), int(images[i].astype(np.int64).sum()))
            for i in range(len(labels))]


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_read_every_record(tmp_path, method):
    path, images, labels = images_db(tmp_path / "db", n=17)
    db = caffe_lmdb.open(path)
    assert db[0][1] == labels[0]  # the parent's environment is open while the workers run
    ctx = mp.get_context(method)
    with ctx.Pool(2) as pool:
        results = pool.map(read_all, [db, db])
        shards = pool.starmap(read_shard, [(db, 0, 2), (db, 1, 2)])
    assert results[0] == results[1] == _expected(images, labels)
    assert sorted(shards[0] + shards[1]) == sorted(labels.tolist())
    assert not set(shards[0]) & set(shards[1])
    assert db[16][1] == labels[16]  # the parent still reads after its children closed theirs


def test_py_lmdb_refuses_a_second_open_in_a_forked_child(tmp_path):
    """The fact the reader works around: the parent's open environment is inherited, and
    py-lmdb refuses to open the same files again in the child."""
    if int(lmdb.__version__.split(".")[0]) < 2:
        pytest.skip("py-lmdb < 2 has no such guard")
    path, _, _ = images_db(tmp_path / "db", n=2)
    env = lmdb.open(str(path), readonly=True, lock=False)
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        message = pool.apply(_try_open, (str(path),))
    env.close()
    assert "already open" in message


def _try_open(path):
    try:
        lmdb.open(path, readonly=True, lock=False).close()
    except lmdb.Error as exc:
        return str(exc)
    return "opened"


def test_encoded_batches_in_a_forked_child_after_the_parent(fixtures):
    """The parent decodes encoded batches (starting its decoding threads) before forking: a
    child must not wait on threads that do not exist in it."""
    db = caffe_lmdb.open(fixtures / "imageset_encoded_png_32x32")
    want = [int(v) for _, y in db.batches(8) for v in y]
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_encoded_labels, (db,)).get(timeout=60)
    assert got == want


def _encoded_labels(db):
    return [int(v) for _, y in db.batches(8) for v in y]
