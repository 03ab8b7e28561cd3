"""Benchmark import_raw against write_arrays on the same samples, interleaved, with peak memory.

Usage: python scripts/bench_repair.py [--samples 1000000] [--rounds 2] [--workdir DIR]

Makes (once, kept in --workdir) the seed post's hand-written database of N samples of 12 x 12 x 3
(scripts/make_handwritten_lmdb.py: key str(i) = raw BGR bytes, key str(i)_ = "label,bbox,
landmarks" text) and saves the arrays it was made from as .npy files. Then, in rounds of A B
(each run in a fresh process, so that its memory is its own):

* A, the baseline: ``write_arrays(DB, images, labels, channels_last=True)`` on the arrays (the
  images memory-mapped from the .npy file: nothing is loaded whole);
* B: ``import_raw(SRC, DB, (12, 12, 3), labels="{}_", verify=False)``: the same images and
  labels, plus the 14 targets of each sample into DB_targets (a second database, which
  write_arrays does not write).

It prints samples/s of each run, the median ratio B/A (target >= 0.8), and the peak memory of
each run: VmHWM (the peak resident set, which counts the pages of the memory-mapped input files
that the run touched: the .npy images for A, the source LMDB for B) and the peak of RssAnon
(anonymous memory: what the process itself holds; sampled every 20 ms). A last run times
import_raw with its verify (the default) for the record.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

_CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, {here!r})
what, work, out = sys.argv[1:4]
peak = [0]
def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0
def watch():
    while True:
        peak[0] = max(peak[0], anon())
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()
import numpy as np
import caffe_lmdb
t0 = time.perf_counter()
if what == "write_arrays":
    images = np.load(os.path.join(work, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(work, "labels.npy"))
    s = caffe_lmdb.write_arrays(out, images, labels, channels_last=True)
else:
    s = caffe_lmdb.import_raw(os.path.join(work, "hand_lmdb"), out, (12, 12, 3),
                              labels="{{}}_", verify=(what == "import_raw+verify"))
seconds = time.perf_counter() - t0
peak[0] = max(peak[0], anon())
with open("/proc/self/status") as f:
    hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": seconds, "written": s.written, "hwm": hwm, "anon": peak[0],
                  "extra": s.extra}}))
"""


def prepare(work, n):
    sys.path.insert(0, HERE)
    import numpy as np
    from make_handwritten_lmdb import make_arrays, make_handwritten_lmdb

    done = os.path.join(work, "made.json")
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f).get("n") == n:
                return
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    t0 = time.perf_counter()
    arrays = make_arrays(n)
    make_handwritten_lmdb(os.path.join(work, "hand_lmdb"), arrays=arrays)
    np.save(os.path.join(work, "images.npy"), arrays["images"])
    np.save(os.path.join(work, "labels.npy"), arrays["labels"])
    with open(done, "w") as f:
        json.dump({"n": n}, f)
    print(f"made the hand-written database of {n:,} samples in {time.perf_counter() - t0:.0f} s"
          f" ({os.path.getsize(os.path.join(work, 'hand_lmdb', 'data.mdb')) / 2**20:.0f} MB)")


def run(what, work):
    out = os.path.join(work, "out_" + what.replace("+", "_"))
    for path in (out, out + "_targets"):
        shutil.rmtree(path, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", _CHILD.format(here=HERE), what, work, out],
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in (out, out + "_targets"):
        shutil.rmtree(path, ignore_errors=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/bench_repair")
    args = p.parse_args()
    prepare(args.workdir, args.samples)
    n = args.samples
    runs = {"write_arrays": [], "import_raw": []}
    for r in range(args.rounds):
        for what in ("write_arrays", "import_raw"):
            res = run(what, args.workdir)
            assert res["written"] == n, res
            runs[what].append(res)
            print(f"round {r + 1} {what:13s} {n / res['seconds']:9,.0f} samples/s "
                  f"({res['seconds']:.1f} s), peak RSS {res['hwm'] / 2**20:,.0f} MB, peak "
                  f"anonymous {res['anon'] / 2**20:,.0f} MB", flush=True)
    a = statistics.median(n / r["seconds"] for r in runs["write_arrays"])
    b = statistics.median(n / r["seconds"] for r in runs["import_raw"])
    ratios = [(n / y["seconds"]) / (n / x["seconds"])
              for x, y in zip(runs["write_arrays"], runs["import_raw"], strict=True)]
    print(f"median: write_arrays {a:,.0f} samples/s, import_raw {b:,.0f} samples/s, "
          f"ratio {b / a:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          "target >= 0.8)")
    print("import_raw key index:", runs["import_raw"][0]["extra"].get("keys"))
    res = run("import_raw+verify", args.workdir)
    print(f"import_raw with its verify: {res['seconds']:.1f} s "
          f"({n / res['seconds']:,.0f} samples/s; {res['extra'].get('verify')}), peak "
          f"anonymous {res['anon'] / 2**20:,.0f} MB")


if __name__ == "__main__":
    main()
