"""Benchmark the image converter against a plain single-process loop, in one run.

Usage: python scripts/bench_convert.py [--images 2000] [--repeat 3] [--workdir DIR] [--small 20000]
       [--annoset]

Makes ~2,000 synthetic JPEGs of 500 x 375 in a temporary folder, then converts them to raw
256 x 256 records (convert_imageset --resize_height=256 --resize_width=256) with:

* baseline: the straightforward loop (cv2.imread, cv2.resize, array_to_datum, put, commit every
  1000 records), one process, one thread;
* convert_imageset with workers=1, and with workers = all cores (threads, the default), and
  with the process executor (to show why it is not the default);

and prints images/s and the ratio of each to the baseline (best of --repeat interleaved runs). The
target is workers=all >= 0.85 x cores x baseline. It then times --encoded pass-through of the
same files (the stored bytes are the files') against reading them all (`cat` to /dev/null).

With ``--executor ray`` it also converts with the Ray executor (a local Ray instance with one CPU
per core, or the cluster at ``--ray-address``), in the same interleaved rounds, and measures the
writer's ceiling: records/s and MB/s that the single LMDB writer sustains when 196 KB
3 x 256 x 256 records arrive ready-made, from memory and from Ray tasks that do no decoding.

Last, LevelDB against LMDB (``--backend=leveldb``, Caffe's other backend), interleaved: the same
image conversion (workers = all cores) and write_arrays of 60,000 MNIST-sized 1 x 28 x 28
records (where the writer, not decoding, sets the pace). Target: LevelDB within 20% of LMDB
(time ratio <= 1.2). ``--backends-only`` runs only this part.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import lmdb
import numpy as np

import caffe_lmdb
from caffe_lmdb.write.executors import default_workers

W, H = 500, 375
SIDE = 256


def make_images(folder, n, seed=7, size=None):
    """n JPEGs with smooth gradients, shapes and noise (realistic decode cost), a list file.
    ``size``: (W, H), default 500 x 375."""
    W, H = size or (globals()["W"], globals()["H"])  # noqa: N806
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    noise = rng.normal(0, 12, (H + 64, W + 64, 3)).astype(np.float32)
    lines = []
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.5, 3)
        dy, dx = (int(v) for v in rng.integers(0, 64, 2))
        img = np.stack([(np.sin(xx * a / 40 + i) * 80 + 120),
                        (np.cos(yy * b / 30 + i) * 80 + 120),
                        ((xx + yy) * c / 8) % 256], axis=2)
        img += noise[dy:dy + H, dx:dx + W]
        img = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(3):
            center = tuple(int(v) for v in rng.integers(0, (W, H)))
            cv2.circle(img, center, int(rng.integers(max(2, W // 50), max(3, W // 6))),
                       tuple(int(v) for v in rng.integers(0, 256, 3)), -1)
        name = f"c{i % 10}/img_{i:05d}.jpg"
        os.makedirs(os.path.join(folder, f"c{i % 10}"), exist_ok=True)
        cv2.imwrite(os.path.join(folder, name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        lines.append(f"{name} {i % 10}\n")
    list_file = os.path.join(folder, "list.txt")
    with open(list_file, "w") as f:
        f.writelines(lines)
    return list_file


def baseline(root, list_file, db, side=SIDE):
    """The plain loop people write: one image after the other, commit every 1000."""
    with open(list_file) as f:
        entries = [line.rstrip("\n").rsplit(" ", 1) for line in f]
    env = lmdb.open(db, map_size=1 << 31)
    txn = env.begin(write=True)
    for i, (path, label) in enumerate(entries):
        img = cv2.imread(os.path.join(root, path), cv2.IMREAD_COLOR)
        img = cv2.resize(img, (side, side))
        datum = caffe_lmdb.array_to_datum(img.transpose(2, 0, 1), int(label))
        txn.put(b"%08d_%s" % (i, path.encode()), datum.SerializeToString())
        if (i + 1) % 1000 == 0:
            txn.commit()
            txn = env.begin(write=True)
    txn.commit()
    env.close()


def timed(fn, out):
    """Seconds for one run, starting with the disk quiet: the previous run's dirty pages are
    flushed first (os.sync), so that their writeback does not land on this run's clock."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    t = time.perf_counter()
    fn(out)
    return time.perf_counter() - t


def best_of(runs, work, repeat):
    """Best time of each run over ``repeat`` rounds, the runs interleaved within each round so
    that a burst of load elsewhere on the machine does not favour one of them."""
    best = {}
    best_of.times = {}
    for _ in range(repeat):
        for _label, fn, tag in runs:
            secs = timed(fn, os.path.join(work, tag))
            best[tag] = min(best.get(tag, secs), secs)
            best_of.times.setdefault(tag, []).append(secs)
    return best


def same_db(a, b):
    ea, eb = lmdb.open(a, readonly=True, lock=False), lmdb.open(b, readonly=True, lock=False)
    try:
        with ea.begin() as ta, eb.begin() as tb:
            return list(ta.cursor()) == list(tb.cursor())
    finally:
        ea.close()
        eb.close()


def start_ray(address, cores):
    """Join the cluster, or start a local instance with one CPU per core; its start-up (about
    2 s here) is not timed, as it is paid once per session. Returns the cluster's CPUs."""
    import ray

    local = {} if address else dict(num_cpus=cores, include_dashboard=False)
    ray.init(address=address, log_to_driver=False, **local)
    return int(ray.cluster_resources().get("CPU", 0))


def _ready_records(count):
    """A Ray task that does no decoding: ``count`` ready-made 3 x 256 x 256 records."""
    value = caffe_lmdb.datum_bytes(3, SIDE, SIDE, data=bytes(3 * SIDE * SIDE), label=1,
                                   encoded=False)
    return [value] * count


def writer_ceiling(work, n, repeat, rates):
    """The single writer's ceiling: the sink fed n ready-made 196 KB records (commits as in a
    conversion: every 1000 records or 64 MB), from memory, and from Ray tasks of 32 records
    fetched in order through ordered_map (the Ray executor's path without the decoding)."""
    from caffe_lmdb.write.executors import ordered_map
    from caffe_lmdb.write.ray import RayExecutor
    from caffe_lmdb.write.sink import LMDBSink, prepare_output

    rng = np.random.default_rng(0)
    values = [caffe_lmdb.datum_bytes(3, SIDE, SIDE, label=i % 10, encoded=False,
                                     data=rng.integers(0, 256, 3 * SIDE * SIDE, np.uint8))
              for i in range(16)]
    size = len(values[0])

    def write(batches, out):
        prepare_output(out)
        sink = LMDBSink(out)
        i = 0
        for batch in batches:
            for value in batch:
                sink.put(b"%08d" % i, value)
                i += 1
                if sink.batch_full:
                    sink.commit()
        sink.close()

    def from_memory(out):
        write(([values[i % 16] for i in range(start, min(n, start + 32))]
               for start in range(0, n, 32)), out)

    def from_ray(out):
        executor = RayExecutor()
        try:
            write(ordered_map(_ready_records, [min(32, n - s) for s in range(0, n, 32)],
                              executor), out)
        finally:
            executor.shutdown()

    best = best_of([("memory", from_memory, "sink"), ("ray", from_ray, "sinkray")], work,
                   repeat)
    for tag, what in (("sink", "records ready in memory"),
                      ("sinkray", "records from Ray tasks (no decoding)")):
        secs = best[tag]
        print(f"writer-only ceiling, {what}: {n} records of {size / 1e3:.0f} KB in "
              f"{secs:.2f} s = {n / secs:.0f} records/s, {n * size / secs / 1e6:.0f} MB/s "
              f"({n / secs / rates['ray']:.1f}x the Ray executor's images/s)")


def read_any(path):
    """Every (key, value) of an LMDB or LevelDB folder, through caffe_lmdb's read view."""
    db = caffe_lmdb.open(path)
    try:
        with db.begin(buffers=False) as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.iter_items()]
    finally:
        db.close()


def bench_backends(work, root, list_file, n_images, cores, repeat, records=60000):
    """LevelDB vs LMDB: the same conversions, interleaved, best of ``repeat`` each."""
    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, (records, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, records)

    def images(backend):
        return lambda out: caffe_lmdb.convert_imageset(
            root, list_file, out, resize_height=SIDE, resize_width=SIDE, workers=cores,
            backend=backend)

    def small(backend):
        return lambda out: caffe_lmdb.write_arrays(out, arrays, labels, backend=backend)

    runs = [("convert_imageset, LMDB", images("lmdb"), "img_lmdb"),
            ("convert_imageset, LevelDB", images("leveldb"), "img_leveldb"),
            (f"write_arrays {records} x 1x28x28, LMDB", small("lmdb"), "small_lmdb"),
            (f"write_arrays {records} x 1x28x28, LevelDB", small("leveldb"), "small_leveldb")]
    best = best_of(runs, work, repeat)
    print(f"LevelDB vs LMDB (best of {repeat} interleaved rounds):")
    counts = {"img": n_images, "small": records}
    for label, _fn, tag in runs:
        n = counts[tag.split("_")[0]]
        print(f"  {label:<52} {best[tag]:6.2f} s  {n / best[tag]:8.0f} records/s")
    for kind in ("img", "small"):
        ratio = best[f"{kind}_leveldb"] / best[f"{kind}_lmdb"]
        same = read_any(os.path.join(work, f"{kind}_lmdb")) == \
            read_any(os.path.join(work, f"{kind}_leveldb"))
        what = "image conversion" if kind == "img" else "small records"
        print(f"  {what}: LevelDB time / LMDB time = {ratio:.2f} (target <= 1.20: "
              f"{'MET' if ratio <= 1.2 else 'NOT MET'}); same keys and values: {same}")


def opens_per_image(root, list_file, work, n):
    """Files opened (Python's open, through the audit hook) per image by a conversion of the
    first n images of the list, against the images themselves."""
    short = os.path.join(work, "short_list.txt")
    with open(list_file) as f, open(short, "w") as g:
        g.writelines(line for _, line in zip(range(n), f, strict=False))
    opened = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].endswith(".jpg"):
            opened.append(args[0])

    sys.addaudithook(hook)  # (stays installed: it only appends while `opened` is referenced)
    caffe_lmdb.convert_imageset(root, short, os.path.join(work, "opens"), resize_height=32,
                                resize_width=32, workers=2)
    count = len(opened)
    opened = []
    return count / n


def small_images(args, cores):
    """convert-imageset on small images: --small JPEGs of 128 x 96 resized to 32 x 32."""
    work = tempfile.mkdtemp(prefix="bench_convert_small_", dir=args.workdir)
    try:
        root = os.path.join(work, "images") + os.sep
        t = time.perf_counter()
        list_file = make_images(root, args.small, size=(128, 96))
        print(f"{args.small} JPEGs of 128x96 made in {time.perf_counter() - t:.1f} s; {cores} "
              "cores; resize to 32x32")

        def ours(workers):
            return lambda out: caffe_lmdb.convert_imageset(
                root, list_file, out, resize_height=32, resize_width=32, workers=workers)

        runs = [("baseline loop (imread, resize, array_to_datum, put)",
                 lambda out: baseline(root, list_file, out, 32), "base"),
                ("convert_imageset workers=1", ours(1), "w1"),
                (f"convert_imageset workers={cores} (threads)", ours(cores), "wall")]
        best = best_of(runs, work, args.repeat)
        rates = {tag: args.small / best[tag] for tag in best}
        for label, _fn, tag in runs:
            print(f"  {label:<52} {best[tag]:6.2f} s  {rates[tag]:7.0f} images/s  "
                  f"{rates[tag] / rates['base']:.2f}x baseline")
        med = {tag: statistics.median(v) for tag, v in best_of.times.items()}
        print("  medians: " + ", ".join(f"{tag} {med[tag]:.2f} s ({med['base'] / med[tag]:.2f}x)"
                                        for _label, _fn, tag in runs))
        identical = all(same_db(os.path.join(work, "base"), os.path.join(work, t))
                        for _label, _fn, t in runs[1:])
        ratio = rates["wall"] / rates["base"]
        print(f"  all {len(runs)} databases identical (every key and value): {identical}")
        print(f"  workers={cores} / baseline = {ratio:.2f}x best, "
              f"{med['base'] / med['wall']:.2f}x median; target 1.7x: "
              f"{'MET' if ratio >= 1.7 else 'NOT MET'}")
        print(f"  image files opened per image: {opens_per_image(root, list_file, work, 200):.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where to put images and DBs (a temp dir)")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="ray: add the Ray executor and the writer-only ceiling")
    ap.add_argument("--ray-address", default=None, help="a Ray cluster to join (default: start "
                    "a local instance with one CPU per core)")
    ap.add_argument("--ceiling-records", type=int, default=10000,
                    help="records written for the writer-only ceiling (default 10000, 2 GB)")
    ap.add_argument("--backends-only", action="store_true",
                    help="only the LevelDB vs LMDB comparison")
    ap.add_argument("--small", type=int, default=0, metavar="N",
                    help="instead: N small JPEGs (128x96 -> 32x32; the issue's figure is 20000)")
    ap.add_argument("--annoset", action="store_true",
                    help="instead: convert-annoset on --images JPEGs with VOC XML files, against "
                    "a single-process loop writing the same detection database "
                    "(scripts/bench_annoset.py)")
    args = ap.parse_args()
    cores = default_workers()
    if args.annoset:
        from bench_annoset import main as annoset_main  # (it imports this module's helpers)

        return annoset_main(["--images", str(args.images), "--repeat", str(args.repeat)]
                            + (["--workdir", args.workdir] if args.workdir else []))
    if args.small:
        small_images(args, cores)
        return 0
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="bench_convert_", dir=args.workdir)
    try:
        root = os.path.join(work, "images") + os.sep
        t = time.perf_counter()
        list_file = make_images(root, args.images)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root)
                   for f in files if f.endswith(".jpg"))
        print(f"{args.images} JPEGs of {W}x{H} made in {time.perf_counter() - t:.1f} s "
              f"({size / 1e6:.0f} MB); {cores} cores; resize to {SIDE}x{SIDE}")
        if args.backends_only:
            bench_backends(work, root, list_file, args.images, cores, args.repeat)
            return 0

        def ours(workers, executor="thread"):
            return lambda out: caffe_lmdb.convert_imageset(
                root, list_file, out, resize_height=SIDE, resize_width=SIDE, workers=workers,
                executor=executor)

        runs = [("baseline loop (imread, resize, array_to_datum, put)",
                 lambda out: baseline(root, list_file, out), "base"),
                ("convert_imageset workers=1", ours(1), "w1"),
                (f"convert_imageset workers={cores} (threads)", ours(cores), "wall"),
                (f"convert_imageset workers={cores} executor=process", ours(cores, "process"),
                 "proc")]
        if args.executor == "ray":
            cpus = start_ray(args.ray_address, cores)
            runs.append((f"convert_imageset executor=ray ({cpus} CPUs)", ours(None, "ray"),
                         "ray"))
        best = best_of(runs, work, args.repeat)
        rates = {tag: args.images / best[tag] for tag in best}
        for label, _fn, tag in runs:
            print(f"  {label:<52} {best[tag]:6.2f} s  {rates[tag]:7.0f} images/s  "
                  f"{rates[tag] / rates['base']:.2f}x baseline")
        identical = all(same_db(os.path.join(work, "base"), os.path.join(work, t))
                        for _label, _fn, t in runs[1:])
        target = 0.85 * cores
        ratio = rates["wall"] / rates["base"]
        print(f"  all {len(runs)} databases identical (every key and value): {identical}")
        print(f"  workers={cores} / baseline = {ratio:.2f}x; target 0.85 x {cores} cores = "
              f"{target:.2f}x: {'MET' if ratio >= target else 'NOT MET'}")
        if args.executor == "ray":
            writer_ceiling(work, args.ceiling_records, args.repeat, rates)

        passthrough = [
            ("cat", lambda out: subprocess.run(
                f"find {root!r} -name '*.jpg' -print0 | xargs -0 cat > /dev/null", shell=True,
                check=True), "cat"),
            ("encoded", lambda out: caffe_lmdb.convert_imageset(
                root, list_file, out, encoded=True, workers=cores), "enc")]
        best = best_of(passthrough, work, args.repeat)
        cat, enc = best["cat"], best["enc"]
        print(f"encoded pass-through (--encoded, workers={cores}): {enc:.2f} s "
              f"({args.images / enc:.0f} images/s); cat to /dev/null: {cat:.2f} s "
              f"({args.images / cat:.0f} files/s); pass-through / cat time = {enc / cat:.1f}x")
        bench_backends(work, root, list_file, args.images, cores, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
