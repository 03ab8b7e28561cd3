"""Benchmark: training input as Caffe's Data layer makes it, from a Caffe LMDB, in one run.

Two databases are made once (kept in --work and reused):
  * jpeg: about 3,000 textured JPEGs around 500 x 375 (sizes vary), converted with
    convert_imageset --encoded (the files' own bytes, no resize): records of many sizes;
  * raw: 5,000 raw 3 x 256 x 256 records (write_arrays).
For each it prints the images/s of producing float32 (64, 3, crop, crop) batches with a random
crop (224 on jpeg, 227 on raw), a random mirror, the mean (104, 117, 123) and a scale:
  (a) batches  db.batches(64, transform=caffe_lmdb.Transform(...)) (decode + transform on a
               thread pool of `cores` threads);
  (b) loader   DatumDataset(path, transform=Transform) in a torch DataLoader, batch_size 64,
               num_workers = cores (each worker one thread, see docs/training.md),
               collate_fn=caffe_lmdb.torch.collate, persistent workers, a whole pass;
  (c) pycaffe  a single-thread pycaffe-style loop: Datum.ParseFromString, cv2.imdecode (raw:
               np.frombuffer), NumPy random crop, flip, (x - mean) * scale, stacked per batch;
  (d) dali     NVIDIA DALI's CPU pipeline (fn.readers.caffe, fn.decoders.image,
               fn.crop_mirror_normalize, num_threads = cores, device_id=None), when nvidia-dali
               is installed (jpeg only: DALI hands raw Caffe records over as undecoded bytes);
  floor        cv2.imdecode alone of the same records' bytes (already in memory) on a pool of
               `cores` threads (jpeg only).
Every method makes a whole pass over the database per round; rounds are interleaved
(a b c d floor, a b c d floor, ...) and the medians are printed with the ratios the targets
are stated in. Numbers are noisy on a shared machine: compare ratios within one run.

Targets (2-core machine): jpeg (a) >= 2x dali, >= 1.8x pycaffe, >= 0.65x floor;
raw (a) >= 3x pycaffe; (b) >= 1.6x pycaffe.

Usage: python scripts/bench_train_input.py [--rounds 3] [--jpegs 3000] [--raws 5000]
       [--work bench_out/train_input] [--only jpeg|raw]
"""
import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

import caffe_lmdb
from caffe_lmdb import Datum

MEAN = (104.0, 117.0, 123.0)
SCALE = 0.017
BATCH = 64
CORES = os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def textured_image(rng, h, w):
    """A photo-like 8-bit BGR image: smooth colour fields, stripes and grain."""
    low = rng.integers(0, 256, size=(max(2, h // 40), max(2, w // 40), 3), dtype=np.uint8)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.02, 0.2, size=2)
    img += (30 * np.sin(xx * f[0] + yy * f[1]))[:, :, None]
    img += rng.normal(0, 8, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_jpeg_db(work, n):
    db = os.path.join(work, f"jpeg{n}_lmdb")
    if os.path.isdir(db):
        return db
    root = os.path.join(work, f"jpeg{n}")
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        h, w = int(rng.integers(340, 400)), int(rng.integers(470, 530))
        name = f"img_{i:05d}.jpg"
        cv2.imwrite(os.path.join(root, name), textured_image(rng, h, w),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{name} {i % 1000}\n")
    with open(os.path.join(root, "list.txt"), "w") as f:
        f.writelines(lines)
    caffe_lmdb.convert_imageset(root + "/", os.path.join(root, "list.txt"), db, encoded=True)
    return db


def make_raw_db(work, n):
    db = os.path.join(work, f"raw{n}_lmdb")
    if os.path.isdir(db):
        return db
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(64, 3, 256, 256), dtype=np.uint8)
    images = (base[i % 64] for i in range(n))
    caffe_lmdb.write_arrays(db, list(images), [i % 1000 for i in range(n)])
    return db


def values_of(db_path):
    db = caffe_lmdb.open(db_path)
    with db.env.begin() as txn:
        return [bytes(v) for _, v in txn.cursor()]


# ---------------------------------------------------------------------------------------------
# Methods: each makes one whole pass and returns the number of images
# ---------------------------------------------------------------------------------------------


def transform(crop, seed=0):
    return caffe_lmdb.Transform(crop_size=crop, mirror=True, mean_value=MEAN, scale=SCALE,
                                phase="train", seed=seed)


def run_batches(path, crop):
    db = caffe_lmdb.open(path)
    t = transform(crop)
    n = 0
    for images, _labels in db.batches(BATCH, transform=t):
        assert images.shape[1:] == (3, crop, crop) and images.dtype == np.float32
        n += len(images)
    return n


class Loader:
    """A DataLoader with persistent workers, made once (its start-up is not timed)."""

    def __init__(self, path, crop):
        import torch
        from torch.utils.data import DataLoader

        from caffe_lmdb.torch import DatumDataset, collate

        torch.set_num_threads(1)
        ds = DatumDataset(path, transform=transform(crop))
        self.loader = DataLoader(ds, batch_size=BATCH, num_workers=CORES, collate_fn=collate,
                                 persistent_workers=True, prefetch_factor=2)
        self.crop = crop
        for _ in self.loader:  # warm-up pass: workers started, pages cached
            pass

    def __call__(self):
        n = 0
        for images, _labels in self.loader:
            assert tuple(images.shape[1:]) == (3, self.crop, self.crop)
            n += len(images)
        return n


def run_pycaffe(values, crop, encoded):
    """What a pycaffe user writes: one thread, protobuf, OpenCV, NumPy."""
    rng = np.random.default_rng(0)
    mean = np.array(MEAN, np.float32)[:, None, None]
    datum = Datum()
    n = 0
    for start in range(0, len(values), BATCH):
        batch = []
        for value in values[start:start + BATCH]:
            datum.ParseFromString(value)
            if encoded:
                img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
                img = img.transpose(2, 0, 1)
            else:
                img = np.frombuffer(datum.data, np.uint8).reshape(
                    datum.channels, datum.height, datum.width)
            _, h, w = img.shape
            y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            img = img[:, y:y + crop, x:x + crop]
            if rng.integers(0, 2):
                img = img[:, :, ::-1]
            batch.append((img.astype(np.float32) - mean) * np.float32(SCALE))
        out = np.stack(batch)
        _labels = np.array([0] * len(batch))
        n += len(out)
    return n


def run_floor(payloads, pool):
    def dec(blob):
        return cv2.imdecode(blob, cv2.IMREAD_COLOR).shape

    return sum(1 for _ in pool.map(dec, payloads, chunksize=16))


class Dali:
    """DALI's CPU pipeline over the LMDB, built once."""

    def __init__(self, path, crop, count):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=BATCH, num_threads=CORES, device_id=None, seed=0,
                      prefetch_queue_depth=2)
        def pipe():
            jpegs, labels = fn.readers.caffe(path=path, random_shuffle=False, name="reader")
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.BGR)
            images = fn.crop_mirror_normalize(
                images, crop=(crop, crop), crop_pos_x=fn.random.uniform(range=(0.0, 1.0)),
                crop_pos_y=fn.random.uniform(range=(0.0, 1.0)), mirror=fn.random.coin_flip(),
                mean=list(MEAN), std=[1.0 / SCALE] * 3, dtype=types.FLOAT,
                output_layout="CHW")
            return images, labels

        self.pipe = pipe()
        self.pipe.build()
        self.count = count
        self.crop = crop

    def __call__(self):
        n = 0
        while n < self.count:
            images, _labels = self.pipe.run()
            arr = images.as_array()
            assert arr.shape[1:] == (3, self.crop, self.crop) and arr.dtype == np.float32
            n += len(arr)
        return n


def dali_available():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------------


def measure(methods, rounds):
    """Interleaved rounds; images/s per method (median over rounds)."""
    rates = {name: [] for name in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
            rates[name].append(n / dt)
            print(f"  round {r + 1} {name:8s} {n / dt:8.0f} images/s", flush=True)
    return {name: statistics.median(v) for name, v in rates.items()}


def report(title, med, targets):
    print(f"\n{title}: median images/s")
    for name, v in med.items():
        print(f"  {name:8s} {v:8.0f}")
    for a, b, goal in targets:
        if a in med and b in med:
            ratio = med[a] / med[b]
            print(f"  {a} / {b} = {ratio:.2f}  (target >= {goal}: "
                  f"{'met' if ratio >= goal else 'NOT met'})")
        else:
            print(f"  {a} / {b}: not measured ({b if b not in med else a} unavailable)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jpegs", type=int, default=3000)
    ap.add_argument("--raws", type=int, default=5000)
    ap.add_argument("--work", default=os.path.join("bench_out", "train_input"))
    ap.add_argument("--only", choices=("jpeg", "raw"))
    args = ap.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    print(f"{CORES} cores, caffe_lmdb {caffe_lmdb.__version__}, OpenCV {cv2.__version__}, "
          f"NumPy {np.__version__}, Python {sys.version.split()[0]}")

    if args.only in (None, "jpeg"):
        path = make_jpeg_db(args.work, args.jpegs)
        values = values_of(path)
        payloads = []
        d = Datum()
        for v in values:
            d.ParseFromString(v)
            payloads.append(np.frombuffer(d.data, np.uint8))
        pool = ThreadPoolExecutor(CORES)
        methods = {"batches": lambda: run_batches(path, 224), "loader": Loader(path, 224),
                   "pycaffe": lambda: run_pycaffe(values, 224, True)}
        if dali_available():
            methods["dali"] = Dali(path, 224, len(values))
        else:
            print("NVIDIA DALI is not installed (pip install nvidia-dali-cuda120): "
                  "its CPU pipeline is not measured")
        methods["floor"] = lambda: run_floor(payloads, pool)
        print(f"\njpeg: {len(values)} encoded records around 500 x 375, crop 224, batch {BATCH}")
        med = measure(methods, args.rounds)
        report("jpeg", med, [("batches", "dali", 2.0), ("batches", "pycaffe", 1.8),
                             ("batches", "floor", 0.65), ("loader", "pycaffe", 1.6)])
        del methods

    if args.only in (None, "raw"):
        path = make_raw_db(args.work, args.raws)
        values = values_of(path)
        methods = {"batches": lambda: run_batches(path, 227), "loader": Loader(path, 227),
                   "pycaffe": lambda: run_pycaffe(values, 227, False)}
        print(f"\nraw: {len(values)} raw 3 x 256 x 256 records, crop 227, batch {BATCH}")
        med = measure(methods, args.rounds)
        report("raw", med, [("batches", "pycaffe", 3.0), ("loader", "pycaffe", 1.6)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
