#!/usr/bin/env python3
"""Start-up cost: ``import caffe_lmdb`` against ``import numpy``, and ``caffe-lmdb --help``.

Usage: python scripts/bench_startup.py [--runs 15]

Every measurement is a fresh interpreter (``sys.executable``, with this checkout first on
PYTHONPATH), timed from the parent: wall-clock seconds and the CPU seconds (user + system) the
child used. The runs are interleaved (A B C ... A B C ...) and medians are printed, so load from
other processes on the machine hits every row alike; on a busy machine the wall clock can be
several times the CPU time, so both are shown.

Rows:

* ``python -c pass``: the interpreter alone (the floor of any command);
* ``import numpy``: the baseline of the import target;
* ``import caffe_lmdb``: target <= ``import numpy`` + 30 ms;
* ``import caffe_lmdb`` then ``caffe_lmdb.open`` touched: the reading core (NumPy, LMDB, the
  wire parser, the batch decoder), also held to ``import numpy`` + 30 ms;
* ``caffe-lmdb --help`` and ``caffe-lmdb COMMAND --help`` for every command, run as the console
  script runs (``from caffe_lmdb.cli import main; main()``): target < 0.1 s.

It also prints, from ``python -X importtime``, the cumulative import time of ``caffe_lmdb`` and
of the modules the command line imports, and checks that ``import caffe_lmdb`` and
``--help`` import none of cv2, google.protobuf, tqdm, torch, ray (and ``--help`` not numpy).
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
HEAVY = ("cv2", "google.protobuf", "tqdm", "torch", "ray")


def _env():
    env = dict(os.environ)
    # a user's interpreter caches compiled modules (numpy's were compiled when it was
    # installed); with PYTHONDONTWRITEBYTECODE set, every run would compile this package anew
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


ENV = _env()


def run(code):
    """(wall seconds, CPU seconds) of one fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def cli(args):
    return f"import sys; from caffe_lmdb.cli import main; sys.argv[1:] = {args!r}; main()"


def commands():
    """Every subcommand of the parser (read from the parser itself)."""
    sys.path.insert(0, REPO)
    from caffe_lmdb.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def importtime(code):
    """{module: cumulative microseconds} from ``python -X importtime -c code``."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=ENV,
                         capture_output=True, text=True, check=True).stderr
    times = {}
    for line in out.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if cumulative.strip().isdigit():
            times[name.strip()] = int(cumulative)
    return times


def loaded(code):
    """The heavy modules ``code`` leaves imported."""
    probe = (f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY + ('numpy',)!r} "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True,
                         text=True, check=True).stdout
    return out.split()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each row (median shown)")
    args = ap.parse_args(argv)

    rows = [("python -c pass", "pass"),
            ("import numpy", "import numpy"),
            ("import caffe_lmdb", "import caffe_lmdb"),
            ("import caffe_lmdb; caffe_lmdb.open", "import caffe_lmdb; caffe_lmdb.open"),
            ("caffe-lmdb --help", cli(["--help"]))]
    rows += [(f"caffe-lmdb {name} --help", cli([name, "--help"])) for name in commands()]
    samples = {label: [] for label, _ in rows}
    for _label, code in rows:  # warm the page cache and the .pyc files
        run(code)
    for _ in range(args.runs):
        for label, code in rows:
            samples[label].append(run(code))
    med = {label: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
           for label, s in samples.items()}

    print(f"Python {sys.version.split()[0]}, {args.runs} interleaved runs per row, medians "
          f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"  {'':<44} {'wall':>9} {'CPU':>9}")
    for label, _ in rows:
        wall, cpu = med[label]
        print(f"  {label:<44} {wall * 1e3:7.1f} ms {cpu * 1e3:6.1f} ms")

    numpy_wall, numpy_cpu = med["import numpy"]
    print()
    for label in ("import caffe_lmdb", "import caffe_lmdb; caffe_lmdb.open"):
        wall, cpu = med[label]
        over_wall, over_cpu = wall - numpy_wall, cpu - numpy_cpu
        ok = min(over_wall, over_cpu) <= 0.030
        print(f"  {label}: {over_wall * 1e3:+.1f} ms wall, {over_cpu * 1e3:+.1f} ms CPU over "
              f"import numpy (target <= +30 ms: {'met' if ok else 'NOT met'})")
    helps = [label for label, _ in rows if label.endswith("--help")]
    worst = max(helps, key=lambda label: med[label][0])
    worst_cpu = max(med[label][1] for label in helps)
    print(f"  --help: slowest {worst} {med[worst][0] * 1e3:.1f} ms wall; slowest CPU "
          f"{worst_cpu * 1e3:.1f} ms (target < 100 ms: "
          f"{'met' if med[worst][0] < 0.1 or worst_cpu < 0.1 else 'NOT met'})")

    print("\npython -X importtime (cumulative, one run):")
    for code, names in (("import caffe_lmdb", ["caffe_lmdb"]),
                        ("import numpy", ["numpy"]),
                        ("import caffe_lmdb; caffe_lmdb.open",
                         ["caffe_lmdb", "numpy", "lmdb", "caffe_lmdb.read.reader"]),
                        ("from caffe_lmdb.cli import main",
                         ["caffe_lmdb", "caffe_lmdb.cli", "argparse"])):
        times = importtime(code)
        shown = ", ".join(f"{n} {times[n] / 1e3:.1f} ms" for n in names if n in times)
        print(f"  {code:<40} {shown}")

    print("\nheavy modules imported:")
    for label, code in (("import caffe_lmdb", "import caffe_lmdb"),
                        ("caffe_lmdb.open", "import caffe_lmdb; caffe_lmdb.open"),
                        ("caffe-lmdb parser",
                         "from caffe_lmdb.cli import build_parser; build_parser()")):
        print(f"  {label:<20} {', '.join(loaded(code)) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
