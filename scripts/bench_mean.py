#!/usr/bin/env python3
"""compute-mean end to end (process start included) against Caffe's compute_image_mean.

Usage: python scripts/bench_mean.py [--records 10000] [--jpegs 2000] [--runs 5] [--dir DIR]

Makes (in a temporary folder, or --dir, kept with --keep):

* raw: --records raw 3 x 256 x 256 records (about 2 GB at 10,000), keys %08d;
* jpeg: --jpegs encoded 500 x 375 JPEG records (decoded on all cores).

and times, interleaved (A B C A B C ...), medians of --runs:

* ``caffe-lmdb compute-mean DB OUT --quiet`` as a fresh process (the console script's code);
* Caffe's ``compute_image_mean DB OUT`` when the environment variable CAFFE_BIN names the
  folder holding it (BVLC Caffe's build/tools; docs/performance.md says how it was built for
  the figures there); without CAFFE_BIN only our figure and the floor are printed;
* the floor: a fresh process that opens the LMDB with py-lmdb and copies every value once
  (nothing summed): what just reading the records costs;
* for reference, the same command with the direct summation switched off (the batch path
  every record went through before).

Target: Caffe's time / ours >= 1.5 on the raw database. Every output file is compared byte for
byte with a NumPy reference (exact integer sums / count, rounded once to float32), and with
Caffe's when it ran.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import lmdb
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

from bench_read import make_jpegs  # noqa: E402

from caffe_lmdb.format.blob import mean_bytes  # noqa: E402
from caffe_lmdb.format.datum import array_to_datum_bytes  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))

FLOOR = """
import sys, lmdb, numpy as np
env = lmdb.open(sys.argv[1], readonly=True, lock=False, readahead=False)
with env.begin(buffers=True) as txn:
    buf = None
    for value in txn.cursor().iternext(keys=False, values=True):
        if buf is None or len(buf) < len(value):
            buf = memoryview(bytearray(len(value)))
        buf[:len(value)] = value
"""

OURS = "import sys; from caffe_lmdb.cli import main; sys.exit(main())"
BATCH_PATH = ("import sys; import caffe_lmdb.tools.mean as m; m._DIRECT_MIN_BYTES = 1 << 62; "
              "from caffe_lmdb.cli import main; sys.exit(main())")


def make_raw(path, n, seed=2):
    """n random 3 x 256 x 256 records (labels i % 1000), written with py-lmdb."""
    rng = np.random.default_rng(seed)
    env = lmdb.open(path, map_size=2 * n * (196608 + 4096) + (64 << 20), meminit=False,
                    sync=False)
    txn = env.begin(write=True)
    for start in range(0, n, 100):
        block = rng.integers(0, 256, (min(100, n - start), 3, 256, 256), dtype=np.uint8)
        for j, image in enumerate(block):
            txn.put(b"%08d" % (start + j), array_to_datum_bytes(image, (start + j) % 1000),
                    append=True)
        if start % 1000 == 900:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.sync()
    env.close()


def reference(path):
    """The mean by NumPy alone: exact int64 sums of every record / count, rounded once."""
    import caffe_lmdb

    db = caffe_lmdb.open(path)
    total, n = None, 0
    for images, _ in db.batches(64):
        s = images.sum(0, dtype=np.int64)
        total = s if total is None else total + s
        n += len(images)
    db.close()
    return mean_bytes((total / np.float64(n)).astype(np.float32))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, env=ENV, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench(label, db, runs, caffe, work):
    out = {name: os.path.join(work, f"{label}_{name}.binaryproto")
           for name in ("ours", "batch", "caffe")}
    rows = [("caffe-lmdb compute-mean", "ours",
             [sys.executable, "-c", OURS, "compute-mean", db, out["ours"], "--quiet"]),
            ("  (the batch path, for reference)", "batch",
             [sys.executable, "-c", BATCH_PATH, "compute-mean", db, out["batch"], "--quiet"]),
            ("floor: py-lmdb reads every value", "floor", [sys.executable, "-c", FLOOR, db])]
    if caffe:
        rows.insert(0, ("Caffe compute_image_mean", "caffe",
                        [os.path.join(caffe, "compute_image_mean"), db, out["caffe"]]))
    for _, _, argv in rows:  # warm-up: page cache, .pyc files
        timed(argv)
    times = {tag: [] for _, tag, _ in rows}
    for _ in range(runs):
        for _, tag, argv in rows:
            times[tag].append(timed(argv))
    med = {tag: statistics.median(v) for tag, v in times.items()}
    size = sum(os.path.getsize(os.path.join(db, f)) for f in os.listdir(db))
    print(f"\n{label}: {db} ({size / 2**30:.2f} GiB), medians of {runs} interleaved runs")
    for name, tag, _ in rows:
        print(f"  {name:<36} {med[tag]:7.3f} s")
    want = reference(db)
    same = {tag: _read(out[tag]) == want for tag in ("ours", "batch")}
    print(f"  output identical to the NumPy reference: ours {same['ours']}, batch path "
          f"{same['batch']}")
    print(f"  ours / floor: {med['ours'] / med['floor']:.2f}x the time of just reading; "
          f"batch path / ours: {med['batch'] / med['ours']:.2f}x")
    if caffe:
        ratio = med["caffe"] / med["ours"]
        ident = _read(out["caffe"]) == _read(out["ours"])
        met = "met" if ratio >= 1.5 else "NOT met"
        print(f"  Caffe / ours: {ratio:.2f}x (target >= 1.5: {met}); output byte-identical to "
              f"Caffe's: {ident}")
    else:
        print("  Caffe's compute_image_mean: not run (set CAFFE_BIN to the folder holding it; "
              "it is not built on this machine)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=10000)
    ap.add_argument("--jpegs", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", help="where to make the databases (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the databases")
    args = ap.parse_args(argv)
    caffe = os.environ.get("CAFFE_BIN")
    if caffe and not os.path.isfile(os.path.join(caffe, "compute_image_mean")):
        sys.exit(f"CAFFE_BIN={caffe} holds no compute_image_mean")
    work = args.dir or tempfile.mkdtemp(prefix="bench_mean_")
    os.makedirs(work, exist_ok=True)
    try:
        raw, jpeg = os.path.join(work, "raw"), os.path.join(work, "jpeg")
        t = time.perf_counter()
        if not os.path.exists(raw):
            make_raw(raw, args.records)
        if args.jpegs and not os.path.exists(jpeg):
            make_jpegs(jpeg, args.jpegs, 4)
        print(f"databases ready in {time.perf_counter() - t:.1f} s; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f}")
        bench(f"raw: {args.records:,} records of 3x256x256", raw, args.runs, caffe, work)
        if args.jpegs:
            bench(f"jpeg: {args.jpegs:,} encoded 500x375 JPEGs", jpeg, args.runs, caffe, work)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
