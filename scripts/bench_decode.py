"""Benchmark: decode and decode_batch against the plain protobuf path, in one run.

For three record sets made in memory (Caffe's byte layout):
  * 60,000 raw 1x28x28 records (MNIST-like),
  * 2,000 raw 3x256x256 records (convert_imageset at 256x256),
  * 10,000 extract_features records of 4096 unpacked floats,
it prints records/s of
  * protobuf: Datum.ParseFromString + np.frombuffer(data) (or np.array(float_data)), per record;
  * decode:   caffe_lmdb.decode, per record;
  * batch:    caffe_lmdb.decode_batch over batches into a preallocated array;
and the ratios to the protobuf path. Targets: batch >= 4x on the small and the feature sets,
>= 1.5x on the large one; decode >= 1x everywhere.

Usage: python scripts/bench_decode.py [--repeat 5] [--scale 1.0] [--batch 256]
"""
import argparse
import time

import numpy as np

from caffe_lmdb.format.batch import decode_batch
from caffe_lmdb.format.datum import Datum, datum_bytes, decode


def make_raw(n, c, h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(c, h, w), dtype=np.uint8)
    out = []
    for i in range(n):
        base[0, 0, :4] = np.frombuffer(i.to_bytes(4, "little"), np.uint8)  # records differ
        out.append(datum_bytes(c, h, w, data=base.tobytes(), label=i % 1000, encoded=False))
    return out


def make_features(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim).astype(np.float32)
    return [datum_bytes(dim, 1, 1, float_data=base + np.float32(i)) for i in range(n)]


def protobuf_path(records):
    datum = Datum()
    for buf in records:
        datum.ParseFromString(buf)
        if datum.data:
            arr = np.frombuffer(datum.data, np.uint8).reshape(
                datum.channels, datum.height, datum.width)
        else:
            arr = np.array(datum.float_data, np.float32).reshape(
                datum.channels, datum.height, datum.width)
        label = datum.label
    return arr, label


def decode_path(records):
    for buf in records:
        arr, label = decode(buf)
    return arr, label


def batch_path(records, batch):
    first, _ = decode(records[0])
    out = np.empty((batch,) + first.shape, first.dtype)
    labels = np.empty(batch, np.int64)
    for start in range(0, len(records), batch):
        chunk = records[start:start + batch]
        if len(chunk) != batch:
            decode_batch(chunk)
        else:
            decode_batch(chunk, out=out, labels_out=labels)
    return out, labels


def best_rates(fns, records, repeat):
    """Records/s of each function, best of `repeat` rounds; the functions take turns within a
    round so that all of them see the same machine load."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(records)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [len(records) / t for t in best]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5, help="best of N rounds (default 5)")
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the record counts")
    ap.add_argument("--batch", type=int, default=256, help="records per decode_batch call")
    args = ap.parse_args(argv)

    sets = [
        ("1x28x28 raw", make_raw(int(60000 * args.scale), 1, 28, 28), 4.0),
        ("3x256x256 raw", make_raw(int(2000 * args.scale), 3, 256, 256), 1.5),
        ("4096 floats", make_features(int(10000 * args.scale), 4096), 4.0),
    ]
    print(f"{'set':<15} {'records':>8} {'protobuf/s':>12} {'decode/s':>12} {'batch/s':>12} "
          f"{'decode x':>9} {'batch x':>8} {'target':>7}")
    failed = False
    for name, records, target in sets:
        ref = protobuf_path(records[:1])
        got = decode_path(records[:1])
        assert np.array_equal(ref[0], got[0]) and ref[1] == got[1]
        pb, dec, bat = best_rates(
            [protobuf_path, decode_path, lambda r: batch_path(r, args.batch)], records,
            args.repeat)
        ok = bat / pb >= target and dec / pb >= 1.0
        failed |= not ok
        print(f"{name:<15} {len(records):>8} {pb:>12,.0f} {dec:>12,.0f} {bat:>12,.0f} "
              f"{dec / pb:>8.2f}x {bat / pb:>7.2f}x {target:>6.1f}x {'ok' if ok else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
