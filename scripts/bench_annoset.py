"""Benchmark convert_annoset against a plain single-process loop, in one run.

Usage: python scripts/bench_annoset.py [--images 2000] [--repeat 3] [--workdir DIR]

Makes ~2,000 synthetic 500 x 375 JPEGs (bench_convert.py's images) with a PASCAL VOC XML file
each (1 to 5 objects of 4 classes), then writes SSD-Caffe detection LMDBs the way the fork's
create_annoset.py asks for VOC (``--anno_type=detection --label_type=xml --encoded
--encode_type=jpg``: files stored verbatim, but decoded for channels/height/width), and raw
300 x 300 records (``--resize_height=300 --resize_width=300``), with:

* baseline: the straightforward loop (cv2.imread, optionally cv2.resize, ElementTree for the
  XML, the generated AnnotatedDatum protobuf class, put, commit every 1000), one process;
* convert_annoset with workers = all cores (threads, the default).

Runs are interleaved (A B A B) over --repeat rounds; it prints the median images/s of each and
the ratio to the baseline. The target is >= 0.85 x cores x baseline. Both databases are checked
to be identical, so the loop does the same work. CPU ms per image (this process, all threads)
are printed too: on a machine whose cores are busy with other work, wall-clock ratios cannot
show the scaling, while equal CPU per image means the parallel run wastes nothing.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import cv2
import lmdb
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_convert import make_images, same_db  # noqa: E402

from caffe_lmdb.format.annotated import labelmap_text, messages  # noqa: E402
from caffe_lmdb.write.annoset import convert_annoset  # noqa: E402
from caffe_lmdb.write.executors import default_workers  # noqa: E402

W, H = 500, 375
CLASSES = ["cat", "dog", "bird", "person"]


def make_annotations(folder, list_file, seed=11):
    """A VOC XML per image and the 'image annotation' list; returns (list, labelmap)."""
    rng = np.random.default_rng(seed)
    lines = []
    with open(list_file) as f:
        images = [line.rsplit(" ", 1)[0] for line in f if line.strip()]
    for path in images:
        xml = "ann/" + os.path.splitext(path)[0] + ".xml"
        os.makedirs(os.path.join(folder, os.path.dirname(xml)), exist_ok=True)
        objs = []
        for _ in range(int(rng.integers(1, 6))):
            x0, y0 = int(rng.integers(0, W - 20)), int(rng.integers(0, H - 20))
            x1, y1 = int(rng.integers(x0 + 1, W + 1)), int(rng.integers(y0 + 1, H + 1))
            objs.append(f"<object><name>{CLASSES[int(rng.integers(0, 4))]}</name><pose>"
                        f"Unspecified</pose><truncated>0</truncated><difficult>"
                        f"{int(rng.integers(0, 2))}</difficult><bndbox><xmin>{x0}</xmin><ymin>"
                        f"{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
        with open(os.path.join(folder, xml), "w") as f:
            f.write(f"<annotation><folder>VOC</folder><filename>{path}</filename><size><width>"
                    f"{W}</width><height>{H}</height><depth>3</depth></size>{''.join(objs)}"
                    "</annotation>\n")
        lines.append(f"{path} {xml}\n")
    out = os.path.join(folder, "list_xml.txt")
    with open(out, "w") as f:
        f.writelines(lines)
    labelmap = os.path.join(folder, "labelmap.prototxt")
    with open(labelmap, "w") as f:
        f.write(labelmap_text([("background", 0)] + [(c, i + 1) for i, c in
                                                     enumerate(CLASSES)]))
    return out, labelmap


def baseline(root, list_file, db, resize):
    """The plain loop: image, XML, protobuf message, put; commit every 1000."""
    pb = messages()
    labels = {c: i + 1 for i, c in enumerate(CLASSES)}
    with open(list_file) as f:
        entries = [line.split() for line in f if line.strip()]
    env = lmdb.open(db, map_size=1 << 32)
    txn = env.begin(write=True)
    for i, (path, xml) in enumerate(entries):
        img = cv2.imread(os.path.join(root, path), cv2.IMREAD_COLOR)
        ad = pb.AnnotatedDatum()
        d = ad.datum
        if resize:
            img = cv2.resize(img, (resize, resize))
            d.channels, d.height, d.width = 3, resize, resize
            d.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
            d.label, d.encoded = -1, False
        else:
            with open(os.path.join(root, path), "rb") as f:
                data = f.read()
            d.channels, d.height, d.width = 3, img.shape[0], img.shape[1]
            d.data, d.label, d.encoded = data, -1, True
        ad.type = pb.AnnotatedDatum.BBOX
        tree = ET.parse(os.path.join(root, xml)).getroot()
        w = np.float32(int(tree.find("size/width").text))
        h = np.float32(int(tree.find("size/height").text))
        groups = {}
        for obj in tree.iter("object"):
            label = labels[obj.find("name").text]
            if label not in groups:
                groups[label] = ad.annotation_group.add(group_label=label)
            g = groups[label]
            a = g.annotation.add(instance_id=len(g.annotation))
            box = obj.find("bndbox")
            a.bbox.xmin = np.float32(int(box.find("xmin").text)) / w
            a.bbox.ymin = np.float32(int(box.find("ymin").text)) / h
            a.bbox.xmax = np.float32(int(box.find("xmax").text)) / w
            a.bbox.ymax = np.float32(int(box.find("ymax").text)) / h
            a.bbox.difficult = obj.find("difficult").text == "1"
        txn.put(b"%08d_%s" % (i, path.encode()), ad.SerializeToString())
        if (i + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.close()


def timed(fn, out):
    """(wall seconds, CPU seconds of this process, all its threads) of one run."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    t, c = time.perf_counter(), time.process_time()
    fn(out)
    return time.perf_counter() - t, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    cores = default_workers()
    work = tempfile.mkdtemp(prefix="bench_annoset_", dir=args.workdir)
    try:
        root = os.path.join(work, "data") + os.sep
        os.makedirs(root)
        list_file, labelmap = make_annotations(root, make_images(root, args.images))
        print(f"{args.images} images 500 x 375 with VOC XML, {cores} cores "
              f"(os.cpu_count() = {os.cpu_count()})")
        for title, resize, flags in [
                ("encoded jpg (create_annoset's VOC flags)", 0,
                 dict(encoded=True, encode_type="jpg")),
                ("raw 3 x 300 x 300", 300, dict(resize_height=300, resize_width=300))]:
            runs = {
                "baseline": lambda out, r=resize: baseline(root, list_file, out, r),
                "convert_annoset": lambda out, f=flags: convert_annoset(
                    root, list_file, out, label_map_file=labelmap, workers=cores, **f),
            }
            times = {k: [] for k in runs}
            cpu = {k: [] for k in runs}
            for _ in range(args.repeat):
                for tag, fn in runs.items():
                    wall, used = timed(fn, os.path.join(work, tag))
                    times[tag].append(wall)
                    cpu[tag].append(used)
            same = same_db(os.path.join(work, "baseline"), os.path.join(work, "convert_annoset"))
            base = args.images / statistics.median(times["baseline"])
            print(f"\n{title}: identical databases: {same}")
            for tag, ts in times.items():
                rate = args.images / statistics.median(ts)
                ms = 1000 * statistics.median(cpu[tag]) / args.images
                print(f"  {tag:16s} {rate:8.1f} img/s  x{rate / base:5.2f} of baseline "
                      f"(runs: {', '.join(f'{t:.2f}s' for t in ts)}; {ms:.2f} CPU ms/img)")
            ratio = (args.images / statistics.median(times["convert_annoset"])) / base
            print(f"  target >= {0.85 * cores:.2f} (0.85 x {cores} cores): "
                  f"{'met' if ratio >= 0.85 * cores else 'NOT met'} ({ratio:.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
