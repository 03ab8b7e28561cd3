"""Generate caffe_lmdb/sample_data: the small image set the `caffe-lmdb demo` command converts.

Usage: python scripts/make_sample_data.py [OUTDIR]   (default: caffe_lmdb/sample_data)

36 images of 48 x 48 pixels in three classes (circle, square, triangle), 12 each, half JPEG and
half PNG, each a coloured shape at a random place and size on a noisy background; deterministic
(NumPy's RandomState(2024)). Writes, beside the class folders:
  list.txt     `class/file label` lines, as convert_imageset reads them;
  targets.txt  `class/file label x0 y0 x1 y1`: the shape's bounding box divided by the image size,
               a multi-target list for `convert-imageset --targets 4`.
"""
import os
import sys

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle")
PER_CLASS = 12
SIZE = 48


def draw(kind, rng):
    img = rng.randint(0, 60, size=(SIZE, SIZE, 3)).astype(np.uint8)
    img += np.uint8(rng.randint(0, 120))
    color = tuple(int(c) for c in rng.randint(120, 256, size=3))
    r = int(rng.randint(8, 16))
    cx, cy = (int(v) for v in rng.randint(r + 1, SIZE - r - 1, size=2))
    if kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1, lineType=cv2.LINE_AA)
    elif kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], np.int32)
        cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)
    box = [(cx - r) / SIZE, (cy - r) / SIZE, (cx + r) / SIZE, (cy + r) / SIZE]
    return img, box


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "caffe_lmdb",
                                                              "sample_data")
    rng = np.random.RandomState(2024)
    lines, target_lines = [], []
    for i in range(PER_CLASS):
        for label, kind in enumerate(CLASSES):
            os.makedirs(os.path.join(out, kind), exist_ok=True)
            img, box = draw(kind, rng)
            name = f"{kind}/{kind}_{i:02d}.{'jpg' if i % 2 == 0 else 'png'}"
            cv2.imwrite(os.path.join(out, name), img)
            lines.append(f"{name} {label}\n")
            target_lines.append(f"{name} {label} " + " ".join(f"{v:.4f}" for v in box) + "\n")
    with open(os.path.join(out, "list.txt"), "w") as f:
        f.writelines(lines)
    with open(os.path.join(out, "targets.txt"), "w") as f:
        f.writelines(target_lines)
    print(f"{len(lines)} images in {os.path.abspath(out)}")


if __name__ == "__main__":
    main()
