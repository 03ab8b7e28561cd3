"""caffe_lmdb.open / DatumDB: exact records from Caffe's fixtures, order, options, batches,
shuffling, sharding and clear errors."""
import pickle

import lmdb
import numpy as np
import pytest
from conftest import LMDB_FIXTURES, expected, read_lmdb
from helpers import images_db, write_lmdb

import caffe_lmdb
from caffe_lmdb import NotADatumDBError, ShapeMismatchError
from caffe_lmdb.format.datum import datum_bytes
from caffe_lmdb.format.image import encode_image

UNIFORM = ["imageset_raw_32x32", "imageset_gray_24x20", "imageset_encoded_png_32x32",
           "mnist_lmdb", "cifar10_test_head_lmdb", "cifar10_train_sample_lmdb",
           "features_data_lmdb", "features_pool1_lmdb", "features_ip1_lmdb",
           "features_label_lmdb"]


@pytest.mark.parametrize("name", LMDB_FIXTURES)
def test_keys_and_records_match_caffe_pb2(fixtures, name):
    exp = expected(fixtures, name)
    db = caffe_lmdb.open(fixtures / name, color=True)
    assert len(db) == len(exp["keys"])
    assert [k.decode() for k in db.keys()] == list(exp["keys"])
    arrays = exp["array"]
    for i, (image, label) in enumerate(db):
        np.testing.assert_array_equal(image, arrays[i])
        assert image.dtype == arrays[i].dtype
        assert label == (exp["labels"][i] if exp["has_label"][i] else 0)


@pytest.mark.parametrize("name", UNIFORM)
def test_batches_equal_expected(fixtures, name):
    exp = expected(fixtures, name)
    db = caffe_lmdb.open(fixtures / name)
    images, labels = [], []
    for x, y in db.batches(7):
        images.append(x.copy())
        labels.append(y.copy())
    np.testing.assert_array_equal(np.concatenate(images), exp["array"])
    np.testing.assert_array_equal(np.concatenate(labels),
                                  np.where(exp["has_label"], exp["labels"], 0))


def test_gaps_in_keys_random_access(fixtures):
    db = caffe_lmdb.open(fixtures / "imageset_raw_32x32")
    exp = expected(fixtures, "imageset_raw_32x32")
    # lines 3 and 7 of the list could not be read: position 3 is line 4
    assert db.keys()[3] == b"00000004_" + exp["keys"][3].split("_", 1)[1].encode()
    image, label = db[3]
    np.testing.assert_array_equal(image, exp["array"][3])
    assert label == exp["labels"][3]
    image, label = db.get(exp["keys"][10])
    np.testing.assert_array_equal(image, exp["array"][10])
    assert db.index(exp["keys"][10]) == 10
    assert db.get("00000003_cat/missing_file.jpg") is None
    with pytest.raises(KeyError):
        db.index("00000003_cat/missing_file.jpg")
    np.testing.assert_array_equal(db[-1][0], exp["array"][-1])
    with pytest.raises(IndexError):
        db[24]


def test_native_sizes_iterate_but_batch_names_key(fixtures):
    db = caffe_lmdb.open(fixtures / "imageset_raw_native")
    exp = expected(fixtures, "imageset_raw_native")
    shapes = [image.shape for image, _ in db]
    assert shapes == [tuple(s) for s in exp["array_shapes"]]
    with pytest.raises(ShapeMismatchError, match="00000001_dog"):
        next(db.batches(4))


def test_encoded_color_modes(fixtures):
    exp = expected(fixtures, "imageset_encoded_passthrough")
    native = caffe_lmdb.open(fixtures / "imageset_encoded_passthrough")
    channels = [image.shape[0] for image, _ in native]
    assert channels == list(exp["native_channels"])
    gray = caffe_lmdb.open(fixtures / "imageset_encoded_png_32x32", color=False)
    x, _ = next(gray.batches(24))
    assert x.shape == (24, 1, 32, 32)
    color = caffe_lmdb.open(fixtures / "imageset_encoded_png_32x32", color=True)
    x, _ = next(color.batches(24))
    np.testing.assert_array_equal(x, expected(fixtures, "imageset_encoded_png_32x32")["array"])


@pytest.mark.parametrize("order,layout,dtype", [("RGB", "CHW", None), ("BGR", "HWC", None),
                                                ("RGB", "HWC", "float32"),
                                                ("BGR", "CHW", "float64"),
                                                ("BGR", "CHW", None), ("RGB", "HWC", None)])
@pytest.mark.parametrize("name", ["imageset_raw_32x32", "imageset_encoded_png_32x32"])
def test_channel_order_layout_dtype(fixtures, name, order, layout, dtype):
    # the PNGs decode to exactly the raw records' pixels (PNG is lossless)
    exp = expected(fixtures, "imageset_raw_32x32")["array"]
    want = exp[:, ::-1] if order == "RGB" else exp
    if layout == "HWC":
        want = want.transpose(0, 2, 3, 1)
    want = want.astype(dtype or np.uint8)
    db = caffe_lmdb.open(fixtures / name, channel_order=order, layout=layout, dtype=dtype)
    x, _ = next(db.batches(24))
    assert x.dtype == want.dtype and x.flags.c_contiguous
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(db[5][0], want[5])
    shuffled, _ = next(db.batches(24, shuffle=True, seed=3))
    perm = np.random.default_rng([3, 0]).permutation(24)
    np.testing.assert_array_equal(shuffled, want[perm])


def test_rgb_leaves_gray_and_float_records(fixtures):
    gray = caffe_lmdb.open(fixtures / "imageset_gray_24x20", channel_order="RGB")
    np.testing.assert_array_equal(next(gray.batches(24))[0],
                                  expected(fixtures, "imageset_gray_24x20")["array"])
    feats = caffe_lmdb.open(fixtures / "features_data_lmdb", channel_order="RGB")
    np.testing.assert_array_equal(next(feats.batches(24))[0],
                                  expected(fixtures, "features_data_lmdb")["array"])


def test_shuffle_is_a_seeded_permutation_per_epoch(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=50)
    db = caffe_lmdb.open(path)
    epochs = []
    for epoch in range(3):
        got = np.concatenate([y for _, y in db.batches(8, shuffle=True, seed=11)])
        assert sorted(got) == sorted(labels)
        epochs.append(got)
    assert not np.array_equal(epochs[0], epochs[1])
    again = np.concatenate([y for _, y in caffe_lmdb.open(path).batches(8, shuffle=True,
                                                                          seed=11)])
    np.testing.assert_array_equal(again, epochs[0])
    fixed = np.concatenate([y for _, y in db.batches(8, shuffle=True, seed=11, epoch=1)])
    np.testing.assert_array_equal(fixed, epochs[1])
    # images stay paired with their labels
    for x, y in db.batches(16, shuffle=True, seed=5):
        np.testing.assert_array_equal(x, images[(y - 1) // 3])


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_disjoint_and_cover(tmp_path, shuffle, world):
    path, _, labels = images_db(tmp_path / "db", n=23)
    seen = []
    for rank in range(world):
        db = caffe_lmdb.open(path)
        for _, y in db.batches(5, shuffle=shuffle, seed=7, shard=(rank, world)):
            seen.extend(y.tolist())
    assert sorted(seen) == sorted(labels.tolist())


def test_shard_with_shuffle_needs_seed(tmp_path):
    path, _, _ = images_db(tmp_path / "db", n=5)
    with pytest.raises(ValueError, match="seed"):
        next(caffe_lmdb.open(path).batches(2, shuffle=True, shard=(0, 2)))
    with pytest.raises(ValueError, match="rank"):
        next(caffe_lmdb.open(path).batches(2, shard=(2, 2)))


def test_drop_last_and_partial_batch(tmp_path):
    path, images, _ = images_db(tmp_path / "db", n=10)
    db = caffe_lmdb.open(path)
    assert [len(x) for x, _ in db.batches(4)] == [4, 4, 2]
    assert [len(x) for x, _ in db.batches(4, drop_last=True)] == [4, 4]


def test_batches_are_recycled_only_when_released(tmp_path):
    path, images, _ = images_db(tmp_path / "db", n=40, shape=(1, 2, 2))
    db = caffe_lmdb.open(path)
    kept = list(db.batches(4))  # the consumer holds every batch: none may be overwritten
    np.testing.assert_array_equal(np.concatenate([x for x, _ in kept]), images)
    images_ids, label_ids = set(), set()
    for x, y in db.batches(4):  # the loop holds one batch while the next is made: two arrays
        images_ids.add(id(_owner(x)))  # (small records: batches are views of a larger block)
        label_ids.add(id(_owner(y)))
    assert len(images_ids) <= 2 and len(label_ids) <= 2
    same = [x for x, _ in db.batches(4, reuse=True)]
    assert all(x is same[0] for x in same)


def _owner(a):
    return a if a.base is None else a.base


def test_small_records_are_decoded_in_blocks_and_recycled(tmp_path):
    # 1x28x28 records: a sequential pass decodes several batches at once; each batch is a view
    # of its block, and a block is refilled only once no batch of it is held
    path, images, labels = images_db(tmp_path / "db", n=3000, shape=(1, 28, 28))
    db = caffe_lmdb.open(path)
    kept = list(db.batches(100))
    assert len({id(_owner(x)) for x, _ in kept}) < len(kept)  # blocks of several batches
    np.testing.assert_array_equal(np.concatenate([x for x, _ in kept]), images)
    np.testing.assert_array_equal(np.concatenate([y for _, y in kept]), labels)
    owners = set()
    for x, y in db.batches(100):
        owners.add(id(_owner(x)))
        assert len(x) == 100 and len(y) == 100
    assert len(owners) <= 2
    np.testing.assert_array_equal(np.concatenate([x for x, _ in kept]), images)  # untouched
    last = list(db.batches(128, drop_last=True))
    assert len(last) == 3000 // 128
    np.testing.assert_array_equal(np.concatenate([x for x, _ in last]), images[:len(last) * 128])


def test_read_positions_in_given_order(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=30)
    db = caffe_lmdb.open(path)
    x, y = db.read([29, 0, 5, 5, -1])
    np.testing.assert_array_equal(y, labels[[29, 0, 5, 5, 29]])
    np.testing.assert_array_equal(x, images[[29, 0, 5, 5, 29]])
    x, y = db[3:9:2]
    np.testing.assert_array_equal(y, labels[3:9:2])
    with pytest.raises(IndexError):
        db.read([30])


def test_unpadded_keys_read_in_byte_order(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=12, keyfmt="%d")
    db = caffe_lmdb.open(path)
    assert list(db.keys())[:4] == [b"0", b"1", b"10", b"11"]
    assert db[2][1] == labels[10]


def test_dense_and_packed_key_index(tmp_path):
    dense = caffe_lmdb.open(images_db(tmp_path / "a", n=20, start=5)[0])
    assert dense.keys().nbytes == 0
    assert dense.keys()[0] == b"00000005" and dense.index(b"00000024") == 19
    assert dense.keys().take([3, 0]) == [b"00000008", b"00000005"]
    with pytest.raises(KeyError):
        dense.index("00000004")
    gap = write_lmdb(tmp_path / "b", [(b"%08d" % i, datum_bytes(1, 1, 1, data=b"x", label=i))
                                      for i in (0, 1, 3)])
    packed = caffe_lmdb.open(gap)
    assert packed.keys().nbytes > 0
    assert list(packed.keys()) == [b"00000000", b"00000001", b"00000003"]
    assert packed.keys().take([2, 0]) == [b"00000003", b"00000000"]
    assert [label for _, label in packed] == [0, 1, 3]


def test_pickle_is_path_and_options_and_reopens(tmp_path):
    path, images, _ = images_db(tmp_path / "db", n=6)
    db = caffe_lmdb.open(path, layout="HWC")
    state = pickle.dumps(db)
    assert len(state) < 600
    clone = pickle.loads(state)  # same process: shares the environment
    np.testing.assert_array_equal(clone[2][0], images[2].transpose(1, 2, 0))
    db.close()
    np.testing.assert_array_equal(clone[3][0], images[3].transpose(1, 2, 0))


def test_two_handles_share_one_environment(tmp_path):
    path, images, _ = images_db(tmp_path / "db", n=3)
    a, b = caffe_lmdb.open(path), caffe_lmdb.open(str(path) + "/")
    assert a.env is b.env
    a.close()
    np.testing.assert_array_equal(b[1][0], images[1])


def test_no_lock_file_and_read_only_media(tmp_path):
    path, images, _ = images_db(tmp_path / "db", n=3)
    (path / "lock.mdb").unlink()
    path.chmod(0o555)
    (path / "data.mdb").chmod(0o444)
    try:
        db = caffe_lmdb.open(path)
        np.testing.assert_array_equal(db[0][0], images[0])
        assert not (path / "lock.mdb").exists()
    finally:
        path.chmod(0o755)


def test_wrong_paths_give_clear_errors(tmp_path, fixtures):
    with pytest.raises(NotADatumDBError, match="does not exist"):
        caffe_lmdb.open(tmp_path / "missing")
    with pytest.raises(NotADatumDBError, match="pass the folder"):
        caffe_lmdb.open(fixtures / "mnist_lmdb" / "data.mdb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotADatumDBError, match="no data.mdb"):
        caffe_lmdb.open(tmp_path / "empty")
    with pytest.raises(NotADatumDBError, match="not an LMDB folder"):
        caffe_lmdb.open(fixtures / "mean_raw_32x32.binaryproto")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "data.mdb").write_bytes(b"\0" * 8192)
    with pytest.raises(NotADatumDBError, match="not an LMDB data file"):
        caffe_lmdb.open(tmp_path / "junk")


@pytest.mark.parametrize("value,looks_like", [
    (None, "JPEG"),
    (pickle.dumps({"a": 1}), "pickle"),
    (b"\x93NUMPY\x01\x00", "NumPy"),
    (b'{"label": 3}', "JSON"),
    (b"\x01\x02\x03", "binary data starting 01 02 03"),
])
def test_values_that_are_not_datums(tmp_path, fixtures, value, looks_like):
    if value is None:  # a bare image file as the value (as some non-Caffe LMDBs store)
        value = (fixtures / "inputs" / "images" / "cat" / "img_000.jpg").read_bytes()
    write_lmdb(tmp_path / "db", [(b"a", value)])
    with pytest.raises(NotADatumDBError, match=f"key 'a' is not a .*{looks_like}"):
        caffe_lmdb.open(tmp_path / "db")


def test_bad_record_later_names_key(tmp_path):
    good = datum_bytes(1, 2, 2, data=b"abcd", label=1, encoded=False)
    write_lmdb(tmp_path / "db", [(b"k0", good), (b"k1", good), (b"k2", b"\x0a\xff")])
    db = caffe_lmdb.open(tmp_path / "db")
    with pytest.raises(caffe_lmdb.DatumDecodeError, match="k2"):
        db[2]
    with pytest.raises(caffe_lmdb.DatumDecodeError, match="k2"):
        list(db.batches(3))


def test_mixed_shape_second_half_named(tmp_path):
    items = [(b"%04d" % i, datum_bytes(1, 2, 2 if i != 300 else 3,
                                       data=b"x" * (4 if i != 300 else 6), label=i))
             for i in range(400)]
    db = caffe_lmdb.open(write_lmdb(tmp_path / "db", items))
    with pytest.raises(ShapeMismatchError, match="0300"):
        list(db.batches(400, reuse=True))
    with pytest.raises(ShapeMismatchError, match="0300"):
        list(db.batches(400))


def test_encoded_batches_shape_change_between_batches(tmp_path, fixtures):
    images = fixtures / "inputs" / "images"
    a = encode_image(images / "cat" / "img_000.jpg", 1, resize=(8, 6), encode="png")
    b = encode_image(images / "cat" / "img_000.jpg", 2, resize=(5, 7), encode="png")
    db = caffe_lmdb.open(write_lmdb(tmp_path / "db", [(b"0", a), (b"1", a), (b"2", b)]))
    shapes = [x.shape for x, _ in db.batches(2)]
    assert shapes == [(2, 3, 8, 6), (1, 3, 5, 7)]
    with pytest.raises(ShapeMismatchError, match="'2'"):
        next(db.batches(3))


def test_empty_database(tmp_path):
    env = lmdb.open(str(tmp_path / "db"))
    env.close()
    db = caffe_lmdb.open(tmp_path / "db")
    assert len(db) == 0 and list(db) == [] and list(db.batches(4)) == []


def test_reader_does_not_change_fixture(fixtures):
    before = read_lmdb(fixtures / "mnist_lmdb")
    db = caffe_lmdb.open(fixtures / "mnist_lmdb")
    list(db.batches(30, shuffle=True, seed=1))
    db.close()
    assert read_lmdb(fixtures / "mnist_lmdb") == before
    assert not (fixtures / "mnist_lmdb" / "lock.mdb").exists()


def test_lock_true_reads_a_database_being_written(tmp_path):
    import subprocess
    import sys

    path, _, labels = images_db(tmp_path / "db", n=5)
    db = caffe_lmdb.open(path, lock=True)
    assert len(db) == 5 and (path / "lock.mdb").exists()
    writer = ("import lmdb, sys; from caffe_lmdb.format.datum import datum_bytes\n"
              "env = lmdb.open(sys.argv[1], map_size=1 << 30)\n"
              "with env.begin(write=True) as txn:\n"
              "    for i in range(5, 9):\n"
              "        txn.put(b'%08d' % i, datum_bytes(3, 4, 5, data=bytes(60), label=100 + i,"
              " encoded=False))\n")
    subprocess.run([sys.executable, "-c", writer, str(path)], check=True)
    assert len(db) == 5  # the index is a snapshot
    db.refresh()
    assert len(db) == 9 and db[8][1] == 108 and db[4][1] == labels[4]


def test_a_db_collected_while_the_registry_is_busy_does_not_deadlock(fixtures):
    """A DatumDB whose __del__ runs while this thread holds the registry's lock (the garbage
    collector can run inside lmdb.open) must not wait for that lock forever."""
    import gc
    import threading

    from caffe_lmdb.storage import lmdb as reader

    def collect_inside_the_lock():
        db = caffe_lmdb.open(fixtures / "mnist_lmdb")
        assert len(db) == 100  # opens its environment
        with reader._REGISTRY.lock:
            del db
            gc.collect()

    worker = threading.Thread(target=collect_inside_the_lock, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "releasing a DatumDB inside the registry's lock deadlocked"


@pytest.mark.parametrize("width,start", [(5, 0), (8, 7), (10, 123), (18, 10 ** 17)])
def test_dense_index_makes_the_keys_of_a_batch_as_printf_does(width, start):
    """Shuffled batches ask a %0Nd index for the keys of many positions at once (NumPy digits);
    they must be exactly b"%0*d" of each number, in the order asked."""
    from caffe_lmdb.read.keyindex import DenseKeys as _DenseKeys

    index = _DenseKeys(width, start, 1000)
    positions = np.array([999, 0, 1, 500, 9, 10, 99, 100], np.int64)
    assert index.take(positions) == [b"%0*d" % (width, start + p) for p in positions.tolist()]
    assert index.take(positions[:0]) == []
