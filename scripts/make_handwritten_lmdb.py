"""Make a database the way a widely read "multiprocess LMDB writing" post does (face detection,
12 x 12 crops): the input that ``caffe-lmdb import-raw`` repairs.

Usage: python scripts/make_handwritten_lmdb.py OUT_LMDB [N] [--shape H,W,C] [--seed S]
                                               [--npz ARRAYS.npz]

For each sample ``idx`` in 0 .. N-1, written with py-lmdb alone (no caffe_lmdb), in a shuffled
order as several writer processes would leave it (LMDB sorts the keys anyway):

* key ``str(idx)`` holds ``image.tobytes()``: raw H x W x 3 BGR bytes, no header (what
  ``cv2.imread(path).tobytes()`` gives);
* key ``str(idx) + "_"`` holds the text ``"label,x1 y1 x2 y2,l1 l2 ... l10"``: an int label
  (-1, 0, 1 or 2, as in face detection: part, negative, positive, landmark), a bounding box and
  ten landmark coordinates, space-separated floats (``str(float)``, so they read back exactly).

The keys are not zero-padded, so LMDB (and Caffe) read them as 0, 1, 10, 100, 1000, 1001, ...:
images come back out of step with any list kept beside the database.

:func:`make_handwritten_lmdb` returns the arrays the database was made from (``images``
(N, H, W, C) uint8, ``labels`` (N,) int64, ``bbox`` (N, 4) and ``landmarks`` (N, 10) float64);
``--npz`` saves them.
"""
import argparse
import os

import lmdb
import numpy as np

LABELS = (-1, 0, 1, 2)


def make_arrays(n, shape=(12, 12, 3), seed=0):
    """The samples: random pixels, labels, and boxes and landmarks rounded to 4 decimals."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    labels = rng.choice(np.array(LABELS, np.int64), n)
    bbox = np.round(rng.uniform(-0.3, 0.3, (n, 4)), 4)
    landmarks = np.round(rng.uniform(0.0, 1.0, (n, 10)), 4)
    return {"images": images, "labels": labels, "bbox": bbox, "landmarks": landmarks}


def label_text(label, bbox, landmarks):
    """The post's companion value: ``"label,x1 y1 x2 y2,l1 ... l10"``."""
    return (str(int(label)) + "," + " ".join(map(str, bbox)) + ","
            + " ".join(map(str, landmarks))).encode("ascii")


def make_handwritten_lmdb(path, n=3000, shape=(12, 12, 3), seed=0, shuffled=True,
                          arrays=None, npz=None, commit_every=100_000):
    """Write the database at ``path`` (a new folder) and return the arrays it holds.

    ``arrays``: write these instead of random ones (a dict as :func:`make_arrays` returns).
    ``npz``: also save the arrays there. ``shuffled``: put the samples in a random order.
    """
    if arrays is None:
        arrays = make_arrays(n, shape, seed)
    images, labels = arrays["images"], arrays["labels"]
    bbox, landmarks = arrays["bbox"].tolist(), arrays["landmarks"].tolist()
    n = len(images)
    order = np.random.default_rng(seed + 1).permutation(n) if shuffled else np.arange(n)
    map_size = max(1 << 24, 4 * n * (images[0].nbytes + 200))
    env = lmdb.open(os.fspath(path), map_size=map_size, subdir=True)
    try:
        txn = env.begin(write=True)
        for done, idx in enumerate(order.tolist(), 1):
            txn.put(str(idx).encode(), images[idx].tobytes())
            txn.put((str(idx) + "_").encode(), label_text(labels[idx], bbox[idx],
                                                          landmarks[idx]))
            if done % commit_every == 0:
                txn.commit()
                txn = env.begin(write=True)
        txn.commit()
    finally:
        env.close()
    if npz is not None:
        np.savez(npz, **arrays)
    return arrays


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", metavar="OUT_LMDB")
    p.add_argument("n", nargs="?", type=int, default=3000)
    p.add_argument("--shape", default="12,12,3", help="H,W,C of the images (default 12,12,3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--npz", default=None, help="also save the arrays to this .npz")
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    if os.path.exists(args.out):
        p.error(f"{args.out} exists: give a new folder")
    make_handwritten_lmdb(args.out, args.n, shape, args.seed, npz=args.npz)
    print(f"{args.out}: {args.n} samples of {'x'.join(map(str, shape))} under keys 0 .. "
          f"{args.n - 1} (unpadded), labels and boxes under '<idx>_'"
          + (f"; arrays in {args.npz}" if args.npz else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
