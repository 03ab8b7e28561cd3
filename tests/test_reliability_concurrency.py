"""Concurrency: a writer appending while reader processes read, and many readers at once.

What is safe (docs/reliability.md): a database that is being written must be read with
``lock=True``. Such a reader takes a slot in lock.mdb's reader table, so the writer never
reuses the pages of a snapshot it is reading, and every refresh() shows whole commits only.
``lock=False`` (the default, for read-only media and finished databases) is invisible to the
writer: a snapshot held across the writer's commits can lose its pages (the last test shows
it). Without a writer, any number of readers of either kind read in peace.

Each process here is a small script run with ``python -c`` (or forked from one, for the 200
readers), so that the test process's own threads and open environments play no part.
"""
import inspect
import json
import signal
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from conftest import read_lmdb

import caffe_lmdb
from caffe_lmdb.storage import lmdb as lmdb_engine
from caffe_lmdb.write import sink


def record(i):
    """Record i: 3 x 40 x 40 pixels (4,800 bytes: more than one 4 KiB page) derived from i."""
    x = np.arange(4800, dtype=np.uint64) * 2654435761 + i * 40503
    return ((x >> np.uint64(7)) & np.uint64(255)).astype(np.uint8).reshape(3, 40, 40)


RECORD = "import numpy as np\n" + inspect.getsource(record)  # the same in the children

WRITER = RECORD + """
import sys, time
import caffe_lmdb
path, n, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with caffe_lmdb.DatumWriter(path, commit_every=every, map_size=1 << 20) as w:
    for i in range(n):
        w.put(record(i), i)
        if (i + 1) % every == 0:
            time.sleep(0.002)  # readers get in between commits
open(path + ".done", "w").close()
"""

READER = RECORD + """
import json, os, random, sys, time
import numpy as np
import caffe_lmdb
path, total, every, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)

def check(image, label, i):
    assert label == i, f"record {i} has label {label}"
    assert np.array_equal(image, record(i)), f"record {i}: pixels differ"

deadline = time.monotonic() + 240  # a writer that died never writes .done: give up then
while not os.path.exists(os.path.join(path, "data.mdb")):
    assert time.monotonic() < deadline, "no database appeared"
    time.sleep(0.005)
db = caffe_lmdb.open(path, lock=True)
seen, snapshots, reads, last = [], 0, 0, 0
while True:
    assert time.monotonic() < deadline, f"the writer did not finish ({last} records seen)"
    done = os.path.exists(path + ".done")  # before refresh(): then this snapshot is the last
    db.refresh()
    n = len(db)
    snapshots += 1
    assert n >= last, f"the database shrank from {last} to {n} records"
    assert n % every == 0 or n == total, f"{n} records: part of a commit is visible"
    last = n
    seen.append(n)
    if n:
        keys = db.keys()
        assert keys[0] == b"%08d" % 0 and keys[n - 1] == b"%08d" % (n - 1)
        for _ in range(10):  # random access
            i = rng.randrange(n)
            check(*db[i], i)
        positions = [rng.randrange(n) for _ in range(16)]  # a shuffled batch
        images, labels = db.read(positions)
        for j, i in enumerate(positions):
            check(images[j], int(labels[j]), i)
        start = rng.randrange(n)  # a run in key order
        images, labels = db[start:start + 24]
        for j in range(len(labels)):
            check(images[j], int(labels[j]), start + j)
        reads += 10 + 16 + len(labels)
    if done:
        break
assert last == total, f"the last snapshot has {last} of {total} records"
for i, (image, label) in enumerate(db):  # a whole pass, one record at a time
    check(image, label, i)
for k, (images, labels) in enumerate(db.batches(64)):  # and in batches
    for j in range(len(labels)):
        check(images[j], int(labels[j]), 64 * k + j)
print(json.dumps({"snapshots": snapshots, "reads": reads + 2 * total,
                  "distinct": len(set(seen))}))
"""


def _python(code, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_readers_see_whole_commits_while_a_writer_appends(tmp_path):
    """One writer appends 1,400 records of 4.8 KB (overflow pages) in commits of 7, from a
    1 MiB map that grows to ~8 MB, while 3 reader processes (lock=True) refresh, read at
    random, in batches and in runs: every snapshot is a whole number of commits, never
    shrinks, and every record read is complete and correct."""
    path, total, every = tmp_path / "db", 1400, 7
    writer = _python(WRITER, path, total, every)
    readers = [_python(READER, path, total, every, seed) for seed in range(3)]
    try:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        reports = []
        for r in readers:
            out, err = r.communicate(timeout=300)
            assert r.returncode == 0, err
            reports.append(json.loads(out))
    finally:  # no reader left behind when the writer failed
        for p in [writer, *readers]:
            if p.poll() is None:
                p.kill()
                p.wait()
    # the readers did overlap the writer: they saw the database grow
    assert all(rep["distinct"] >= 3 for rep in reports), reports
    pairs = read_lmdb(path)
    assert len(pairs) == total


# --------------------------------------------------------------------------------------------
# Many readers at once
# --------------------------------------------------------------------------------------------

# A driver forks N children that each open the database, read and check a few records, hold a
# read transaction (a reader slot, with lock=True) and say so, then wait until all hold, read
# again and exit. The driver imports everything once and holds nothing open when it forks.
MANY = RECORD + """
import json, os, sys, time
import caffe_lmdb
path, count, lock = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
expected = None
if sys.argv[4] != "-":
    expected = json.loads(sys.argv[4])

def child(ready_w, release_r):
    db = caffe_lmdb.open(path, lock=lock)
    n = len(db)
    txn = db.env.begin()  # held: with lock=True, a reader slot until the end
    for i in (0, n // 2, n - 1):
        image, label = db[i]
        if expected is None:
            assert label == i and (image == record(i)).all()
        else:
            assert [int(label), int(image.astype("int64").sum())] == expected[str(i)]
    os.write(ready_w, b"+")
    os.read(release_r, 1)  # blocks until the driver lets every child go
    image, label = db[n - 1]
    txn.abort()
    db.close()

ready_r, ready_w = os.pipe()
release_r, release_w = os.pipe()
pids = []
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(release_w)
        code = 0
        try:
            child(ready_w, release_r)
        except BaseException as exc:
            os.write(2, f"child {os.getpid()}: {exc!r}\\n".encode())
            os.write(ready_w, b"-")  # counted, so that the driver does not wait for it
            code = 1
        os._exit(code)
    pids.append(pid)
os.close(ready_w)
os.close(release_r)
notes = b""
while len(notes) < count:  # "+": holding, "-": failed
    got = os.read(ready_r, count)
    if not got:
        break
    notes += got
held = notes.count(b"+")  # all of them at once: none has been let go yet
os.close(release_w)  # all children read EOF: go
failed = 0
for pid in pids:
    _, status = os.waitpid(pid, 0)
    failed += status != 0
print(json.dumps({"held": held, "failed": failed}))
"""


def _many(path, count, lock, expected=None):
    proc = _python(MANY, path, count, int(lock), json.dumps(expected) if expected else "-")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report == {"held": count, "failed": 0}, (report, err[-2000:])
    return report


def test_200_lock_readers_while_the_writer_holds_the_database(tmp_path):
    """200 processes read with lock=True, all holding a read transaction at once, while the
    writer has the database open and commits. LMDB sizes the reader table when lock.mdb is
    created, by the first process to open it: the writer. With LMDB's default of 126 slots
    the 127th reader failed (MDB_READERS_FULL); the writer now asks for 1024."""
    path = tmp_path / "db"
    sink.prepare_output(path)
    writer = sink.LMDBSink(path, commit_every=50)
    try:
        for i in range(300):
            writer.put(b"%08d" % i, caffe_lmdb.format.datum.array_to_datum_bytes(record(i), i))
        writer.commit()
        _many(path, 200, lock=True)
        writer.put(b"%08d" % 300, caffe_lmdb.format.datum.array_to_datum_bytes(record(300), 300))
        writer.commit()  # and the writer still commits after they are gone
    finally:
        writer.close()
    assert len(read_lmdb(path)) == 301


def test_200_readers_without_lock_on_read_only_fixtures(fixtures):
    """lock=False takes no reader slot and writes nothing: 200 processes read a Caffe-made
    fixture (a read-only folder holding only data.mdb) at once."""
    path = fixtures / "mnist_lmdb"
    with caffe_lmdb.open(path) as db:
        n = len(db)
        expected = {str(i): [db[i][1], int(db[i][0].astype(np.int64).sum())]
                    for i in (0, n // 2, n - 1)}
    _many(path, 200, lock=False, expected=expected)
    assert not (path / "lock.mdb").exists()


HOLDER = """
import sys, time
import caffe_lmdb
db = caffe_lmdb.open(sys.argv[1], lock=True)
txn = db.env.begin()  # a reader slot, held until killed
print(len(db), flush=True)
time.sleep(300)
"""

OPENER = """
import sys
import caffe_lmdb
print(len(caffe_lmdb.open(sys.argv[1], lock=True)))
"""


def test_slots_of_killed_readers_are_freed_at_the_next_commit(tmp_path, monkeypatch):
    """Readers killed with SIGKILL leave their slots taken; LMDB frees them only when asked
    (or when nobody has the database open). The writer asks at every commit, so killed
    DataLoader workers cannot fill the table while a conversion runs."""
    monkeypatch.setattr(lmdb_engine, "MAX_READERS", 4)  # a table of 4, made by the writer
    path = tmp_path / "db"
    sink.prepare_output(path)
    writer = sink.LMDBSink(path)
    try:
        writer.put(b"00000000", caffe_lmdb.format.datum.array_to_datum_bytes(record(0), 0))
        writer.commit()
        holders = [_python(HOLDER, path) for _ in range(4)]
        for h in holders:
            assert h.stdout.readline().strip() == "1", h.stderr.read()
        for h in holders:
            h.send_signal(signal.SIGKILL)
            h.wait()
        full = subprocess.run([sys.executable, "-c", OPENER, str(path)], capture_output=True,
                              text=True)
        assert full.returncode == 1 and "MDB_READERS_FULL" in full.stderr  # 4 stale slots
        writer.put(b"00000001", caffe_lmdb.format.datum.array_to_datum_bytes(record(1), 1))
        writer.commit()
        again = subprocess.run([sys.executable, "-c", OPENER, str(path)], capture_output=True,
                               text=True)
        assert again.returncode == 0 and again.stdout.strip() == "2", again.stderr
    finally:
        writer.close()


# --------------------------------------------------------------------------------------------
# Why lock=True: a lock=False snapshot is invisible to the writer
# --------------------------------------------------------------------------------------------

SNAPSHOT = """
import sys
import lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=sys.argv[2] == "1", max_readers=1024)
txn = env.begin()
print("holding", flush=True)
sys.stdin.readline()  # the writer commits meanwhile
bad = 0
try:
    for i in range(200):
        if txn.get(b"%08d" % i) != b"%08d" % i * 100:
            bad += 1
except lmdb.Error as exc:
    print("error", type(exc).__name__)
else:
    print("bad", bad)
"""


@pytest.mark.parametrize("lock", [True, False])
def test_a_held_snapshot_needs_lock_true_while_a_writer_commits(tmp_path, lock):
    """A reader holds one snapshot while the writer commits 50 times (each commit frees the
    pages it copied). With lock=True the writer sees the reader and keeps its pages: every
    value reads back. With lock=False it reuses them: the snapshot reads other data or fails
    (observed: MDB_PAGE_NOTFOUND). The reader's own transactions are short (one batch), which
    narrows this window but does not close it: read a database being written with lock=True."""
    path = str(tmp_path / "db")
    env = lmdb.open(path, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(200):
            txn.put(b"%08d" % i, b"%08d" % i * 100, append=True)
    reader = subprocess.Popen([sys.executable, "-c", SNAPSHOT, path, "1" if lock else "0"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "holding"
    for j in range(50):
        with env.begin(write=True) as txn:
            for i in range(200 + 20 * j, 220 + 20 * j):
                txn.put(b"%08d" % i, b"x" * 800, append=True)
    out, _ = reader.communicate("\n", timeout=60)
    env.close()
    if lock:
        assert out.strip() == "bad 0"
    else:
        assert out.strip() != "bad 0", "the writer did not reuse the snapshot's pages"
