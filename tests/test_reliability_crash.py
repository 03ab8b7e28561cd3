"""Crash harness: real conversions killed at many moments, then checked and resumed.

Each trial runs a conversion in a child process and stops it, either at an exact point of the
writer (``CAFFE_LMDB_TEST_CRASH_AT``, see caffe_lmdb.sink: after the n-th put, before or after
the n-th commit, before or after the n-th save of the resume state) or after a random delay.
Then: the database opens, ``verify`` passes, what it holds is a prefix of an uninterrupted
run's records (same keys, same bytes, same order), the resume state never claims more than
the database holds, and ``--resume`` (through the command line) finishes it to exactly the
records of an uninterrupted run, skipped images and their log included. Some trials are killed
a second time while resuming.

The plan is seeded (CAFFE_LMDB_CRASH_SEED); CI runs 24 SIGKILL trials and 4 SIGINT trials,
scripts/soak.py runs as many as asked with the same functions.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace

import cv2
import numpy as np
import pytest
from conftest import read_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main as cli_main
from caffe_lmdb.tools.dbinfo import verify
from caffe_lmdb.write import sink

CRASH_SEED = int(os.environ.get("CAFFE_LMDB_CRASH_SEED", "20240521"))
CI_TRIALS = 24
CI_INTERRUPTS = 4

_CHILD = """
import json, sys
import caffe_lmdb
job = json.loads(sys.argv[1])
kind = job.pop("kind")
if kind == "mnist":
    caffe_lmdb.convert_mnist(**job)
else:
    caffe_lmdb.convert_imageset(**job)
"""
# Ctrl-C as at a terminal, even when this process was started with SIGINT ignored (as a
# background job is), which the child would inherit, and Python would then leave ignored
_CLI = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from caffe_lmdb.cli import main; sys.exit(main())")

# --------------------------------------------------------------------------------------------
# Inputs: small synthetic images (with one missing and one corrupt line) and an MNIST pair
# --------------------------------------------------------------------------------------------


def make_workload(folder, images=40, repeat=5, seed=0):
    """Image files under ``folder/imgs``, a list file repeating them ``repeat`` times with a
    missing and an undecodable image among the lines, and synthetic MNIST idx files.
    Returns a dict of paths and the number of records each conversion writes."""
    rng = np.random.default_rng(seed)
    root = os.path.join(folder, "imgs")
    os.makedirs(os.path.join(root, "a b"), exist_ok=True)
    names = []
    for i in range(images):
        name = f"a b/img {i:03d}{'.png' if i % 3 else '.jpg'}"
        h, w = (int(v) for v in rng.integers(8, 24, 2))
        cv2.imwrite(os.path.join(root, name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        names.append(name)
    with open(os.path.join(root, "a b", "bad.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a JPEG")
    lines = [f"{names[i % images]} {i % 7}" for i in range(images * repeat)]
    lines.insert(3, "a b/missing.png 1")
    lines.insert(len(lines) // 2, "a b/bad.jpg 2")
    list_file = os.path.join(folder, "list.txt")
    with open(list_file, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    n = 120
    mnist_images = os.path.join(folder, "images-idx3-ubyte")
    mnist_labels = os.path.join(folder, "labels-idx1-ubyte")
    with open(mnist_images, "wb") as f:
        f.write(np.array([2051, n, 28, 28], ">u4").tobytes())
        f.write(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8).tobytes())
    with open(mnist_labels, "wb") as f:
        f.write(np.array([2049, n], ">u4").tobytes() + (np.arange(n) % 10).astype(np.uint8)
                .tobytes())
    return {"root": root + "/", "list_file": list_file, "images": mnist_images,
            "labels": mnist_labels, "records": {"imageset": len(lines) - 2, "targets":
                                                len(lines) - 2, "mnist": n}}


@dataclass(frozen=True)
class Trial:
    """One interrupted conversion. ``crash``: ``"point:n"`` (a hook of caffe_lmdb.sink) or
    None to stop after ``delay`` seconds; ``again``: a hook for a second kill, while resuming."""
    number: int
    kind: str              # "imageset", "targets" (a second, float DB) or "mnist"
    commit_every: int
    shuffle_seed: object   # None: not shuffled; "draw": shuffled, seed drawn and saved
    crash: str = None
    delay: float = None
    again: str = None
    signal: str = "KILL"

    def __str__(self):
        how = self.crash or f"after {self.delay * 1000:.0f} ms"
        more = f", again at {self.again}" if self.again else ""
        return (f"#{self.number} {self.kind} commit_every={self.commit_every} "
                f"shuffle={self.shuffle_seed} SIG{self.signal} {how}{more}")


_POINTS = ("put", "commit", "committed", "state", "saved")


def _hook(rng, point, records, commit_every):
    """A hook ``point:n`` that is reached before the conversion ends."""
    commits = records // commit_every  # full batches: the last, short one is the final save
    if point == "put":
        return f"put:{rng.randint(1, records)}"
    if point in ("commit", "committed"):
        return f"{point}:{rng.randint(1, max(1, commits))}"
    return f"{point}:{rng.randint(1, commits + 1)}"  # save 1 is the state before any record


def plan_trials(count, seed, records):
    """``count`` SIGKILL trials, spread over every hook point and random delays, seeded."""
    rng = random.Random(seed)
    kinds = ("imageset", "imageset", "targets", "mnist")
    trials = [  # the moments before anything is committed come first, every time
        Trial(0, "imageset", 5, "draw", crash="put:1"),
        Trial(1, "imageset", 5, "draw", crash="state:1"),
        Trial(2, "targets", 5, 7, crash="saved:1"),
    ]
    for number in range(len(trials), count):
        kind = kinds[number % len(kinds)]
        shuffle = rng.choice([None, "draw", rng.randrange(1000)])
        if kind == "mnist":
            shuffle = None  # convert_mnist does not shuffle
        mode = (_POINTS + ("delay",))[number % (len(_POINTS) + 1)]
        if mode == "delay":
            trials.append(Trial(number, kind, rng.choice([1, 2]), shuffle,
                                delay=rng.uniform(0.0, 0.12)))
            continue
        ce = rng.choice([1, 3, 5, 8, 16])
        crash = _hook(rng, mode, records[kind], ce)
        again = None
        if number % 5 == 4:  # killed again while resuming
            again = _hook(rng, rng.choice(_POINTS), records[kind], ce)
        trials.append(Trial(number, kind, ce, shuffle, crash=crash, again=again))
    return trials[:count]


def plan_interrupts(count, seed, records):
    """SIGINT trials through the command line: at hook points and after random delays."""
    rng = random.Random(seed + 1)
    out = []
    for number in range(count):
        if number % 2 == 0:
            crash = _hook(rng, rng.choice(_POINTS), records["imageset"], 1000)
            out.append(Trial(number, "imageset", 1000, 11, crash=crash, signal="INT"))
        else:
            out.append(Trial(number, "imageset", 1000, 11, delay=rng.uniform(0.0, 0.05),
                             signal="INT"))
    return out


# --------------------------------------------------------------------------------------------
# Running and checking one trial
# --------------------------------------------------------------------------------------------


def _seed(trial, db=None):
    """The shuffle seed of a trial (None: not shuffled); a drawn one is read from the state."""
    if trial.shuffle_seed != "draw":
        return trial.shuffle_seed
    state = sink.read_state(db) if db is not None else None
    return None if state is None else state["job"].get("seed")


def _job(trial, work, db, seed=None, resume=False):
    """Keywords of the API call in the child (``seed`` for a reference run)."""
    job = {"kind": trial.kind, "db": str(db), "commit_every": trial.commit_every,
           "resume": resume}
    if trial.kind == "mnist":
        job.update(images=work["images"], labels=work["labels"])
        return job
    job.update(root=work["root"], list_file=work["list_file"], resize_height=12,
               resize_width=10, workers=2)
    if trial.kind == "targets":
        job.update(list_file=work["targets_list"], targets=1)
    if trial.shuffle_seed is not None:
        job.update(shuffle=True, seed=seed if seed is not None else _seed(trial))
    return job


def _cli_argv(trial, work, db, resume=False):
    """The same conversion as a command line (which commits every 1000, as Caffe)."""
    flags = ["--quiet"] + (["--resume"] if resume else [])
    if trial.kind == "mnist":
        return ["convert-mnist", *flags, work["images"], work["labels"], str(db)]
    flags += ["--resize_height=12", "--resize_width=10", "--workers=2"]
    if trial.shuffle_seed is not None:
        flags.append("--shuffle")
        if trial.shuffle_seed != "draw":
            flags.append(f"--seed={trial.shuffle_seed}")
    lst = work["list_file"]
    if trial.kind == "targets":
        flags.append("--targets=1")
        lst = work["targets_list"]
    return ["convert-imageset", *flags, work["root"], lst, str(db)]


def _start(trial, work, db, crash, resume=False):
    env = dict(os.environ)
    env.pop("CAFFE_LMDB_TEST_CRASH_AT", None)
    if crash:
        env["CAFFE_LMDB_TEST_CRASH_AT"] = crash + (":INT" if trial.signal == "INT" else "")
    if trial.signal == "INT":
        cmd = [sys.executable, "-c", _CLI, *_cli_argv(trial, work, db, resume)]
    else:
        cmd = [sys.executable, "-c", _CHILD, json.dumps(_job(trial, work, db, resume=resume))]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _stop_after(proc, db, delay, signum):
    """Wait for the conversion to start (its state file appears), then signal it after
    ``delay`` seconds (unless it finished already)."""
    state = os.path.join(db, sink.STATE_NAME)
    deadline = time.monotonic() + 60
    while not os.path.exists(state) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signum)


def interrupt(trial, work, db, crash=None, resume=False):
    """Run the trial's conversion and stop it; returns (returncode, stderr)."""
    crash = crash if crash is not None else trial.crash
    proc = _start(trial, work, db, crash, resume)
    if crash is None:
        _stop_after(proc, str(db), trial.delay,
                    signal.SIGINT if trial.signal == "INT" else signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def reference(trial, work, refs_dir, refs, seed):
    """(records, target records, skip log lines, summary) of an uninterrupted run with this
    shuffle seed (None: not shuffled); cached."""
    key = (trial.kind, seed)
    if key not in refs:
        path = os.path.join(refs_dir, f"ref_{len(refs)}")
        job = _job(trial, work, path, seed=seed)
        kind = job.pop("kind")
        convert = caffe_lmdb.convert_mnist if kind == "mnist" else caffe_lmdb.convert_imageset
        summary = convert(**job)
        targets = read_lmdb(path + "_targets") if kind == "targets" else None
        refs[key] = (read_lmdb(path), targets, _skip_lines(path), summary)
    return refs[key]


def _skip_lines(db):
    with open(os.path.join(db, sink.LOG_NAME), encoding="utf-8") as f:
        return sorted(line for line in f if not line.startswith("#"))


def expected_prefix(crash, commit_every, records):
    """How many records a kill at this hook leaves committed."""
    point, n = crash.split(":")[:2]
    n = int(n)
    if point == "put":
        return (n - 1) // commit_every * commit_every
    if point == "commit":
        return (n - 1) * commit_every
    if point == "committed":
        return n * commit_every
    return min((n - 1) * commit_every, records)  # save 1 is the state written before any record


def check_prefix(db, ref_records, exact=None):
    """The database as an interruption left it: opens, verifies, is a prefix of
    ``ref_records``; its resume state claims no more than it holds. Returns its length."""
    db = str(db)
    if not os.path.exists(os.path.join(db, "data.mdb")):
        assert exact in (None, 0), f"no database, expected {exact} records"
        return 0
    with caffe_lmdb.open(db) as reader:
        report = verify(reader)
        n = len(reader)
    assert report.ok, str(report)
    prefix = read_lmdb(db)
    assert len(prefix) == n
    assert prefix == ref_records[:n], "the records left are not a prefix of the full run"
    if exact is not None:
        assert n == exact, f"{n} records committed, expected {exact}"
    state = sink.read_state(db)
    if state is not None and not state["done"]:
        assert state.get("written", 0) <= n, "the resume state claims records that are not there"
    return n


def run_trial(trial, work, tmp, refs_dir, refs):
    """Interrupt, check, (interrupt the resume and check again,) resume with the command
    line, compare with an uninterrupted run. Returns what happened (for the soak summary)."""
    db = os.path.join(tmp, f"db{trial.number}")
    rc, err = interrupt(trial, work, db)
    state = sink.read_state(db)
    # a SIGINT that comes while the interpreter exits kills it (Python has restored the default
    # handler by then): the conversion was over
    finished_first = rc == 0 or (rc == -signal.SIGINT and state is not None and state["done"])
    if trial.signal == "KILL":
        assert rc in (0, -signal.SIGKILL), err
        assert rc != 0 or trial.crash is None, f"the hook {trial.crash} was never reached"
    elif trial.crash is not None:
        assert rc == 130, f"the hook {trial.crash}: exit status {rc}, {err}"
    if trial.signal == "INT" and not finished_first:
        assert rc == 130 and "Traceback" not in err, err
        assert "run the same command with --resume" in err, err
    seed = _seed(trial, db)
    if trial.shuffle_seed == "draw" and seed is None:  # killed before the seed was saved
        kept = check_prefix(db, [], exact=0)
    else:
        records = reference(trial, work, refs_dir, refs, seed)[0]
        exact = None
        if trial.crash and trial.kind != "targets" and trial.signal == "KILL":
            exact = expected_prefix(trial.crash, trial.commit_every, len(records))
        kept = check_prefix(db, records, exact)
    if trial.again:
        rc, err = interrupt(replace(trial, signal="KILL"), work, db, crash=trial.again,
                            resume=True)
        assert rc in (0, -signal.SIGKILL), err
        seed = _seed(trial, db)
        if trial.shuffle_seed != "draw" or seed is not None:
            check_prefix(db, reference(trial, work, refs_dir, refs, seed)[0])
    assert cli_main(_cli_argv(trial, work, db, resume=True)) == 0
    records, targets, skips, summary = reference(trial, work, refs_dir, refs, _seed(trial, db))
    assert read_lmdb(db) == records, "the resumed database differs from an uninterrupted run"
    if targets is not None:
        assert read_lmdb(db + "_targets") == targets
    assert _skip_lines(db) == skips
    state = sink.read_state(db)
    assert state["done"] and state["written"] == len(records)
    assert len(state["skipped"]) == len(summary.skipped)
    return {"kept": kept, "total": len(records), "finished_first": finished_first}


# --------------------------------------------------------------------------------------------
# The CI run
# --------------------------------------------------------------------------------------------


def _targets_list(work, folder):
    """The list with one target value per line (for the two-database trials)."""
    path = os.path.join(folder, "targets.txt")
    with open(work["list_file"], encoding="utf-8") as f, \
            open(path, "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            out.write(f"{line.rstrip()} {i * 0.25}\n")
    work["targets_list"] = path
    return work


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("crash_inputs"))
    return _targets_list(make_workload(folder), folder)


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return str(tmp_path_factory.mktemp("crash_refs")), {}


_RECORDS = {"imageset": 200, "targets": 200, "mnist": 120}  # what make_workload() writes


def test_workload_sizes(work):
    assert work["records"] == _RECORDS


@pytest.mark.parametrize("trial", plan_trials(CI_TRIALS, CRASH_SEED, _RECORDS), ids=str)
def test_sigkill_then_resume(trial, work, refs, tmp_path):
    run_trial(trial, work, str(tmp_path), *refs)


@pytest.mark.parametrize("trial", plan_interrupts(CI_INTERRUPTS, CRASH_SEED, _RECORDS), ids=str)
def test_sigint_stops_cleanly_and_says_how_to_resume(trial, work, refs, tmp_path):
    run_trial(trial, work, str(tmp_path), *refs)


def test_plan_covers_every_point():
    trials = plan_trials(CI_TRIALS, CRASH_SEED, _RECORDS)
    points = {t.crash.split(":")[0] for t in trials if t.crash}
    assert points == set(_POINTS)
    assert sum(t.delay is not None for t in trials) >= 3
    assert any(t.again for t in trials) and {t.kind for t in trials} == set(_RECORDS)
    mid_batch = [t for t in trials if t.crash and t.crash.startswith("put:")
                 and int(t.crash.split(":")[1]) % t.commit_every]
    assert mid_batch, "no kill in the middle of a batch"


def test_ctrl_c_while_workers_decode_exits_with_130_not_an_abort(tmp_path):
    """Ctrl-C while the worker threads are inside OpenCV: the run stops, says how to resume,
    and exits with 130. (Threads left decoding while the interpreter exited made it abort with
    "terminate called without an active exception", every time with images this large.)"""
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 256, (600, 600, 3), np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"{i % 4}.jpg {i}\n" for i in range(60)))
    args = ["--resize_height=32", "--resize_width=32", "--workers=2", f"{tmp_path}/",
            str(tmp_path / "list.txt")]
    assert cli_main(["convert-imageset", "--quiet", *args, str(tmp_path / "ref")]) == 0
    whole = read_lmdb(tmp_path / "ref")
    for n in (5, 9, 14):
        env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT=f"put:{n}:INT")
        db = tmp_path / f"db{n}"
        done = subprocess.run([sys.executable, "-c", _CLI, "convert-imageset", "--quiet", *args,
                               str(db)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 130, done.stderr
        assert "run the same command with --resume" in done.stderr
        assert check_prefix(db, whole) >= n  # the open batch was committed on the way out


def test_interrupt_right_after_a_skip_does_not_log_it_twice(work, tmp_path, monkeypatch):
    """Ctrl-C between noting a skipped image and moving past it: the state saved on the way
    out lists the skip but not the progress, so the resumed run meets the image again. It
    must be listed (and logged) once."""
    from caffe_lmdb.write import convert

    def interrupted(skip):
        raise KeyboardInterrupt

    args = (work["root"], work["list_file"])
    monkeypatch.setattr(convert, "_skip_line", interrupted)
    with pytest.raises(KeyboardInterrupt):
        caffe_lmdb.convert_imageset(*args, tmp_path / "db", commit_every=7)
    monkeypatch.undo()
    summary = caffe_lmdb.convert_imageset(*args, tmp_path / "db", resume=True)
    whole = caffe_lmdb.convert_imageset(*args, tmp_path / "whole")
    assert [s.where for s in summary.skipped] == [s.where for s in whole.skipped]
    assert _skip_lines(tmp_path / "db") == _skip_lines(tmp_path / "whole")
    assert read_lmdb(tmp_path / "db") == read_lmdb(tmp_path / "whole")
