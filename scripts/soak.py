#!/usr/bin/env python3
"""The long reliability run: many more kill trials, fuzz inputs and readers than CI runs.

It uses the functions of tests/test_reliability_*.py (the same checks as CI, larger counts)
and prints a summary: trials run and how they ended, inputs fed per fuzz target, readers held
at once, and every failure found (with what reproduces it). Exit status 1 if anything failed.

    python scripts/soak.py                       # 200 + 20 trials, 100,000 inputs per target
    python scripts/soak.py --trials 500 --inputs 300000 --readers 900 --seed 7
    python scripts/soak.py --only fuzz           # or crash, readers

Caffe's fixtures (../shared/fixtures or $CAFFE_LMDB_FIXTURES) add real Caffe records to the
decoder's seeds when present.
"""
import argparse
import collections
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(os.path.dirname(HERE), "tests")
sys.path.insert(0, TESTS)

import test_reliability_concurrency as concurrency  # noqa: E402
import test_reliability_crash as crash  # noqa: E402
import test_reliability_fuzz as fuzz  # noqa: E402

FIXTURES = os.environ.get("CAFFE_LMDB_FIXTURES",
                          os.path.join(os.path.dirname(HERE), "..", "shared", "fixtures"))


class Failures:
    def __init__(self):
        self.items = []

    def add(self, what, exc):
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=6))
        self.items.append((what, text))
        print(f"  FAILED {what}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)


def soak_crash(args, tmp, failures):
    """Kill trials (SIGKILL at hooks and random delays, some killed again while resuming)
    and SIGINT trials, each checked and resumed as in CI."""
    folder = os.path.join(tmp, "crash")
    os.makedirs(folder)
    work = crash._targets_list(crash.make_workload(folder), folder)
    records = work["records"]
    refs_dir = os.path.join(tmp, "crash_refs")
    os.makedirs(refs_dir)
    refs = {}
    plans = [("SIGKILL", crash.plan_trials(args.trials, args.seed, records)),
             ("SIGINT", crash.plan_interrupts(args.interrupts, args.seed, records))]
    stats = collections.Counter()
    t0 = time.perf_counter()
    for label, trials in plans:
        for trial in trials:
            where = os.path.join(tmp, "trials", f"{label}{trial.number}")
            os.makedirs(where)
            how = trial.crash.split(":")[0] if trial.crash else "delay"
            try:
                result = crash.run_trial(trial, work, where, refs_dir, refs)
            except Exception as exc:  # noqa: BLE001 - every failure is reported
                failures.add(f"{label} trial {trial} (seed {args.seed})", exc)
                stats[f"{label} failed"] += 1
                continue
            stats[f"{label} trials"] += 1
            stats[f"{label} {how}"] += 1
            if trial.again:
                stats[f"{label} killed again while resuming"] += 1
            if result["finished_first"]:
                stats[f"{label} finished before the signal"] += 1
            elif 0 < result["kept"] < result["total"]:
                stats[f"{label} stopped mid-run with a partial prefix"] += 1
            if (trial.number + 1) % 50 == 0:
                print(f"  {label}: {trial.number + 1} trials, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
    return stats, time.perf_counter() - t0


def soak_fuzz(args, tmp, failures):
    """>= args.inputs inputs per target, in chunks of their own seed (a failure is reported
    with the seed that reproduces it, and the rest of the target still runs)."""
    seeds = fuzz.synthetic_seeds()
    if os.path.isdir(FIXTURES):
        seeds += fuzz.fixture_seeds(FIXTURES)
    chunk = 10_000
    out = {}
    for name in fuzz.FUZZERS:
        fed, seconds, slowest = 0, 0.0, 0.0
        notes = collections.Counter()
        part = 0
        while fed < args.inputs:
            n = min(chunk, args.inputs - fed)
            seed = f"{args.seed}.{part}"
            part += 1
            try:
                got, sec, met = fuzz.run_fuzzer(name, n, seed,
                                                os.path.join(tmp, "fuzz", name), seeds)
            except Exception as exc:  # noqa: BLE001
                failures.add(f"fuzz {name} run_fuzzer({name!r}, {n}, {seed!r}, ...)", exc)
                fed += n
                continue
            fed += got
            seconds += sec
            slowest = max(slowest, sec / max(got, 1))
            notes.update(met)
        out[name] = (fed, seconds, slowest, notes)
        print(f"  {name}: {fed:,} inputs in {seconds:.1f} s", flush=True)
    return out


def soak_readers(args, tmp, failures):
    """args.readers processes holding a read transaction at once (lock=True, with the writer
    holding the database and committing), then the same without lock."""
    from caffe_lmdb.format import datum as codec
    from caffe_lmdb.write import sink

    path = os.path.join(tmp, "readers_db")
    sink.prepare_output(path)
    writer = sink.LMDBSink(path, commit_every=50)
    out = {}
    try:
        for i in range(300):
            writer.put(b"%08d" % i, codec.array_to_datum_bytes(concurrency.record(i), i))
        writer.commit()
        for lock in (True, False):
            try:
                report = concurrency._many(path, args.readers, lock=lock)
                out[lock] = report["held"]
            except Exception as exc:  # noqa: BLE001
                failures.add(f"{args.readers} readers, lock={lock}", exc)
            i = writer.entries  # one more record, committed while nobody reads
            writer.put(b"%08d" % i, codec.array_to_datum_bytes(concurrency.record(i), i))
            writer.commit()
    finally:
        writer.close()
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=200, help="SIGKILL trials (default 200)")
    p.add_argument("--interrupts", type=int, default=20, help="SIGINT trials (default 20)")
    p.add_argument("--inputs", type=int, default=100_000,
                   help="fuzz inputs per target (default 100,000)")
    p.add_argument("--readers", type=int, default=600,
                   help="processes reading at once (default 600; the reader table has 1024)")
    p.add_argument("--seed", type=int, default=20240521)
    p.add_argument("--only", choices=("crash", "fuzz", "readers"))
    args = p.parse_args(argv)
    failures = Failures()
    t0 = time.perf_counter()
    summary = []
    with tempfile.TemporaryDirectory(prefix="caffe_lmdb_soak_") as tmp:
        if args.only in (None, "crash"):
            print(f"crash trials: {args.trials} SIGKILL + {args.interrupts} SIGINT", flush=True)
            stats, seconds = soak_crash(args, tmp, failures)
            summary.append(f"crash trials ({seconds:.0f} s):")
            summary += [f"  {k}: {v}" for k, v in sorted(stats.items())]
        if args.only in (None, "fuzz"):
            print(f"fuzzing: {args.inputs:,} inputs per target", flush=True)
            counts = soak_fuzz(args, tmp, failures)
            summary.append("fuzz inputs:")
            for name, (fed, sec, slow, notes) in counts.items():
                summary.append(f"  {name:13s} {fed:>9,} inputs  {sec:6.1f} s  slowest chunk "
                               f"{slow * 1e6:.0f} us/input")
                summary += [f"      known divergence, {what}: {k}" for what, k in notes.items()]
        if args.only in (None, "readers"):
            print(f"readers: {args.readers} at once", flush=True)
            held = soak_readers(args, tmp, failures)
            summary.append("readers held at once:")
            summary += [f"  lock={lock}: {n} of {args.readers}" for lock, n in held.items()]
    print()
    print(f"soak summary (seed {args.seed}, {time.perf_counter() - t0:.0f} s)")
    print("\n".join(summary))
    print(f"failures: {len(failures.items)}")
    for what, text in failures.items:
        print(f"--- {what}\n{text}")
    return 1 if failures.items else 0


if __name__ == "__main__":
    sys.exit(main())
