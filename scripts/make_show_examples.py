#!/usr/bin/env python3
"""Make the example sheets of docs/show.md: the classic mistake next to a correct database.

Writes, in a temporary folder (or --workdir), two LMDBs of the same 150 records, record i a
32x32 picture of the number i on a colour that moves along the rainbow with i, label i % 3
(names in labels.txt: circle, square, triangle, and that shape drawn in the corner):

* unpadded_lmdb: keys str(i), written with py-lmdb as the hand-written scripts do, so LMDB's
  byte order (Caffe's read order) is 0, 1, 10, 100, 101, ..., 109, 11, 110, ...;
* padded_lmdb: the same records through caffe_lmdb.write_arrays (keys %08d).

and draws the first 24 records of each into docs/img/show_unpadded.png and
docs/img/show_padded.png (tile 64). Run from the repository root:

    python scripts/make_show_examples.py
"""
import argparse
import os
import shutil
import sys
import tempfile

import cv2
import lmdb
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import caffe_lmdb  # noqa: E402
from caffe_lmdb.format.datum import array_to_datum_bytes  # noqa: E402

N = 150
NAMES = ["circle", "square", "triangle"]


def picture(i):
    """A 3x32x32 BGR record: the number i on a colour of the rainbow, its class's shape."""
    hue = np.uint8(int(i * 170 / N))
    bgr = cv2.cvtColor(np.array([[[hue, 200, 230]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    img = np.empty((32, 32, 3), np.uint8)
    img[:] = bgr
    text = str(i)
    scale = 0.5 if len(text) < 3 else 0.4
    (w, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(img, text, ((32 - w) // 2, 30), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    shape = i % 3
    if shape == 0:
        cv2.circle(img, (7, 7), 5, (255, 255, 255), -1, cv2.LINE_AA)
    elif shape == 1:
        cv2.rectangle(img, (2, 2), (11, 11), (255, 255, 255), -1)
    else:
        cv2.fillPoly(img, [np.array([[7, 2], [12, 12], [2, 12]])], (255, 255, 255), cv2.LINE_AA)
    return img.transpose(2, 0, 1)


def make(workdir):
    images = np.stack([picture(i) for i in range(N)])
    labels = [i % 3 for i in range(N)]
    unpadded = os.path.join(workdir, "unpadded_lmdb")
    env = lmdb.open(unpadded, map_size=1 << 26)
    with env.begin(write=True) as txn:
        for i in range(N):  # the classic mistake: str(i) as the key
            txn.put(str(i).encode(), array_to_datum_bytes(images[i], labels[i]))
    env.close()
    padded = os.path.join(workdir, "padded_lmdb")
    caffe_lmdb.write_arrays(padded, images, labels)
    for db in (unpadded, padded):
        with open(os.path.join(db, "labels.txt"), "w") as f:
            f.write("".join(name + "\n" for name in NAMES))
    return unpadded, padded


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", help="write the databases here (kept) instead of a temporary "
                   "folder")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "img"))
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="show_examples_")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    try:
        unpadded, padded = make(workdir)
        for db, name in ((unpadded, "show_unpadded.png"), (padded, "show_padded.png")):
            sheet = caffe_lmdb.contact_sheet(db, n=24, tile=64, columns=8)
            target = os.path.join(args.out, name)
            # maximum compression: these files are committed
            ok, buf = cv2.imencode(".png", sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            assert ok
            with open(target, "wb") as f:
                f.write(buf.tobytes())
            print(f"{db} -> {target} ({sheet.shape[1]} x {sheet.shape[0]} px, "
                  f"{len(buf) / 1024:.1f} KB)")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
