#!/usr/bin/env python3
"""Benchmark of the read side, in one run, against baselines measured in the same run.

Generates, in a temporary folder (removed at the end unless --keep):

* small: 60,000 records of 1x28x28 uint8 (MNIST-sized), keys %08d;
* large: 5,000 records of 3x256x256 uint8 (ImageNet-sized after resize), keys %08d;
* features: 10,000 extract_features records of 4096 floats, keys %010d;
* jpeg: 2,000 encoded 500x375 JPEG records;
* leveldb: the small database's 60,000 records as a LevelDB (Caffe's other backend, written with
  plyvel and Caffe's options).

and prints records/s and ratios for:

* a full pass with ``DatumDB.batches()``, sequential and shuffled, against the pycaffe-style
  loop (cursor + ParseFromString + np.frombuffer, one record at a time) and against the
  floor (a cursor scan that only copies each value's bytes into a preallocated buffer);
* ``read_features`` against ``np.array(datum.float_data)`` per record;
* ``batches()`` over the JPEG records against a single-thread loop of ParseFromString +
  cv2.imdecode, as a multiple of (cores x that loop);
* the peak memory of a full pass (tracemalloc, which sees NumPy's buffers too), against one
  batch plus the key index: checked on the streaming pass (``reuse=True``); the default pass,
  whose batches stay the consumer's, is shown beside it (two batches by construction);
* two more floors that bound what any reader built on py-lmdb can reach: the bulk floor
  (one C-level cursor run per batch joined into one buffer, nothing parsed) and the random
  floor (``txn.get`` of each key of a shuffled batch, in key order, bytes copied);
* ``batches()`` over the LevelDB against a plyvel iterator + ParseFromString + np.frombuffer
  loop (target >= 2x), timed in interleaved rounds (A B A B, medians). ``--leveldb-only``
  runs only this row.

Each timing is the best of --repeat runs (page cache warm: the first pass of each database
is a warm-up). Targets from the issue are printed beside each ratio.
"""
import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from itertools import islice

import cv2
import lmdb
import numpy as np

import caffe_lmdb
from caffe_lmdb.format.datum import Datum, array_to_datum_bytes, datum_bytes
from caffe_lmdb.tools.features import read_features

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _write(path, records, map_size):
    env = lmdb.open(path, map_size=map_size, meminit=False, sync=False)
    txn = env.begin(write=True)
    for i, (key, value) in enumerate(records):
        txn.put(key, value, append=True)
        if i % 1000 == 999:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync()
    env.close()


def make_images(path, n, shape, seed):
    rng = np.random.default_rng(seed)

    def records():
        block = 100
        for start in range(0, n, block):
            images = rng.integers(0, 256, (min(block, n - start),) + shape, dtype=np.uint8)
            for j, image in enumerate(images):
                yield b"%08d" % (start + j), array_to_datum_bytes(image, (start + j) % 1000)

    per = int(np.prod(shape)) + 64
    _write(path, records(), map_size=max(64 << 20, 2 * n * (per + 4096)))


def make_features(path, n, dim, seed):
    rng = np.random.default_rng(seed)

    def records():
        for start in range(0, n, 500):
            block = rng.standard_normal((min(500, n - start), dim), dtype=np.float32)
            for j, row in enumerate(block):
                yield b"%010d" % (start + j), datum_bytes(dim, 1, 1, float_data=row)

    _write(path, records(), map_size=2 * n * (5 * dim + 4096))


def make_jpegs(path, n, seed, distinct=40):
    """Photo-like 500x375 JPEGs (smooth colour fields, edges and some noise), quality 90."""
    rng = np.random.default_rng(seed)
    files = []
    for _ in range(distinct):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        for _ in range(6):
            x, y = rng.integers(0, 450), rng.integers(0, 330)
            cv2.rectangle(img, (int(x), int(y)), (int(x) + 60, int(y) + 40),
                          tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        files.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())

    def records():
        for i in range(n):
            yield b"%08d" % i, datum_bytes(data=files[i % distinct], label=i % 10,
                                           encoded=True)

    _write(path, records(), map_size=2 * n * (len(max(files, key=len)) + 4096))
    return sum(map(len, files)) / distinct


# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------


def best(fn, repeat):
    fn()  # warm-up: page cache, memory maps, header cache
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def interleaved_medians(fns, repeat):
    """Median seconds of each function, the functions run in turn (A B C A B C ...) after one
    warm-up round, so that load from elsewhere on the machine hits them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def open_and_pass(path, batch_size):
    """What a user waits for: open() (its key index) and one sequential pass."""
    db = caffe_lmdb.open(path)
    for _images, _labels in db.batches(batch_size):
        pass
    db.close()


def keys_scan(env):
    """Every key read once (what an index built by scanning the keys costs)."""
    with env.begin() as txn:
        for _ in txn.cursor().iternext(keys=True, values=False):
            pass


def _env(db):
    """The raw environment for the baselines: the reader's own (py-lmdb >= 2 refuses a second
    open of the same files in one process); it is opened readonly, lock=False, no readahead."""
    return db.env


def floor_pass(env, batch_size, max_len):
    """The floor: scan values, copy each one's bytes into a preallocated batch buffer."""
    buf = np.empty(batch_size * max_len, np.uint8)
    mv = memoryview(buf)
    with env.begin(buffers=True) as txn:
        slot = 0
        for value in txn.cursor().iternext(keys=False, values=True):
            at = slot * max_len
            mv[at:at + len(value)] = value
            slot = slot + 1 if slot + 1 < batch_size else 0


def bulk_floor_pass(env, batch_size):
    """The least py-lmdb allows for a batch: one C-level run of the cursor (islice over
    iternext) joined into one buffer; no parsing, no checks."""
    with env.begin(buffers=True) as txn:
        it = txn.cursor().iternext(keys=False, values=True)
        while b"".join(islice(it, batch_size)):
            pass


def random_floor_pass(env, keys, batch_size, max_len):
    """The floor of random access: for each batch of a permutation, get the values in key
    order (txn.get) and copy their bytes into a preallocated buffer. The keys are made
    before the clock starts."""
    buf = np.empty(batch_size * max_len, np.uint8)
    mv = memoryview(buf)
    with env.begin(buffers=True) as txn:
        get = txn.get
        for batch in keys:
            at = 0
            for value in map(get, batch):
                mv[at:at + len(value)] = value
                at += max_len


def shuffled_keys(db, batch_size, seed=1):
    """The keys of one shuffled epoch, batch by batch, each batch in key order."""
    perm = np.random.default_rng(seed).permutation(len(db))
    index = db.keys()
    return [index.take(np.sort(perm[a:a + batch_size]))
            for a in range(0, len(perm), batch_size)]


def protobuf_pass(env, convert):
    """The loop people write with protobuf: cursor, ParseFromString, one record at a time."""
    datum = Datum()
    with env.begin() as txn:
        for _, value in txn.cursor():
            datum.ParseFromString(value)
            out = convert(datum)
    return out


def pycaffe_pass(env):
    """pycaffe-style: ParseFromString + np.frombuffer (no batch assembled). Written out, not
    through protobuf_pass, so that the baseline pays no extra call per record."""
    datum = Datum()
    parse, frombuffer, u8 = datum.ParseFromString, np.frombuffer, np.uint8
    with env.begin() as txn:
        for _, value in txn.cursor():
            parse(value)
            arr = frombuffer(datum.data, u8).reshape(datum.channels, datum.height, datum.width)
            label = datum.label
    return arr, label


def batches_pass(db, batch_size, shuffle):
    for images, labels in db.batches(batch_size, shuffle=shuffle, seed=1 if shuffle else None):
        pass


def float_data_pass(env):
    return protobuf_pass(env, lambda d: np.array(d.float_data, np.float32).reshape(
        d.channels, d.height, d.width))


def float_data_into_array(env, n, shape):
    """The same loop, keeping every row in one (N, C, H, W) array, as read_features returns."""
    out = np.empty((n,) + tuple(shape), np.float32)
    datum = Datum()
    with env.begin() as txn:
        for i, (_, value) in enumerate(txn.cursor()):
            datum.ParseFromString(value)
            out[i] = np.array(datum.float_data, np.float32).reshape(shape)
    return out


def imdecode_pass(env):
    return protobuf_pass(env, lambda d: cv2.imdecode(np.frombuffer(d.data, np.uint8),
                                                     cv2.IMREAD_COLOR))


def make_leveldb(path, n, shape, seed):
    """The records of make_images(path, n, shape, seed), as a LevelDB."""
    from caffe_lmdb.storage.leveldb import CAFFE_OPTIONS, import_plyvel

    rng = np.random.default_rng(seed)
    db = import_plyvel().DB(path, create_if_missing=True, error_if_exists=True, **CAFFE_OPTIONS)
    block = 100
    batch = db.write_batch()
    for start in range(0, n, block):
        images = rng.integers(0, 256, (min(block, n - start),) + shape, dtype=np.uint8)
        for j, image in enumerate(images):
            batch.put(b"%08d" % (start + j), array_to_datum_bytes(image, (start + j) % 1000))
        if (start + block) % 1000 == 0:
            batch.write()
            batch = db.write_batch()
    batch.write()
    db.close()
    # one open turns the log into a table (as any first open of a database Caffe wrote does);
    # the timed passes then read a settled database, its new files flushed to disk
    import_plyvel().DB(path, create_if_missing=False, **CAFFE_OPTIONS).close()
    os.sync()


def plyvel_pass(db):
    """The loop people write over a LevelDB: plyvel's iterator, ParseFromString and
    np.frombuffer, one record at a time (on a snapshot of the reader's own handle: LevelDB
    admits one open per process)."""
    datum = Datum()
    parse, frombuffer, u8 = datum.ParseFromString, np.frombuffer, np.uint8
    with db.begin() as view:
        for _, value in view.snapshot.iterator():
            parse(value)
            arr = frombuffer(datum.data, u8).reshape(datum.channels, datum.height, datum.width)
            label = datum.label
    return arr, label


def interleaved(runs, repeat):
    """Median seconds of each function, over ``repeat`` rounds that run them in turn (A B A B),
    after one warm-up round."""
    times = {name: [] for name in runs}
    for rnd in range(repeat + 1):
        for name, fn in runs.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            if rnd:
                times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_leveldb(path, n, batch_size, repeat):
    db = caffe_lmdb.open(path)
    assert db.backend == "leveldb" and db.cache_path is None
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    print(f"\nleveldb 1x28x28: {n:,} records, batch {batch_size}, {size / 2**20:,.0f} MiB of "
          "LevelDB files, read directly (snapshots)")
    t = interleaved({"plyvel": lambda: plyvel_pass(db),
                     "seq": lambda: batches_pass(db, batch_size, False),
                     "shuf": lambda: batches_pass(db, batch_size, True)}, repeat)
    line("plyvel iterator + ParseFromString+frombuffer", n, t["plyvel"])
    line("batches() sequential", n, t["seq"])
    line("batches() shuffled", n, t["shuf"])
    r = t["plyvel"] / t["seq"]
    print(f"  sequential vs plyvel loop: {r:.2f}x (target >= 2x: {verdict(r >= 2)}; medians of "
          f"{repeat} interleaved rounds); shuffled: {t['plyvel'] / t['shuf']:.2f}x")
    db.close()


def max_value_len(env):
    with env.begin(buffers=True) as txn:
        return max(len(v) for v in txn.cursor().iternext(keys=False, values=True))


def rss_anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_pass(path, batch_size, reuse):
    """Peak traced memory of one full pass, measured after the key index is built."""
    db = caffe_lmdb.open(path)
    index_bytes = db.keys().nbytes
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rss0 = rss_anon()
    batch_bytes = 0
    for images, labels in db.batches(batch_size, reuse=reuse):
        batch_bytes = max(batch_bytes, images.nbytes + labels.nbytes)
    del images, labels
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss = rss_anon() - rss0
    db.close()
    return peak, batch_bytes, index_bytes, rss


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def rate(n, seconds):
    return n / seconds


def line(name, n, seconds, extra=""):
    print(f"  {name:<44} {rate(n, seconds):>12,.0f} rec/s  {seconds * 1e6 / n:8.2f} us/rec"
          f"{extra}")


def verdict(ok):
    return "met" if ok else "NOT met"


def bench_images(label, path, n, batch_size, repeat, targets):
    db = caffe_lmdb.open(path)
    env = _env(db)
    max_len = max_value_len(env)
    print(f"\n{label}: {n:,} records, batch {batch_size}, data.mdb "
          f"{os.path.getsize(os.path.join(path, 'data.mdb')) / 2**20:,.0f} MiB")
    keys = shuffled_keys(db, batch_size)
    t_floor = best(lambda: floor_pass(env, batch_size, max_len), repeat)
    t_bulk = best(lambda: bulk_floor_pass(env, batch_size), repeat)
    t_random = best(lambda: random_floor_pass(env, keys, batch_size, max_len), repeat)
    t_py = best(lambda: pycaffe_pass(env), repeat)
    t_seq = best(lambda: batches_pass(db, batch_size, False), repeat)
    t_shuf = best(lambda: batches_pass(db, batch_size, True), repeat)
    line("floor (cursor scan, copy value bytes)", n, t_floor)
    line("bulk floor (join(islice(iternext)), no parse)", n, t_bulk)
    line("random floor (txn.get per key, copy bytes)", n, t_random)
    line("pycaffe-style (ParseFromString+frombuffer)", n, t_py)
    line("batches() sequential", n, t_seq)
    line("batches() shuffled", n, t_shuf)
    r_py, r_floor, r_shuf = t_py / t_seq, t_floor / t_seq, t_shuf / t_seq
    need = t_py / targets["pycaffe"]
    print(f"  sequential vs pycaffe-style: {r_py:.2f}x (target >= {targets['pycaffe']}x: "
          f"{verdict(r_py >= targets['pycaffe'])}; it needs {need * 1e6 / n:.2f} us/rec, the "
          f"bulk floor alone takes {t_bulk * 1e6 / n:.2f})")
    print(f"  sequential vs floor: {r_floor:.2f}x the floor's speed (target: within 2x, i.e. "
          f">= 0.5x: {verdict(r_floor >= 0.5)})")
    print(f"  shuffled vs sequential: {1 / r_shuf:.2f}x the sequential speed (target: within "
          f"2x, i.e. >= 0.5x: {verdict(r_shuf <= 2)}; the random floor alone is "
          f"{t_random / t_seq:.2f}x the sequential pass's time)")
    if "open_pass" in targets:  # open() included, interleaved, medians
        med = interleaved_medians({"floor": lambda: floor_pass(env, batch_size, max_len),
                           "pycaffe": lambda: pycaffe_pass(env),
                           "ours": lambda: open_and_pass(path, batch_size),
                           "open": lambda: caffe_lmdb.open(path).close(),
                           "keys": lambda: keys_scan(env)}, targets["open_pass"])
        print(f"  open() + batches({batch_size}) pass, interleaved medians of "
              f"{targets['open_pass']}: {med['ours'] * 1e3:.1f} ms; pycaffe-style "
              f"{med['pycaffe'] * 1e3:.1f} ms; floor {med['floor'] * 1e3:.1f} ms")
        r_py, r_fl = med["pycaffe"] / med["ours"], med["ours"] / med["floor"]
        print(f"    vs pycaffe-style: {r_py:.2f}x (target >= 3.5x: {verdict(r_py >= 3.5)}); "
              f"vs floor: {r_fl:.2f}x the floor's time (target <= 1.3x: {verdict(r_fl <= 1.3)})")
        print(f"    open() alone: {med['open'] * 1e3:.2f} ms (a keys-only scan, what open() "
              f"did before: {med['keys'] * 1e3:.1f} ms)")
    db.close()


def bench_features(path, n, dim, repeat):
    db = caffe_lmdb.open(path)
    env = _env(db)
    print(f"\nfeatures: {n:,} records of {dim} floats (extract_features, %010d keys)")
    # streaming: neither side keeps the rows (the baseline drops each array, batches() refills
    # one buffer); whole array: both sides keep every row in one (N, C, H, W) array
    t_py = best(lambda: float_data_pass(env), repeat)
    t_stream = best(lambda: sum(1 for _ in db.batches(1024, reuse=True)), repeat)
    t_py_all = best(lambda: float_data_into_array(env, n, (dim, 1, 1)), repeat)
    t_ours = best(lambda: read_features(db), repeat)
    line("np.array(datum.float_data) per record", n, t_py)
    line("batches(1024, reuse=True)", n, t_stream)
    line("float_data loop into one (N, C, H, W) array", n, t_py_all)
    line("read_features() (one (N, C, H, W) array)", n, t_ours)
    r_stream, r_all = t_py / t_stream, t_py_all / t_ours
    print(f"  streaming: batches vs float_data loop: {r_stream:.1f}x (target >= 10x: "
          f"{verdict(r_stream >= 10)})")
    print(f"  whole array: read_features vs float_data loop into an array: {r_all:.1f}x "
          f"(target >= 10x: {verdict(r_all >= 10)})")
    max_len = max_value_len(env)
    med = interleaved_medians({"floor": lambda: floor_pass(env, 1024, max_len),
                       "ours": lambda: read_features(path)}, repeat)
    r = med["ours"] / med["floor"]
    print(f"  read_features (open included) vs floor (cursor scan copying each value), "
          f"interleaved medians: {med['ours'] * 1e3:.1f} ms vs {med['floor'] * 1e3:.1f} ms = "
          f"{r:.2f}x the floor's time (target <= 2.5x: {verdict(r <= 2.5)})")
    db.close()


def bench_jpeg(path, n, batch_size, repeat, jpeg_bytes):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    db = caffe_lmdb.open(path)
    env = _env(db)
    print(f"\njpeg: {n:,} encoded 500x375 JPEGs (~{jpeg_bytes / 1024:.0f} KB each), batch "
          f"{batch_size}, {cores} cores")
    t_one = best(lambda: imdecode_pass(env), repeat)
    t_ours = best(lambda: batches_pass(db, batch_size, False), repeat)
    line("single thread: ParseFromString + imdecode", n, t_one)
    line("batches() (decoded on a thread per core)", n, t_ours)
    r = t_one / t_ours
    print(f"  batches vs single thread: {r:.2f}x = {r / cores:.2f} x cores (target >= 0.85 x "
          f"cores = {0.85 * cores:.2f}x: {verdict(r >= 0.85 * cores)})")
    db.close()


def bench_memory(label, path, batch_size):
    """The target is checked on the streaming pass (reuse=True: one batch refilled). The
    default pass is shown beside it: there each batch stays the consumer's, so while batch k+1
    is filled the consumer still holds batch k, and the peak is two batches plus the decoding
    scratch by construction."""
    print(f"\nmemory, {label}: peak traced memory of a full pass (after the key index is built)")
    for reuse in (True, False):
        peak, batch, index, rss = memory_pass(path, batch_size, reuse)
        allowance = 2 * batch + index
        print(f"  reuse={reuse!s:<5}: peak {peak / 1024:,.0f} KiB = {peak / batch:.2f} x one batch "
              f"({batch / 1024:,.0f} KiB); key index {index:,} B; RssAnon change "
              f"{rss / 1024:+,.0f} KiB")
        if reuse:
            print(f"    streaming pass: target < 2 x batch + index = {allowance / 1024:,.0f} KiB: "
                  f"{verdict(peak < allowance)}")
        else:
            print(f"    default pass (batches kept by the consumer): the consumer's batch and the "
                  f"one being filled are {2 * batch / 1024:,.0f} KiB by construction; the rest, "
                  f"{(peak - 2 * batch) / 1024:,.0f} KiB, is decoding scratch")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to generate the databases (default: a new "
                        "temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated databases")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--quick", action="store_true", help="smaller databases (smoke test)")
    parser.add_argument("--leveldb-only", action="store_true", help="only the LevelDB row")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    root = args.dir or tempfile.mkdtemp(prefix="bench_read_")
    os.makedirs(root, exist_ok=True)
    sizes = dict(small=60000 // scale, large=5000 // scale, feats=10000 // scale,
                 jpeg=2000 // scale)
    try:
        paths = {name: os.path.join(root, name) for name in sizes}
        t0 = time.perf_counter()
        leveldb = os.path.join(root, "leveldb")
        if not os.path.exists(leveldb):
            make_leveldb(leveldb, sizes["small"], (1, 28, 28), 1)
        if args.leveldb_only:
            bench_leveldb(leveldb, sizes["small"], 256, args.repeat)
            return 0
        if not os.path.exists(paths["small"]):
            make_images(paths["small"], sizes["small"], (1, 28, 28), 1)
        if not os.path.exists(paths["large"]):
            make_images(paths["large"], sizes["large"], (3, 256, 256), 2)
        if not os.path.exists(paths["feats"]):
            make_features(paths["feats"], sizes["feats"], 4096, 3)
        jpeg_bytes = None
        if not os.path.exists(paths["jpeg"]):
            jpeg_bytes = make_jpegs(paths["jpeg"], sizes["jpeg"], 4)
        if jpeg_bytes is None:
            with caffe_lmdb.open(paths["jpeg"]) as db, db.env.begin() as txn:
                jpeg_bytes = len(txn.get(b"%08d" % 0))
        print(f"caffe_lmdb {caffe_lmdb.__version__}, py-lmdb {lmdb.__version__}, numpy "
              f"{np.__version__}, OpenCV {cv2.__version__}, Python {sys.version.split()[0]}; "
              f"data in {root} (made in {time.perf_counter() - t0:.1f} s)")
        bench_images("small 1x28x28", paths["small"], sizes["small"], 256, args.repeat,
                     {"pycaffe": 4, "open_pass": max(5, args.repeat)})
        bench_images("large 3x256x256", paths["large"], sizes["large"], 64, args.repeat,
                     {"pycaffe": 1.5})
        bench_features(paths["feats"], sizes["feats"], 4096, args.repeat)
        bench_jpeg(paths["jpeg"], sizes["jpeg"], 64, args.repeat, jpeg_bytes)
        bench_leveldb(leveldb, sizes["small"], 256, args.repeat)
        bench_memory("small 1x28x28, batch 256", paths["small"], 256)
        bench_memory("large 3x256x256, batch 64", paths["large"], 64)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
