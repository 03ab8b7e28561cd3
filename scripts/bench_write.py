#!/usr/bin/env python3
"""write_arrays and DatumWriter against the plain loop, in one run.

Usage: python scripts/bench_write.py [--records 1000000] [--runs 3] [--dir DIR]

Writes --records arrays of 1 x 28 x 28 uint8 (labels 0..999) to a new LMDB with:

* the plain loop a user writes: pycaffe-style ``array_to_datum`` (a Datum message with
  channels, height, width, data, label and ``encoded = false``, as convert_imageset writes),
  ``SerializeToString``, ``txn.put``, a commit every 1000 records;
* ``caffe_lmdb.write_arrays(path, images, labels)``;
* ``caffe_lmdb.DatumWriter``: ``w.put(image, label)`` in the caller's loop.

Runs are interleaved (A B C A B C ...); medians of --runs are printed, with the ratios to the
plain loop (target >= 1.5x for both) and a check that the three databases hold the same keys
and bytes. The peak memory of write_arrays (tracemalloc, NumPy buffers included) is measured
on one more run, against the size of the input array: it stays a few MiB (one block of records
and the writer's uncommitted batch), whatever the number of records.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc

import lmdb
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import caffe_lmdb  # noqa: E402
from caffe_lmdb.format.datum import Datum  # noqa: E402


def plain_loop(path, images, labels):
    env = lmdb.open(path, map_size=1 << 32)
    txn = env.begin(write=True)
    for i in range(len(images)):
        image = images[i]
        datum = Datum()
        datum.channels, datum.height, datum.width = image.shape
        datum.data = image.tobytes()
        datum.label = int(labels[i])
        datum.encoded = False
        txn.put(b"%08d" % i, datum.SerializeToString())
        if (i + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.close()


def write_arrays(path, images, labels):
    caffe_lmdb.write_arrays(path, images, labels)


def datum_writer(path, images, labels):
    with caffe_lmdb.DatumWriter(path) as w:
        for i in range(len(images)):
            w.put(images[i], int(labels[i]))


def same(a, b):
    ea, eb = lmdb.open(a, readonly=True, lock=False), lmdb.open(b, readonly=True, lock=False)
    try:
        with ea.begin() as ta, eb.begin() as tb:
            return all(x == y for x, y in zip(ta.cursor(), tb.cursor(), strict=True))
    finally:
        ea.close()
        eb.close()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", help="where to write (default: a temporary folder)")
    args = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_write_", dir=args.dir)
    try:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (args.records, 1, 28, 28), dtype=np.uint8)
        labels = np.arange(args.records) % 1000
        rows = [("plain loop (array_to_datum, SerializeToString, put)", "plain", plain_loop),
                ("write_arrays", "arrays", write_arrays),
                ("DatumWriter.put per array", "writer", datum_writer)]
        times = {tag: [] for _, tag, _ in rows}
        cpu = {tag: [] for _, tag, _ in rows}
        for _ in range(args.runs):
            for _, tag, fn in rows:
                out = os.path.join(work, tag)
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                t, c = time.perf_counter(), time.process_time()
                fn(out, images, labels)
                times[tag].append(time.perf_counter() - t)
                cpu[tag].append(time.process_time() - c)
        med = {tag: statistics.median(v) for tag, v in times.items()}
        med_cpu = {tag: statistics.median(v) for tag, v in cpu.items()}
        print(f"{args.records:,} arrays of 1x28x28 uint8, medians of {args.runs} interleaved "
              f"runs (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        for name, tag, _ in rows:
            ratio = med["plain"] / med[tag]
            print(f"  {name:<52} {med[tag]:7.2f} s  {args.records / med[tag]:10,.0f} rec/s  "
                  f"{ratio:.2f}x the plain loop; CPU {med_cpu[tag]:.2f} s "
                  f"({med_cpu['plain'] / med_cpu[tag]:.2f}x)")
        for tag in ("arrays", "writer"):
            r = med["plain"] / med[tag]
            print(f"  {tag}: {r:.2f}x (target >= 1.5x: {'met' if r >= 1.5 else 'NOT met'})")
        ident = all(same(os.path.join(work, "plain"), os.path.join(work, t))
                    for t in ("arrays", "writer"))
        print(f"  the three databases hold the same keys and bytes: {ident}")
        out = os.path.join(work, "mem")
        tracemalloc.start()
        write_arrays(out, images, labels)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"  write_arrays peak traced memory: {peak / 2**20:.1f} MiB for an input of "
              f"{images.nbytes / 2**20:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
