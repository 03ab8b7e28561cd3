#!/usr/bin/env python3
"""Benchmark of ``caffe-lmdb show``: a 64-tile contact sheet of a 10,000-record database must
take under 1 s, because it reads only the records it shows.

Generates, in a temporary folder (removed at the end unless --keep), databases of --records
records (default 10,000), keys %08d:

* jpeg: encoded 500x375 JPEG photo-like images (ImageNet-sized files);
* raw: raw 3x32x32 records (CIFAR-sized).

For each, times (interleaved A B A B, --repeat rounds, medians; page cache warm after the
first round, which is not counted):

* show: ``contact_sheet(path, n=64, out=...png)`` from the path, as the CLI runs it: opening
  the database (the key scan), reading and decoding the 64 records, drawing, writing the PNG;
* show --shuffle: the same with 64 positions drawn at random;
* baseline "show, 64-record db": the same sheet from a database holding only those 64 records
  (same values): a ratio near 1 says the cost does not grow with the database;
* baseline "scan all": one cursor pass over every record's bytes (copied, not decoded), the
  least a tool that looks at every record pays; ``--decode-all`` adds one decoded pass over
  every record (DatumDB batches), which costs far more for JPEG records.

Prints the medians, the ratios, and the target (show < 1 s).
Numbers on a shared machine are noisy: rerun, and compare medians.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import cv2
import lmdb
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import caffe_lmdb  # noqa: E402
from caffe_lmdb.format.datum import array_to_datum_bytes, datum_bytes  # noqa: E402


def _write(path, values, n):
    env = lmdb.open(path, map_size=1 << 34, meminit=False, sync=False)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"%08d" % i, values(i), append=True)
    env.sync()
    env.close()


def _photo(rng, h, w):
    """A smooth synthetic picture (gradient, shapes, a little noise): JPEG sizes like a photo's."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        a, b = rng.uniform(0.2, 1.0, 2)
        wave = np.sin(x / w * 6 * a + c) * np.cos(y / h * 6 * b)
        img[:, :, c] = (127 + 120 * wave).astype(np.uint8)
    for _ in range(6):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = [int(v) for v in rng.integers(0, 256, 3)]
        cv2.circle(img, center, int(rng.integers(10, 80)), color, -1)
    noise = rng.integers(-8, 9, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def make_databases(root, n):
    rng = np.random.default_rng(0)
    quality = [cv2.IMWRITE_JPEG_QUALITY, 90]
    pool = [cv2.imencode(".jpg", _photo(rng, 375, 500), quality)[1].tobytes() for _ in range(64)]
    jpeg = os.path.join(root, "jpeg")
    _write(jpeg, lambda i: datum_bytes(data=pool[i % 64], label=i % 1000, encoded=True), n)
    small = rng.integers(0, 256, (256, 3, 32, 32), dtype=np.uint8)
    raw = os.path.join(root, "raw")
    _write(raw, lambda i: array_to_datum_bytes(small[i % 256], i % 10), n)
    _write(jpeg + "64", lambda i: datum_bytes(data=pool[i % 64], label=i % 1000, encoded=True),
           64)
    _write(raw + "64", lambda i: array_to_datum_bytes(small[i % 256], i % 10), 64)
    sizes = {name: os.path.getsize(os.path.join(root, name, "data.mdb"))
             for name in ("jpeg", "raw")}
    return {"jpeg": jpeg, "raw": raw}, sizes, sum(map(len, pool)) / len(pool)


def time_show(path, out, shuffle, seed):
    t = time.perf_counter()
    sheet = caffe_lmdb.contact_sheet(path, n=64, shuffle=shuffle, seed=seed, out=out)
    elapsed = time.perf_counter() - t
    assert sheet.shape == (1190, 832, 3)
    return elapsed


def time_decode_all(path):
    t = time.perf_counter()
    with caffe_lmdb.open(path) as db:
        for _ in db.batches(256, reuse=True):
            pass
    return time.perf_counter() - t


def time_scan_all(path):
    t = time.perf_counter()
    env = lmdb.open(path, readonly=True, lock=False)
    total = 0
    with env.begin(buffers=True) as txn:
        for value in txn.cursor().iternext(keys=False, values=True):
            total += len(bytes(value))
    env.close()
    assert total
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--records", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5, help="rounds after the warm-up (default 5)")
    p.add_argument("--keep", action="store_true", help="keep the temporary databases")
    p.add_argument("--decode-all", action="store_true",
                   help="also time one decoded pass over every record (slow for JPEG)")
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench_show_")
    try:
        t = time.perf_counter()
        dbs, sizes, jpeg_bytes = make_databases(root, args.records)
        print(f"{args.records} records per database, made in {time.perf_counter() - t:.1f} s: "
              f"jpeg 500x375 (~{jpeg_bytes / 1024:.0f} KB each, {sizes['jpeg'] / 2**20:.0f} MB), "
              f"raw 3x32x32 ({sizes['raw'] / 2**20:.0f} MB); {os.cpu_count()} cores")
        out = os.path.join(root, "sheet.png")
        for name, path in dbs.items():
            times = {"show": [], "show --shuffle": [], "show, 64-record db": [],
                     "scan all (baseline)": []}
            for rnd in range(args.repeat + 1):  # round 0 warms the page cache
                results = [time_show(path, out, False, None), time_show(path, out, True, rnd),
                           time_show(path + "64", out, False, None), time_scan_all(path)]
                if rnd:
                    for what, elapsed in zip(times, results, strict=True):
                        times[what].append(elapsed)
            med = {what: statistics.median(ts) for what, ts in times.items()}
            print(f"\n{name}: 64 tiles of {args.records} records, medians of {args.repeat} "
                  "interleaved rounds")
            for what, ts in times.items():
                line = f"  {what:22s} {med[what] * 1000:8.1f} ms (min {min(ts) * 1000:.1f})"
                if what.startswith("show,") or what.startswith("scan"):
                    line += f"  show / this = {med['show'] / med[what]:.2f}"
                else:
                    line += f"  target < 1 s: {'OK' if med[what] < 1 else 'MISSED'}"
                print(line)
            if args.decode_all:
                elapsed = time_decode_all(path)
                print(f"  {'decode all (1 pass)':22s} {elapsed * 1000:8.1f} ms"
                      f"  show / this = {med['show'] / elapsed:.4f}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
