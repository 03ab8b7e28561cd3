"""The conversion engine: order, workers, map growth, resume after kill -9, skips, traps."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import cv2
import lmdb
import numpy as np
import pytest
from conftest import read_lmdb

import caffe_lmdb
from caffe_lmdb.errors import (
    ImageReadError,
    KeyTooLongError,
    ListFileError,
    OutputExistsError,
    OutputPathError,
    ResumeError,
    ShapeMismatchError,
)
from caffe_lmdb.write import sink

SAMPLE = os.path.join(os.path.dirname(caffe_lmdb.__file__), "sample_data")


@pytest.fixture
def big_list(fixtures, tmp_path):
    """A list of 260 lines over the fixture images (their two bad lines included)."""
    lines = (fixtures / "inputs" / "images" / "list.txt").read_text().splitlines()
    path = tmp_path / "big_list.txt"
    path.write_text("".join(line + "\n" for line in lines * 10))
    return f"{fixtures / 'inputs' / 'images'}/", path


def test_workers_do_not_change_a_byte(big_list, tmp_path):
    root, list_file = big_list
    opts = dict(resize_height=20, resize_width=16, shuffle=True, seed=5)
    one = caffe_lmdb.convert_imageset(root, list_file, tmp_path / "w1", workers=1, **opts)
    two = caffe_lmdb.convert_imageset(root, list_file, tmp_path / "w2", workers=2, **opts)
    proc = caffe_lmdb.convert_imageset(root, list_file, tmp_path / "p2", workers=2,
                                       executor="process", **opts)
    a = read_lmdb(tmp_path / "w1")
    assert len(a) == 240 and one.written == two.written == proc.written == len(a)
    assert a == read_lmdb(tmp_path / "w2") == read_lmdb(tmp_path / "p2")
    # shuffled with a seed: keys still ascend (%08d of the position), the order is a
    # permutation, and the same seed gives the same order
    keys = [k for k, _ in a]
    assert keys == sorted(keys)
    assert [k[9:] for k in keys] != sorted(k[9:] for k in keys)
    assert len(one.skipped) == 20


def test_map_grows_from_one_mib(big_list, tmp_path):
    root, list_file = big_list
    opts = dict(resize_height=64, resize_width=64, workers=2)
    small = caffe_lmdb.convert_imageset(root, list_file, tmp_path / "small", map_size=1 << 20,
                                        commit_every=50, **opts)
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "ref", map_size=1 << 30, **opts)
    assert small.map_grown >= 2
    assert small.bytes > 2 << 20
    assert read_lmdb(tmp_path / "small") == read_lmdb(tmp_path / "ref")


class _FullAtFirstCommit:
    """A write transaction whose first commit fails with MDB_MAP_FULL (as LMDB can when it
    writes its free list): the sink must grow and replay the whole batch."""
    failures = 0

    def __init__(self, txn):
        self._txn = txn

    def __getattr__(self, name):
        return getattr(self._txn, name)

    def commit(self):
        if _FullAtFirstCommit.failures == 0:
            _FullAtFirstCommit.failures += 1
            self._txn.abort()
            raise lmdb.MapFullError("MDB_MAP_FULL (simulated at commit)")
        return self._txn.commit()


def test_map_full_at_commit_replays_the_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(sink.LMDBSink, "_begin",
                        lambda self: _FullAtFirstCommit(self.env.begin(write=True)))
    _FullAtFirstCommit.failures = 0
    values = [bytes([i]) * (100 + i) for i in range(30)]
    sink.prepare_output(tmp_path / "db")
    s = sink.LMDBSink(tmp_path / "db", map_size=1 << 20, commit_every=1000)
    for i, v in enumerate(values):
        s.put(b"%08d" % i, v)
    s.commit()
    assert s.grown == 1 and s.entries == 30
    s.close()
    assert read_lmdb(tmp_path / "db") == [(b"%08d" % i, v) for i, v in enumerate(values)]


_KILLED_RUN = textwrap.dedent("""
    import sys, time
    import caffe_lmdb
    def slow(done, total):
        print(done, flush=True)
        time.sleep(0.01)
    caffe_lmdb.convert_imageset(sys.argv[1], sys.argv[2], sys.argv[3], resize_height=24,
                                resize_width=24, workers=2, commit_every=7, progress=slow,
                                shuffle=True)
""")


def test_kill_9_then_resume_equals_an_uninterrupted_run(big_list, tmp_path):
    root, list_file = big_list
    db = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, root, str(list_file), str(db)],
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until a few commits are behind it, then kill -9
        if int(line) >= 60:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prefix = read_lmdb(db)
    state = json.loads((db / sink.STATE_NAME).read_text())
    assert 0 < len(prefix) < 240 and not state["done"]
    # resume draws the same shuffle from the saved seed, and finishes the job
    summary = caffe_lmdb.convert_imageset(root, list_file, db, resize_height=24,
                                          resize_width=24, shuffle=True, resume=True)
    seed = state["job"]["seed"]
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "whole", resize_height=24,
                                resize_width=24, shuffle=True, seed=seed)
    whole = read_lmdb(tmp_path / "whole")
    assert prefix == whole[:len(prefix)]  # what survived the kill is a valid prefix
    assert read_lmdb(db) == whole
    assert summary.resumed_from == state["next_index"] > 0
    assert summary.written == 240 and len(summary.skipped) == 20
    # a finished DB resumes to itself
    again = caffe_lmdb.convert_imageset(root, list_file, db, resize_height=24,
                                        resize_width=24, shuffle=True, resume=True)
    assert again.written == 240 and read_lmdb(db) == whole


def test_resume_refuses_other_options_or_foreign_db(big_list, tmp_path):
    root, list_file = big_list
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "db", resize_height=8,
                                resize_width=8)
    with pytest.raises(ResumeError, match="resize"):
        caffe_lmdb.convert_imageset(root, list_file, tmp_path / "db", resume=True)
    env = lmdb.open(str(tmp_path / "foreign"))
    with env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    env.close()
    with pytest.raises(ResumeError, match="convert_state.json"):
        caffe_lmdb.convert_imageset(root, list_file, tmp_path / "foreign", resume=True)


def test_interrupt_keeps_a_valid_prefix(big_list, tmp_path):
    root, list_file = big_list

    def stop(done, total):
        if done >= 50:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caffe_lmdb.convert_imageset(root, list_file, tmp_path / "db", progress=stop,
                                    commit_every=1000)
    kept = read_lmdb(tmp_path / "db")
    assert len(kept) >= 40  # committed on the way out, not lost with the open batch
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "db", resume=True)
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "ref")
    assert read_lmdb(tmp_path / "db") == read_lmdb(tmp_path / "ref")


def test_strict_stops_at_the_first_unreadable_image(big_list, tmp_path):
    root, list_file = big_list
    with pytest.raises(ImageReadError, match=r"big_list.txt:4: could not read image"):
        caffe_lmdb.convert_imageset(root, list_file, tmp_path / "db", strict=True)
    assert [k for k, _ in read_lmdb(tmp_path / "db")] == [
        b"00000000_cat/img_000.jpg", b"00000001_dog/img_001.png",
        b"00000002_bird with space/img_002.JPEG"]


@pytest.mark.parametrize("line, message", [
    ("cat/img_000.jpg", r"bad.txt:2: expected a path, a label"),
    ("cat/img_000.jpg zero", r"bad.txt:2: label 'zero' is not an integer"),
    ("cat/img_000.jpg 1.5", r"bad.txt:2: label '1.5' is not an integer"),
    ("", r"bad.txt:2: .*an empty line"),
])
def test_list_file_errors_name_the_line(fixtures, tmp_path, line, message):
    bad = tmp_path / "bad.txt"
    bad.write_text(f"cat/img_000.jpg 0\n{line}\ndog/img_001.png 1\n")
    with pytest.raises(ListFileError, match=message) as info:
        caffe_lmdb.convert_imageset(fixtures / "inputs" / "images", bad, tmp_path / "db")
    assert info.value.lineno == 2
    assert not (tmp_path / "db").exists()  # nothing is created before the list is valid


def test_paths_with_spaces_and_trailing_blank_lines(fixtures, tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("bird with space/img 014.jpeg 2\r\ncat/img 009.jpeg 0\n\n\n")
    s = caffe_lmdb.convert_imageset(fixtures / "inputs" / "images", lst, tmp_path / "db")
    assert [k for k, _ in read_lmdb(tmp_path / "db")] == [
        b"00000000_bird with space/img 014.jpeg", b"00000001_cat/img 009.jpeg"]
    assert s.written == 2 and not s.skipped


def test_key_too_long_names_the_line_and_index_keys_fix_it(tmp_path):
    deep = tmp_path / "imgs" / ("d" * 200) / ("e" * 200)
    deep.mkdir(parents=True)
    name = "f" * 150 + ".png"
    cv2.imwrite(str(deep / name), np.full((4, 4, 3), 9, np.uint8))
    rel = f"{'d' * 200}/{'e' * 200}/{name}"
    lst = tmp_path / "l.txt"
    lst.write_text(f"{rel} 3\n")
    with pytest.raises(KeyTooLongError, match=r"l.txt:1: .*511.*--index_keys"):
        caffe_lmdb.convert_imageset(tmp_path / "imgs", lst, tmp_path / "db")
    caffe_lmdb.convert_imageset(tmp_path / "imgs", lst, tmp_path / "db", index_keys=True)
    [(key, value)] = read_lmdb(tmp_path / "db")
    assert key == b"00000000" and caffe_lmdb.decode(value)[1] == 3


def test_output_path_rules(fixtures, tmp_path):
    images = fixtures / "inputs" / "images"
    args = (f"{images}/", images / "list.txt")
    caffe_lmdb.convert_imageset(*args, tmp_path / "db", resize_height=8, resize_width=8)
    first = read_lmdb(tmp_path / "db")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        caffe_lmdb.convert_imageset(*args, tmp_path / "db")
    assert read_lmdb(tmp_path / "db") == first  # refused: untouched
    with pytest.raises(OutputPathError, match="inside the existing LMDB"):
        caffe_lmdb.convert_imageset(*args, tmp_path / "db" / "inner")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        caffe_lmdb.convert_imageset(*args, tmp_path / "file")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty"):
        caffe_lmdb.convert_imageset(*args, tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    caffe_lmdb.convert_imageset(*args, tmp_path / "db", overwrite=True)
    assert read_lmdb(tmp_path / "db") != first and len(read_lmdb(tmp_path / "db")) == 24


def test_check_size(fixtures, tmp_path):
    images = fixtures / "inputs" / "images"
    with pytest.raises(ShapeMismatchError, match="--check_size"):
        caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "a",
                                    check_size=True)
    s = caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "b",
                                    check_size=True, resize_height=9, resize_width=9)
    assert s.written == 24


def test_gray_encoded_stores_a_gray_image(fixtures, tmp_path):
    """The one deliberate difference from Caffe: --gray --encoded re-encodes the gray image."""
    images = fixtures / "inputs" / "images"
    caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "db", gray=True,
                                encoded=True)
    for key, value in read_lmdb(tmp_path / "db"):
        arr, _ = caffe_lmdb.decode(value)  # native decode, as Caffe's DataLayer
        assert arr.shape[0] == 1, key


def test_multi_target_list_writes_a_float_db_with_the_same_keys(tmp_path):
    s = caffe_lmdb.convert_imageset(SAMPLE + "/", os.path.join(SAMPLE, "targets.txt"),
                                    tmp_path / "db", targets=4)
    images, targets = read_lmdb(tmp_path / "db"), read_lmdb(tmp_path / "db_targets")
    assert s.targets_path == str(tmp_path / "db_targets")
    assert [k for k, _ in images] == [k for k, _ in targets] and len(images) == 36
    lines = open(os.path.join(SAMPLE, "targets.txt")).read().splitlines()
    for (key, value), line in zip(targets, lines):
        arr, label = caffe_lmdb.decode(value)
        fields = line.split(" ")
        assert arr.dtype == np.float32 and arr.shape == (4, 1, 1)
        assert arr.ravel().tolist() == np.float32([float(v) for v in fields[2:]]).tolist()
        assert label == int(fields[1])
        assert key.endswith(fields[0].encode())
    # shuffled, the targets still follow their image
    caffe_lmdb.convert_imageset(SAMPLE + "/", os.path.join(SAMPLE, "targets.txt"),
                                tmp_path / "shuf", targets=4, shuffle=True, seed=3, workers=2)
    by_path = {line.split(" ")[0]: line for line in lines}
    shuffled = read_lmdb(tmp_path / "shuf_targets")
    assert [k for k, _ in shuffled] == [k for k, _ in read_lmdb(tmp_path / "shuf")]
    assert [k[9:] for k, _ in shuffled] != [k[9:] for k, _ in targets]
    for key, value in shuffled:
        expected_values = [float(v) for v in by_path[key[9:].decode()].split(" ")[2:]]
        assert caffe_lmdb.decode(value)[0].ravel().tolist() == \
            np.float32(expected_values).tolist()
    bad = tmp_path / "bad.txt"
    bad.write_text("circle/circle_00.jpg 0 0.1 0.2 x 0.4\n")
    with pytest.raises(ListFileError, match="bad.txt:1: target values"):
        caffe_lmdb.convert_imageset(SAMPLE, bad, tmp_path / "db2", targets=4)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hanging_image_is_skipped_after_the_timeout(tmp_path, workers):
    """A FIFO blocks the reader forever, like a decoder that hangs: the run goes on."""
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(root / name), np.full((5, 5, 3), 7, np.uint8))
    os.mkfifo(root / "b.jpg")
    lst = tmp_path / "l.txt"
    lst.write_text("a.png 0\nb.jpg 1\nc.png 2\n")
    t = time.perf_counter()
    try:
        s = caffe_lmdb.convert_imageset(f"{root}/", lst, tmp_path / "db", workers=workers,
                                        timeout=0.5)
        assert time.perf_counter() - t < 20
        assert [k for k, _ in read_lmdb(tmp_path / "db")] == [b"00000000_a.png",
                                                                b"00000002_c.png"]
        assert len(s.skipped) == 1 and "gave up after 0.5 s" in s.skipped[0].reason
    finally:  # release the stuck worker thread
        fd = os.open(root / "b.jpg", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


def test_convert_folder(tmp_path):
    s = caffe_lmdb.convert_folder(SAMPLE, tmp_path / "db", resize_height=16, resize_width=16)
    pairs = read_lmdb(tmp_path / "db")
    assert s.written == 36 and len(pairs) == 36
    assert (tmp_path / "db" / "labels.txt").read_text() == "circle\nsquare\ntriangle\n"
    assert pairs[0][0] == b"00000000_circle/circle_00.jpg"
    labels = [caffe_lmdb.decode(v)[1] for _, v in pairs]
    assert labels == [0] * 12 + [1] * 12 + [2] * 12
    assert caffe_lmdb.decode(pairs[0][1])[0].shape == (3, 16, 16)


def test_write_arrays_uint8_float_and_channels_last(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (25, 3, 6, 5), dtype=np.uint8)
    labels = np.arange(25) % 3
    s = caffe_lmdb.write_arrays(tmp_path / "u8", images, labels)
    pairs = read_lmdb(tmp_path / "u8")
    assert s.written == 25 and [k for k, _ in pairs] == [b"%08d" % i for i in range(25)]
    for i, (_, value) in enumerate(pairs):
        assert value == caffe_lmdb.format.datum.array_to_datum_bytes(images[i], int(labels[i]))
        assert value.endswith(b"\x38\x00")  # encoded = false, as DALI needs
    floats = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    caffe_lmdb.write_arrays(tmp_path / "f", floats, [0, 1, 2, 3])
    got, lab = caffe_lmdb.decode_batch([v for _, v in read_lmdb(tmp_path / "f")])
    assert np.array_equal(got, floats) and lab.tolist() == [0, 1, 2, 3]
    caffe_lmdb.write_arrays(tmp_path / "hwc", images.transpose(0, 2, 3, 1), labels,
                            channels_last=True)
    assert read_lmdb(tmp_path / "hwc") == pairs


def test_datum_writer(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    with pytest.raises(RuntimeError):
        with caffe_lmdb.DatumWriter(tmp_path / "db", commit_every=1000) as w:
            w.put(arr, 0)
            w.put(caffe_lmdb.format.datum.array_to_datum_bytes(arr, 5))
            raise RuntimeError("the caller's loop fails")
    pairs = read_lmdb(tmp_path / "db")  # both records were committed on the way out
    assert [k for k, _ in pairs] == [b"00000000", b"00000001"]
    assert caffe_lmdb.decode(pairs[1][1])[1] == 5
    with pytest.raises(OutputExistsError):
        caffe_lmdb.DatumWriter(tmp_path / "db")
    with caffe_lmdb.DatumWriter(tmp_path / "db", resume=True, map_size=1 << 20) as w:
        big = np.zeros((3, 200, 200), np.uint8)
        for _ in range(30):  # 3.6 MB through a 1 MiB map
            w.put(big, 1)
        with pytest.raises(caffe_lmdb.errors.DuplicateKeyError):
            w.put(arr, 1, key="00000000")
    summary = w.close()
    assert summary.written == 32 and summary.map_grown >= 1
    assert read_lmdb(tmp_path / "db")[:2] == pairs


def test_ordered_map_survives_a_dead_process_and_a_hang():
    from caffe_lmdb.write import executors as parallel

    failed = []

    def on_fail(item, reason):
        failed.append((item, reason))
        return -1

    ex = parallel.ProcessExecutor(2)
    try:
        out = list(parallel.ordered_map(_die_on_three, range(8), ex, on_fail=on_fail))
    finally:
        ex.shutdown()
    assert out == [0, 10, 20, -1, 40, 50, 60, 70]
    assert failed == [(3, "its worker process died (the decoder crashed?)")]

    ex = parallel.ThreadExecutor(2)
    release = threading.Event()
    try:
        out = list(parallel.ordered_map(lambda x: release.wait() if x == 2 else x, range(6),
                                        ex, timeout=0.3, on_fail=lambda item, reason: reason))
    finally:
        release.set()
        ex.shutdown()
    assert out[:2] == [0, 1] and out[3:] == [3, 4, 5] and "gave up after 0.3 s" in out[2]
    with pytest.raises(caffe_lmdb.errors.WorkerError, match="gave up"):
        ex = parallel.ThreadExecutor(1)
        try:
            list(parallel.ordered_map(lambda x: time.sleep(5), [1], ex, timeout=0.1))
        finally:
            ex.shutdown()


def _die_on_three(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return 10 * x


def test_prefetch_is_ordered_bounded_and_passes_errors():
    from caffe_lmdb.write.executors import prefetch

    produced = []

    def items(n, fail_at=None):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"bad item {i}")
            produced.append(i)
            yield i

    it = prefetch(items(100), max_bytes=10, size_of=lambda i: 3)
    assert next(it) == 0
    time.sleep(0.2)  # the producer runs ahead by at most 10 bytes: 3 items of 3
    assert len(produced) <= 5
    assert list(it) == list(range(1, 100))
    with pytest.raises(ValueError, match="bad item 7"):
        list(prefetch(items(10, fail_at=7), max_bytes=100))
    produced.clear()
    early = prefetch(items(1000), max_bytes=4)
    assert next(early) == 0
    early.close()  # the consumer stops: so does the producer
    time.sleep(0.2)
    assert len(produced) < 10


def test_blocks_commit_where_single_puts_do(big_list, tmp_path, monkeypatch):
    """Small images come back from the workers in batches, put a block at a time between the
    skipped samples: commits still fall every commit_every records, the saved state counts the
    samples behind each commit, and the records equal those of a record-by-record run."""
    from caffe_lmdb.storage.lmdb import LMDBWriter

    root, list_file = big_list
    opts = dict(resize_height=20, resize_width=16, commit_every=7)
    commits, blocks = [], []
    real_commit, real_many = LMDBWriter.commit, LMDBWriter.put_many

    def commit(self):
        commits.append(self.pending)
        return real_commit(self)

    def put_many(self, keys, values, **kw):
        blocks.append(len(keys))
        return real_many(self, keys, values, **kw)

    monkeypatch.setattr(LMDBWriter, "commit", commit)
    monkeypatch.setattr(LMDBWriter, "put_many", put_many)
    summary = caffe_lmdb.convert_imageset(root, list_file, tmp_path / "blocks", workers=2, **opts)
    assert summary.written == 240 and len(summary.skipped) == 20
    assert max(blocks) > 1  # the block path ran
    made = [c for c in commits if c]  # (the last commits: the rest, then nothing left)
    assert set(made[:-1]) == {7} and 0 < made[-1] <= 7 and sum(made) == 240, made
    monkeypatch.setattr(LMDBWriter, "put_many", lambda *a, **k: pytest.fail("block put"))
    caffe_lmdb.convert_imageset(root, list_file, tmp_path / "single", workers=2,
                                check_size=True, **opts)  # (--check_size: record by record)
    assert read_lmdb(tmp_path / "blocks") == read_lmdb(tmp_path / "single")
