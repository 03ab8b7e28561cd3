"""LevelDB, Caffe's other backend: the fixtures written by Caffe's tools with --backend=leveldb
read back equal to their LMDB twins; our converters and compute-mean with --backend=leveldb
reproduce them key for key and value for value; migrate; kill and resume; other processes;
read-only folders; a database held open elsewhere.

Every fixture LevelDB is copied to tmp before it is opened: any open rewrites the folder."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import expected, read_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import (
    DatabaseLockedError,
    MissingDependencyError,
    NotADatumDBError,
    OutputExistsError,
    ResumeError,
)
from caffe_lmdb.storage import leveldb as engine
from caffe_lmdb.tools import dbinfo
from caffe_lmdb.write import sink

try:
    plyvel = engine.import_plyvel()  # plyvel, or plyvel_next on Python >= 3.13
except MissingDependencyError as exc:
    if os.environ.get("CAFFE_LMDB_REQUIRE_FIXTURES") == "1":  # CI: the test extra has it
        raise
    pytest.skip(str(exc), allow_module_level=True)

TWINS = {
    "imageset_raw_32x32_leveldb": "imageset_raw_32x32",
    "imageset_encoded_passthrough_leveldb": "imageset_encoded_passthrough",
    "mnist_leveldb": "mnist_lmdb",
    "features_ip1_leveldb": "features_ip1_lmdb",
}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """LMDB caches go to tmp, never to the user's ~/.cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CAFFE_LMDB_CACHE", str(folder))
    return folder


def copy_fixture(fixtures, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(fixtures / "leveldb" / name, target)
    target.chmod(0o755)  # the fixtures may have no write bits (CI's copy has none)
    for child in target.iterdir():
        child.chmod(0o644)
    return target


def read_leveldb(path):
    """All (key, value) pairs of a LevelDB, in key order, read with plyvel itself."""
    db = plyvel.DB(str(path), create_if_missing=False)
    try:
        return list(db.iterator())
    finally:
        db.close()


def items_of(db):
    """All (key, value) pairs of an open DatumDB (py-lmdb refuses a second open of an LMDB)."""
    with db.begin() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.iter_items()]


def cli(*args):
    return main([str(a) for a in args])


# ---------------------------------------------------------------------------------------------
# Reading: every fixture equals its LMDB twin
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TWINS))
def test_fixture_reads_back_equal_to_its_lmdb_twin(fixtures, tmp_path, name):
    path = copy_fixture(fixtures, name, tmp_path)
    twin_path = fixtures / TWINS[name]
    exp = expected(fixtures, f"leveldb/{name}")
    db, twin = caffe_lmdb.open(path), caffe_lmdb.open(twin_path)
    assert db.backend == "leveldb" and twin.backend == "lmdb" and db.cache_path is None
    # the raw records, through the reader's read view, against Caffe's LMDB and expected/
    items = items_of(db)
    assert items == items_of(twin)
    assert [k.decode() for k, _ in items] == list(exp["keys"])
    assert [hashlib.sha256(v).hexdigest() for _, v in items] == list(exp["value_sha256"])
    # the same API, the same results
    assert len(db) == len(twin) == len(exp["keys"])
    assert list(db.keys()) == list(twin.keys())
    for i in (0, 5, -1):
        a, b = db[i], twin[i]
        assert a[1] == b[1] and np.array_equal(a[0], b[0])
    key = db.keys()[3]
    assert db.index(key) == 3 and db.get(key)[1] == twin.get(key)[1]
    labels = [label for _, label in db]
    assert labels == [label for _, label in twin]
    if str(exp["kind"]) != "encoded":
        for kw in (dict(), dict(shuffle=True, seed=3), dict(shuffle=True, seed=3, shard=(1, 3))):
            got = list(db.batches(7, **kw))
            want = list(twin.batches(7, **kw))
            assert len(got) == len(want)
            for (x, y), (u, v) in zip(got, want, strict=True):
                assert np.array_equal(x, u) and np.array_equal(y, v)
        images, labels = db.read([4, 0, 2])
        assert np.array_equal(images, np.stack([np.asarray(exp["array"][i]) for i in (4, 0, 2)]))
    else:  # records of several sizes: one at a time
        color = caffe_lmdb.open(path, color=True)  # shares this process's handle
        arrays = exp["array"]
        for i in range(len(db)):
            assert np.array_equal(db[i][0], twin[i][0])
            assert np.array_equal(color[i][0], np.asarray(arrays[i]))
        color.close()
    a, b = dbinfo.verify(db), dbinfo.verify(twin)
    assert (a.entries, a.kinds, a.shapes, a.labels, a.problem_count) == \
        (b.entries, b.kinds, b.shapes, b.labels, b.problem_count)
    db.close()


def test_read_features_compute_mean_export_on_leveldb(fixtures, tmp_path):
    feats = copy_fixture(fixtures, "features_ip1_leveldb", tmp_path)
    assert np.array_equal(caffe_lmdb.read_features(feats),
                          caffe_lmdb.read_features(fixtures / "features_ip1_lmdb"))
    raw = copy_fixture(fixtures, "imageset_raw_32x32_leveldb", tmp_path)
    mean = caffe_lmdb.compute_mean(raw, backend="leveldb")
    assert np.array_equal(mean, np.load(fixtures / "expected" / "mean_raw_32x32.npy")[0])
    n = dbinfo.export(raw, tmp_path / "out.npz", npz=True)
    assert n == 24
    with np.load(tmp_path / "out.npz") as z:
        assert np.array_equal(z["images"], expected(fixtures, "imageset_raw_32x32")["array"])
    assert dbinfo.export(raw, tmp_path / "images") == 24
    assert (tmp_path / "images" / "list.txt").read_text().splitlines()[0] == "cat/img_000.png 0"


def test_backend_is_detected_forced_and_unknown_folders_say_what_they_hold(fixtures, tmp_path):
    path = copy_fixture(fixtures, "mnist_leveldb", tmp_path)
    assert caffe_lmdb.open(path, backend="LEVELDB").backend == "leveldb"
    with pytest.raises(NotADatumDBError, match="holds a LevelDB.*not an LMDB"):
        caffe_lmdb.open(path, backend="lmdb")
    with pytest.raises(NotADatumDBError, match="holds an LMDB.*not a LevelDB"):
        caffe_lmdb.open(fixtures / "mnist_lmdb", backend="leveldb")
    with pytest.raises(ValueError, match="unknown backend 'rocksdb'"):
        caffe_lmdb.open(path, backend="rocksdb")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "notes.txt").write_text("x")
    (odd / "000003.log").write_text("x")
    with pytest.raises(NotADatumDBError, match=r"not a LevelDB \(it holds 2 entries, e.g. "
                       r"000003.log, notes.txt\); it looks like a damaged LevelDB"):
        caffe_lmdb.open(odd)


def test_without_plyvel_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "plyvel", None)
    monkeypatch.setitem(sys.modules, "plyvel_next", None)
    monkeypatch.setattr(engine, "_plyvel", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "caffe_lmdb\[leveldb\]"'):
        engine.import_plyvel()


def test_plyvel_next_is_used_when_plyvel_is_absent(monkeypatch):
    fake = type(sys)("plyvel_next")
    monkeypatch.setitem(sys.modules, "plyvel", None)
    monkeypatch.setitem(sys.modules, "plyvel_next", fake)
    monkeypatch.setattr(engine, "_plyvel", None)
    assert engine.import_plyvel() is fake


# ---------------------------------------------------------------------------------------------
# Writing: the converters with --backend=leveldb reproduce Caffe's LevelDBs
# ---------------------------------------------------------------------------------------------


def test_convert_imageset_and_mnist_with_leveldb_reproduce_the_fixtures(fixtures, tmp_path):
    images = f"{fixtures / 'inputs' / 'images'}/"
    listing = fixtures / "inputs" / "images" / "list.txt"
    raw, enc, mnist = tmp_path / "raw", tmp_path / "enc", tmp_path / "mnist"
    assert cli("convert-imageset", "--backend=leveldb", "--resize_height=32",
               "--resize_width=32", "--quiet", images, listing, raw) == 0
    assert cli("convert-imageset", "-backend", "LEVELDB", "-encoded", "--quiet", images,
               listing, enc) == 0
    mn = fixtures / "inputs" / "mnist"
    assert cli("convert-mnist", mn / "images-idx3-ubyte", mn / "labels-idx1-ubyte", mnist,
               "-backend=leveldb", "--quiet") == 0
    for ours, name in ((raw, "imageset_raw_32x32_leveldb"),
                       (enc, "imageset_encoded_passthrough_leveldb"),
                       (mnist, "mnist_leveldb")):
        assert engine.is_leveldb(str(ours)) and not (ours / "data.mdb").exists()
        theirs = copy_fixture(fixtures, name, tmp_path)
        assert read_leveldb(ours) == read_leveldb(theirs)


def test_compute_mean_and_features_commands_on_leveldb(fixtures, tmp_path, capsys):
    raw = copy_fixture(fixtures, "imageset_raw_32x32_leveldb", tmp_path)
    out = tmp_path / "mean.binaryproto"
    assert cli("compute-mean", "-backend=leveldb", raw, out) == 0
    assert out.read_bytes() == (fixtures / "leveldb" / "mean_raw_32x32_leveldb.binaryproto"
                                ).read_bytes()
    assert "mean_value channel [0]: 142.554" in capsys.readouterr().out
    assert cli("compute-mean", "--backend", "lmdb", raw, out) == 1
    assert "holds a LevelDB" in capsys.readouterr().err
    feats = copy_fixture(fixtures, "features_ip1_leveldb", tmp_path)
    assert cli("features", feats, "--backend=LEVELDB", "--out", tmp_path / "f.npy") == 0
    assert np.array_equal(np.load(tmp_path / "f.npy"),
                          expected(fixtures, "features_ip1_lmdb")["array"])


def test_write_features_datum_writer_write_arrays_with_leveldb(fixtures, tmp_path):
    array = caffe_lmdb.read_features(fixtures / "features_ip1_lmdb")
    caffe_lmdb.write_features(tmp_path / "feats", array, backend="leveldb")
    theirs = copy_fixture(fixtures, "features_ip1_leveldb", tmp_path)
    assert read_leveldb(tmp_path / "feats") == read_leveldb(theirs)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 2, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 9, 50)
    for backend in ("lmdb", "leveldb"):
        caffe_lmdb.write_arrays(tmp_path / f"arrays_{backend}", images, labels, backend=backend,
                                commit_every=7)
        with caffe_lmdb.DatumWriter(tmp_path / f"writer_{backend}", backend=backend,
                                    commit_every=4) as w:
            for i in (5, 1, 9, 3):  # keys out of order: looked up, not appended
                w.put(images[i], int(labels[i]), key=f"k{i}")
            with pytest.raises(ValueError, match="already in"):
                w.put(images[0], 0, key="k1")
        assert w.close().written == 4
    assert read_leveldb(tmp_path / "arrays_leveldb") == read_lmdb(tmp_path / "arrays_lmdb")
    assert read_leveldb(tmp_path / "writer_leveldb") == read_lmdb(tmp_path / "writer_lmdb")
    summary = caffe_lmdb.DatumWriter(tmp_path / "writer_leveldb", backend="leveldb",
                                     resume=True).close()
    assert summary.written == 4 and "of LevelDB files" in str(summary)


def _cifar_inputs(folder, per_batch=7):
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(rng.integers(0, 256, per_batch * 3073, dtype=np.uint8)
                                    .tobytes())


def test_convert_cifar_and_folder_with_leveldb_equal_the_lmdb_ones(tmp_path):
    _cifar_inputs(tmp_path / "cifar")
    assert cli("convert-cifar", tmp_path / "cifar", tmp_path / "out", "lmdb", "--quiet") == 0
    assert cli("convert-cifar", tmp_path / "cifar", tmp_path / "out", "LEVELDB", "--quiet") == 0
    for split in ("train", "test"):
        lmdb_items = read_lmdb(tmp_path / "out" / f"cifar10_{split}_lmdb")
        assert len(lmdb_items) == (35 if split == "train" else 7)
        assert read_leveldb(tmp_path / "out" / f"cifar10_{split}_leveldb") == lmdb_items
    sample = os.path.join(os.path.dirname(caffe_lmdb.__file__), "sample_data")
    for backend in ("lmdb", "leveldb"):
        assert cli("convert-folder", sample, tmp_path / f"folder_{backend}", "--quiet",
                   f"--backend={backend}", "--resize_height=8", "--resize_width=8") == 0
    assert read_leveldb(tmp_path / "folder_leveldb") == read_lmdb(tmp_path / "folder_lmdb")
    assert (tmp_path / "folder_leveldb" / "labels.txt").read_text() == "circle\nsquare\ntriangle\n"


def test_merge_joins_leveldb_parts_into_an_lmdb(tmp_path):
    images = np.arange(40 * 4, dtype=np.uint8).reshape(40, 1, 2, 2)
    caffe_lmdb.write_arrays(tmp_path / "whole", images, list(range(40)))
    for k in range(2):
        caffe_lmdb.write_arrays(tmp_path / f"part{k}", images, list(range(40)),
                                shard=(k, 2), backend="leveldb")
    caffe_lmdb.merge(tmp_path / "merged", [tmp_path / "part0", tmp_path / "part1"])
    assert read_lmdb(tmp_path / "merged") == read_lmdb(tmp_path / "whole")


def test_output_rules_for_leveldb_folders(fixtures, tmp_path):
    mn = fixtures / "inputs" / "mnist"
    args = (mn / "images-idx3-ubyte", mn / "labels-idx1-ubyte")
    db = tmp_path / "m"
    caffe_lmdb.convert_mnist(*args, db, backend="leveldb")
    with pytest.raises(OutputExistsError, match="already holds a LevelDB"):
        caffe_lmdb.convert_mnist(*args, db, backend="leveldb")
    with pytest.raises(ResumeError, match="holds a LevelDB, not an LMDB"):
        caffe_lmdb.convert_mnist(*args, db, resume=True)
    with pytest.raises(caffe_lmdb.CaffeLMDBError, match="inside the existing LevelDB"):
        caffe_lmdb.convert_mnist(*args, db / "inner")
    again = caffe_lmdb.convert_mnist(*args, db, backend="leveldb", resume=True)
    assert again.written == 100
    # overwrite with the other engine: every LevelDB file goes, the LMDB replaces it
    caffe_lmdb.convert_mnist(*args, db, overwrite=True)
    assert sorted(os.listdir(db)) == ["convert.log", "convert_state.json", "data.mdb",
                                      "lock.mdb"]
    assert read_lmdb(db) == read_leveldb(copy_fixture(fixtures, "mnist_leveldb", tmp_path))


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import caffe_lmdb
    def slow(done, total):
        print(done, flush=True)
        time.sleep(0.01)
    caffe_lmdb.convert_imageset(sys.argv[1], sys.argv[2], sys.argv[3], resize_height=24,
                                resize_width=24, workers=2, commit_every=7, progress=slow,
                                shuffle=True, backend="leveldb")
""")


def test_kill_9_then_resume_equals_an_uninterrupted_run(fixtures, tmp_path):
    lines = (fixtures / "inputs" / "images" / "list.txt").read_text().splitlines()
    listing = tmp_path / "list.txt"
    listing.write_text("".join(line + "\n" for line in lines * 10))
    root = f"{fixtures / 'inputs' / 'images'}/"
    db = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, root, str(listing), str(db)],
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # a few commits behind it, then kill -9
        if int(line) >= 60:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prefix = read_leveldb(db)  # opens: LevelDB replays its log, whole batches only
    state = json.loads((db / sink.STATE_NAME).read_text())
    assert 0 < len(prefix) < 240 and not state["done"]
    summary = caffe_lmdb.convert_imageset(root, listing, db, resize_height=24, resize_width=24,
                                          shuffle=True, resume=True, backend="leveldb")
    caffe_lmdb.convert_imageset(root, listing, tmp_path / "whole", resize_height=24,
                                resize_width=24, shuffle=True, seed=state["job"]["seed"],
                                backend="leveldb")
    whole = read_leveldb(tmp_path / "whole")
    assert prefix == whole[:len(prefix)]
    assert read_leveldb(db) == whole and len(whole) == 240
    assert summary.resumed_from == state["next_index"] > 0 and summary.written == 240


# ---------------------------------------------------------------------------------------------
# migrate
# ---------------------------------------------------------------------------------------------


def test_migrate_round_trip_keeps_every_key_and_value(fixtures, tmp_path, capsys):
    for name in sorted(TWINS):
        src = copy_fixture(fixtures, name, tmp_path)
        items = read_leveldb(src)
        there, back = tmp_path / f"{name}.lmdb", tmp_path / f"{name}.back"
        assert cli("migrate", src, there, "--quiet") == 0
        exp = expected(fixtures, TWINS[name])
        assert read_lmdb(there) == items
        assert [k.decode() for k, _ in items] == list(exp["keys"])
        assert [hashlib.sha256(v).hexdigest() for _, v in items] == list(exp["value_sha256"])
        summary = caffe_lmdb.migrate(there, back)
        assert summary.written == len(items) and summary.backend == "leveldb"
        assert read_leveldb(back) == items
    assert cli("migrate", src, there) == 1
    assert "already holds an LMDB" in capsys.readouterr().err


def test_migrate_grows_the_map_resumes_and_refuses_another_source(tmp_path):
    rng = np.random.default_rng(2)
    values = [rng.bytes(int(n)) for n in rng.integers(1, 20000, 400)]
    src = tmp_path / "src"
    with caffe_lmdb.DatumWriter(src, backend="leveldb") as w:
        for i, v in enumerate(values):
            w.put(v, key=b"%06d" % (i * 7))  # any bytes: migrate does not parse them
    items = read_leveldb(src)
    small = caffe_lmdb.migrate(src, tmp_path / "small", map_size=1 << 20, commit_every=50)
    assert small.map_grown >= 2 and read_lmdb(tmp_path / "small") == items
    # a run killed after its 3rd commit, then resumed
    code = ("import sys, caffe_lmdb; caffe_lmdb.migrate(sys.argv[1], sys.argv[2], "
            "commit_every=50)")
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT="committed:3")
    done = subprocess.run([sys.executable, "-c", code, str(src), str(tmp_path / "cut")],
                          env=env)
    assert done.returncode == -signal.SIGKILL
    assert read_lmdb(tmp_path / "cut") == items[:150]
    with pytest.raises(OutputExistsError):
        caffe_lmdb.migrate(src, tmp_path / "cut")
    resumed = caffe_lmdb.migrate(src, tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 150 and read_lmdb(tmp_path / "cut") == items
    with pytest.raises(ResumeError, match="not left by an interrupted migration"):
        caffe_lmdb.migrate(tmp_path / "small", tmp_path / "cut", backend="lmdb", resume=True)
    # LMDB -> LevelDB, resumed the same way
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT="committed:2")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "small"), str(tmp_path / "lv")],
                   env=env)
    assert read_leveldb(tmp_path / "lv") == items[:100]
    caffe_lmdb.migrate(tmp_path / "small", tmp_path / "lv", resume=True)
    assert read_leveldb(tmp_path / "lv") == items


def test_migrate_detects_a_destination_that_differs(tmp_path, monkeypatch):
    src = tmp_path / "src"
    caffe_lmdb.write_arrays(src, np.zeros((5, 1, 2, 2), np.uint8), backend="leveldb")
    from caffe_lmdb.write import migrate as mig

    real = mig.open_sink

    def corrupting(*a, **k):
        s = real(*a, **k)
        put = s.put
        s.put = lambda key, value, **kw: put(key, value[:-1] + b"\x01", **kw)
        return s

    monkeypatch.setattr(mig, "open_sink", corrupting)
    with pytest.raises(mig.MigrateVerifyError, match="value of source key '00000000' differs"):
        caffe_lmdb.migrate(src, tmp_path / "dst")
    assert not json.loads((tmp_path / "dst" / sink.STATE_NAME).read_text())["done"]


# ---------------------------------------------------------------------------------------------
# Other processes, read-only folders, a database held open elsewhere
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_fork_and_spawn_every_pair(fixtures, tmp_path, method, cache_dir):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset

    exp = expected(fixtures, "mnist_lmdb")
    by_pixels = {exp["array"][i].tobytes(): (i, int(exp["labels"][i])) for i in range(100)}
    assert len(by_pixels) == 100  # every image differs: pixels identify the record
    path = copy_fixture(fixtures, "mnist_leveldb", tmp_path)
    ds = DatumDataset(path)
    assert ds.db.backend == "leveldb" and ds.db.cache_path.startswith(str(cache_dir))
    ds.db[0]
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                        multiprocessing_context=method,
                        generator=torch.Generator().manual_seed(0))
    seen = {}
    for images, labels in loader:
        for image, label in zip(images.numpy(), labels.tolist(), strict=True):
            i, want = by_pixels[image.tobytes()]
            assert label == want
            seen[i] = label
    assert sorted(seen) == list(range(100))


def test_a_forked_child_gets_a_clear_error_not_the_parents_handle(fixtures, tmp_path):
    path = copy_fixture(fixtures, "mnist_leveldb", tmp_path)
    db = caffe_lmdb.open(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what reading gave
        try:
            db[1]
            message = "read"
        except DatabaseLockedError as exc:
            message = str(exc)
        os.write(write, message.encode()[:4000])
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    message = os.read(read, 4096).decode()
    assert "LevelDB serves one process" in message and "cache=True" in message
    assert db[1][1] == int(expected(fixtures, "mnist_lmdb")["labels"][1])  # the parent reads


def test_pickled_reader_reads_the_cache(fixtures, tmp_path, cache_dir):
    import pickle

    path = copy_fixture(fixtures, "imageset_raw_32x32_leveldb", tmp_path)
    db = caffe_lmdb.open(path)
    copy = pickle.loads(pickle.dumps(db))
    assert copy.backend == "leveldb" and copy.cache_path.startswith(str(cache_dir))
    assert read_lmdb(copy.cache_path) == read_lmdb(fixtures / "imageset_raw_32x32")
    assert np.array_equal(copy.read(range(24))[0], db.read(range(24))[0])


def _digests(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_a_read_only_copy_reads_through_one_lmdb_cache(fixtures, tmp_path, cache_dir):
    path = copy_fixture(fixtures, "imageset_raw_32x32_leveldb", tmp_path)
    for name in os.listdir(path):
        (path / name).chmod(0o444)
    path.chmod(0o555)  # no write bit: left alone, even by root
    before = _digests(path)
    try:
        db = caffe_lmdb.open(path)
        assert db.backend == "leveldb" and db.cache_path is not None
        twin = caffe_lmdb.open(fixtures / "imageset_raw_32x32")
        assert list(db.keys()) == list(twin.keys())
        assert np.array_equal(db.read(range(24))[0], twin.read(range(24))[0])
        assert _digests(path) == before  # nothing written in the read-only folder
        made = os.stat(db.cache_path).st_mtime_ns
        again = caffe_lmdb.open(path)  # the cache is reused, not made again
        assert again.cache_path == db.cache_path
        assert os.stat(again.cache_path).st_mtime_ns == made
        assert [n for n in os.listdir(cache_dir) if not n.startswith(".")] == \
            [os.path.basename(db.cache_path)]
        with pytest.raises(NotADatumDBError, match="read-only LevelDB folder"):
            caffe_lmdb.open(path, cache=False)
        # migrate reads a read-only LevelDB too (from a temporary copy of its files)
        caffe_lmdb.migrate(path, tmp_path / "out")
        assert read_lmdb(tmp_path / "out") == items_of(twin)
        assert _digests(path) == before
    finally:
        path.chmod(0o755)


def test_a_changed_leveldb_gets_a_new_cache(tmp_path, cache_dir):
    src = tmp_path / "db"
    caffe_lmdb.write_arrays(src, np.zeros((3, 1, 2, 2), np.uint8), backend="leveldb")
    first = caffe_lmdb.open(src, cache=True)
    assert len(first) == 3
    first.close()
    with caffe_lmdb.DatumWriter(src, backend="leveldb", resume=True) as w:
        w.put(np.ones((1, 2, 2), np.uint8), 1)
    second = caffe_lmdb.open(src, cache=True)
    assert len(second) == 4 and second.cache_path != first.cache_path
    assert not os.path.exists(first.cache_path)  # the stale cache was removed


_HOLD = textwrap.dedent("""
    import sys, time
    from caffe_lmdb.storage.leveldb import import_plyvel
    db = import_plyvel().DB(sys.argv[1], create_if_missing=False)
    print("open", flush=True)
    time.sleep(60)
""")


def test_a_database_held_open_by_another_process_is_a_clear_error(fixtures, tmp_path):
    path = copy_fixture(fixtures, "mnist_leveldb", tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        t0 = time.monotonic()
        with pytest.raises(DatabaseLockedError, match=f"open in another process.*"
                           f"{path / 'LOCK'} is locked"):
            caffe_lmdb.open(path)
        assert time.monotonic() - t0 < 5  # an error at once, not a wait
        with pytest.raises(caffe_lmdb.CaffeLMDBError, match="LOCK is locked"):
            caffe_lmdb.DatumWriter(path, backend="leveldb", resume=True)
        with pytest.raises(caffe_lmdb.CaffeLMDBError, match="LOCK is locked"):
            caffe_lmdb.migrate(path, tmp_path / "out")
        assert cli("info", path) == 1
    finally:
        holder.kill()
        holder.wait()
    assert len(caffe_lmdb.open(path)) == 100  # free again once the holder is gone


def test_the_mode_bits_decide_read_only(tmp_path):
    (tmp_path / "d").mkdir()
    assert not engine.is_read_only(str(tmp_path / "d"))
    (tmp_path / "d").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert engine.is_read_only(str(tmp_path / "d"))
    finally:
        (tmp_path / "d").chmod(0o755)


def test_nothing_written_leaves_no_leveldb_behind(tmp_path):
    (tmp_path / "list.txt").write_text("missing_a.jpg 0\nmissing_b.jpg 1\n")
    with pytest.raises(caffe_lmdb.CaffeLMDBError, match="0 records written"):
        caffe_lmdb.convert_imageset(f"{tmp_path}/", tmp_path / "list.txt", tmp_path / "db",
                                    backend="leveldb")
    assert not (tmp_path / "db").exists()
