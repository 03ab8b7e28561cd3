"""Repairs of hand-written databases (caffe_lmdb.write.repair): import_raw and rekey.

The seed post's database (scripts/make_handwritten_lmdb.py: key str(idx) = raw 12x12x3 BGR
bytes, key str(idx) + "_" = "label,x1 y1 x2 y2,l1 .. l10") is imported and every record checked
against the arrays the maker started from; rekey gives back extract_features' own database;
kills at every stage of a commit resume to the uninterrupted result, byte for byte."""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import read_lmdb
from handwritten import handwritten_lmdb
from helpers import write_lmdb
from hypothesis import given, settings
from hypothesis import strategies as st

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import (
    NotADatumDBError,
    OptionError,
    ResumeError,
    SourceFormatError,
    VerifyError,
)
from caffe_lmdb.format.datum import array_to_datum_bytes, datum_bytes
from caffe_lmdb.tools.dbinfo import info, verify
from caffe_lmdb.write import repair, sink
from caffe_lmdb.write.encode import targets_bytes

N = 3000
SHAPE = (12, 12, 3)


@pytest.fixture(scope="module")
def seed_db(tmp_path_factory):
    """The seed post's database of N samples, and the arrays it was made from."""
    path = tmp_path_factory.mktemp("seed") / "hand_lmdb"
    return path, handwritten_lmdb(path, N)


@pytest.fixture(scope="module")
def imported(seed_db, tmp_path_factory):
    src, arrays = seed_db
    dst = tmp_path_factory.mktemp("imported") / "train_lmdb"
    summary = caffe_lmdb.import_raw(src, dst, SHAPE, labels="{}_")
    return dst, summary, arrays


def _targets(arrays):
    return np.concatenate([arrays["bbox"], arrays["landmarks"]], axis=1)


# ---------------------------------------------------------------------------------------------
# The seed post's database
# ---------------------------------------------------------------------------------------------


def test_the_seed_database_reads_out_of_order(seed_db):
    src, _ = seed_db
    keys = [k for k, _ in read_lmdb(src)]
    assert keys[:6] == [b"0", b"0_", b"1", b"10", b"100", b"1000"]
    assert keys.index(b"1000") < keys.index(b"2")  # image 1000 comes before image 2


def test_import_every_record_holds_its_own_sample(imported):
    dst, summary, arrays = imported
    tdst = str(dst) + "_targets"
    assert summary.written == N and summary.skipped == [] and summary.total == N
    assert summary.targets_path == tdst
    assert summary.extra["verify"].startswith("OK")
    records, targets = read_lmdb(dst), read_lmdb(tdst)
    assert [k for k, _ in records] == [b"%08d" % i for i in range(N)]
    assert [k for k, _ in targets] == [k for k, _ in records]
    values = _targets(arrays)
    for i in (0, 1, 2, 10, 99, 100, 999, 1000, 1001, 2999):
        # Caffe's record of image i: planar BGR as stored, encoded=false, label i
        assert records[i][1] == array_to_datum_bytes(arrays["images"][i].transpose(2, 0, 1),
                                                     int(arrays["labels"][i]))
        # what convert-imageset --targets writes for "path label v1 .. v14"
        assert targets[i][1] == targets_bytes(values[i], int(arrays["labels"][i]))
    with caffe_lmdb.open(dst) as db, caffe_lmdb.open(tdst) as tdb:
        images, labels = db.read(range(N))
        floats, tlabels = tdb.read(range(N))
    np.testing.assert_array_equal(images, arrays["images"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(labels, arrays["labels"])
    np.testing.assert_array_equal(tlabels, arrays["labels"])
    assert floats.shape == (N, 14, 1, 1) and floats.dtype == np.float32
    np.testing.assert_array_equal(floats[:, :4, 0, 0], arrays["bbox"].astype(np.float32))
    np.testing.assert_array_equal(floats[:, 4:, 0, 0], arrays["landmarks"].astype(np.float32))
    assert verify(dst).ok and verify(tdst).ok


def test_datum_dataset_with_the_companion_returns_them_together(imported):
    torch = pytest.importorskip("torch")
    from caffe_lmdb.torch import DatumDataset

    dst, _, arrays = imported
    ds = DatumDataset(dst, companion=str(dst) + "_targets", keep_label=True)
    assert len(ds) == N
    for i in (3, 1000, 1234, 2999):
        image, label, target = ds[i]
        np.testing.assert_array_equal(image.numpy(), arrays["images"][i].transpose(2, 0, 1))
        assert label == arrays["labels"][i]
        assert target.dtype == torch.float32 and target.shape == (14,)
        np.testing.assert_array_equal(target[:4].numpy(), arrays["bbox"][i].astype(np.float32))
        np.testing.assert_array_equal(target[4:].numpy(),
                                      arrays["landmarks"][i].astype(np.float32))
    batch = ds.__getitems__([2999, 10, 1001])
    for (image, label, target), i in zip(batch, [2999, 10, 1001], strict=True):
        np.testing.assert_array_equal(image.numpy(), arrays["images"][i].transpose(2, 0, 1))
        assert label == arrays["labels"][i]
        np.testing.assert_array_equal(target.numpy(), _targets(arrays)[i].astype(np.float32))


def test_import_raw_command(seed_db, tmp_path, capsys):
    src, arrays = seed_db
    rc = main(["import-raw", str(src), str(tmp_path / "db"), "--shape", "12,12,3", "--labels",
               "{}_", "--quiet"])
    assert rc == 0 and capsys.readouterr().out == ""
    rc = main(["import-raw", str(src), str(tmp_path / "db"), "--shape", "12,12,3", "--labels",
               "{}_", "--overwrite"])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"{N} records written, 0 skipped" in out and "targets (float_data" in out
    assert "numeric order -> %08d" in out and "verify: OK" in out
    # a wrong shape: one line naming the key and the fix, exit 1
    rc = main(["import-raw", str(src), str(tmp_path / "db2"), "--shape", "12,12,4",
               "--labels", "{}_"])
    err = capsys.readouterr().err
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("caffe-lmdb: ") and "key '0'" in err and "432 bytes" in err


def test_verify_names_the_commands_that_fix_them(seed_db, tmp_path, capsys):
    src, _ = seed_db
    # raw values: the reader's refusal names import-raw
    with pytest.raises(NotADatumDBError, match="caffe-lmdb import-raw"):
        verify(src)
    # Datum values under unpadded keys: verify names rekey
    write_lmdb(tmp_path / "unpadded", [(str(i), datum_bytes(1, 1, 1, data=bytes([i]), label=i))
                                       for i in range(12)])
    assert main(["verify", str(tmp_path / "unpadded")]) == 1
    out = capsys.readouterr().out
    assert f"caffe-lmdb rekey {tmp_path / 'unpadded'} NEW_DB" in out
    assert main(["rekey", str(tmp_path / "unpadded"), str(tmp_path / "fixed"), "--quiet"]) == 0
    assert main(["verify", str(tmp_path / "fixed")]) == 0


# ---------------------------------------------------------------------------------------------
# rekey
# ---------------------------------------------------------------------------------------------


def test_rekey_gives_back_the_extract_features_database(fixtures, tmp_path, capsys):
    original = read_lmdb(fixtures / "features_ip1_lmdb")
    assert [k for k, _ in original] == [b"%010d" % i for i in range(24)]
    unpadded = [(str(int(k)).encode(), v) for k, v in original]
    random.Random(0).shuffle(unpadded)
    write_lmdb(tmp_path / "unpadded", unpadded)
    assert [k for k, _ in read_lmdb(tmp_path / "unpadded")][:4] == [b"0", b"1", b"10", b"11"]
    summary = caffe_lmdb.rekey(tmp_path / "unpadded", tmp_path / "fixed", width=10)
    assert read_lmdb(tmp_path / "fixed") == original  # key for key, value for value
    assert summary.written == 24 and summary.extra["verify"].startswith("OK")
    assert main(["rekey", str(tmp_path / "unpadded"), str(tmp_path / "cli"), "--width",
                 "10"]) == 0
    assert read_lmdb(tmp_path / "cli") == original
    assert "24 records written" in capsys.readouterr().out


def test_rekey_widens_padded_keys_and_keeps_values(fixtures, tmp_path):
    original = read_lmdb(fixtures / "cifar10_test_head_lmdb")  # %05d keys
    caffe_lmdb.rekey(fixtures / "cifar10_test_head_lmdb", tmp_path / "db")
    assert read_lmdb(tmp_path / "db") == [(b"%08d" % int(k), v) for k, v in original]


def test_rekey_other_keys_non_datum_values_and_width(tmp_path):
    rec = datum_bytes(1, 1, 1, data=b"\x07", label=7)
    write_lmdb(tmp_path / "mixed", [("3", rec), ("20", rec), ("meta", b"{}"), ("3_x", rec)])
    with pytest.raises(SourceFormatError, match=r"key '3_x' \(and 1 more\).*--skip-other"):
        caffe_lmdb.rekey(tmp_path / "mixed", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    summary = caffe_lmdb.rekey(tmp_path / "mixed", tmp_path / "out", skip_other=True)
    assert [k for k, _ in read_lmdb(tmp_path / "out")] == [b"00000003", b"00000020"]
    assert "2 keys that are not numbers" in summary.extra["left out"]
    write_lmdb(tmp_path / "raw", [("0", b"\x01" * 12), ("1", b"\x02" * 12)])
    with pytest.raises(SourceFormatError, match="not a Datum record.*import-raw"):
        caffe_lmdb.rekey(tmp_path / "raw", tmp_path / "out2")
    write_lmdb(tmp_path / "wide", [("5", rec), ("123456789", rec)])
    with pytest.raises(OptionError, match="'123456789' has 9 digits.*--width 9"):
        caffe_lmdb.rekey(tmp_path / "wide", tmp_path / "out3")
    caffe_lmdb.rekey(tmp_path / "wide", tmp_path / "out3", width=9)
    assert [k for k, _ in read_lmdb(tmp_path / "out3")] == [b"000000005", b"123456789"]
    report = info(tmp_path / "out3")  # sparse keys: the gaps come from the steps, at once
    assert report.gaps == list(range(6, 16)) and report.gap_count == 123456789 - 5 - 1
    write_lmdb(tmp_path / "dup", [("7", rec), ("007", rec), ("8", rec)])
    with pytest.raises(SourceFormatError, match="'007' and '7' are the same number"):
        caffe_lmdb.rekey(tmp_path / "dup", tmp_path / "out4")
    with pytest.raises(OptionError, match="is the source database"):
        caffe_lmdb.rekey(tmp_path / "wide", tmp_path / "wide", width=9, overwrite=True)
    assert len(read_lmdb(tmp_path / "wide")) == 2  # and it is intact


def test_rekey_values_that_do_not_verify_raise(tmp_path):
    good = datum_bytes(1, 1, 1, data=b"\x07", label=7)
    write_lmdb(tmp_path / "src", [("0", good), ("1", b"\x08\x01\x10\x01")])  # no pixels
    with pytest.raises(VerifyError, match="was written.*verify finds 1 problems"):
        caffe_lmdb.rekey(tmp_path / "src", tmp_path / "out")
    assert len(read_lmdb(tmp_path / "out")) == 2  # written as asked, and said to be wrong


# ---------------------------------------------------------------------------------------------
# Kill, interrupt, resume
# ---------------------------------------------------------------------------------------------

_KILLED = textwrap.dedent("""
    import sys
    import caffe_lmdb
    what, src, dst = sys.argv[1:4]
    if what == "import":
        caffe_lmdb.import_raw(src, dst, (12, 12, 3), labels="{}_", commit_every=250)
    else:
        caffe_lmdb.rekey(src, dst, commit_every=250)
""")


def _killed_run(what, src, dst, crash):
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT=crash)
    proc = subprocess.run([sys.executable, "-c", _KILLED, what, str(src), str(dst)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("crash", ["put:700", "commit:3", "committed:4", "state:3", "saved:2",
                                   "commit:1"])
def test_import_killed_then_resumed_equals_one_run(imported, seed_db, tmp_path, crash):
    src, _ = seed_db
    dst, _, _ = imported
    whole, whole_targets = read_lmdb(dst), read_lmdb(str(dst) + "_targets")
    out = tmp_path / "db"
    _killed_run("import", src, out, crash)
    prefix = read_lmdb(out) if (out / "data.mdb").exists() else []
    tprefix = (read_lmdb(str(out) + "_targets")
               if os.path.exists(str(out) + "_targets/data.mdb") else [])
    assert len(prefix) < N and prefix == whole[:len(prefix)]  # a valid prefix
    assert tprefix == whole_targets[:len(tprefix)]
    state = json.loads((out / sink.STATE_NAME).read_text())
    assert not state["done"]
    summary = caffe_lmdb.import_raw(src, out, SHAPE, labels="{}_", resume=True)
    assert read_lmdb(out) == whole and read_lmdb(str(out) + "_targets") == whole_targets
    assert summary.written == N and summary.resumed_from == state["next_index"]
    again = caffe_lmdb.import_raw(src, out, SHAPE, labels="{}_", resume=True)
    assert again.written == N and read_lmdb(out) == whole  # a finished run resumes to itself


def test_rekey_killed_then_resumed_equals_one_run(fixtures, tmp_path):
    rng = np.random.default_rng(1)
    items = [(str(i), array_to_datum_bytes(rng.integers(0, 256, (1, 3, 3), np.uint8), i))
             for i in range(1100)]
    write_lmdb(tmp_path / "src", items)
    caffe_lmdb.rekey(tmp_path / "src", tmp_path / "whole")
    whole = read_lmdb(tmp_path / "whole")
    assert whole == [(b"%08d" % int(k), v) for k, v in items]
    _killed_run("rekey", tmp_path / "src", tmp_path / "out", "committed:2")
    prefix = read_lmdb(tmp_path / "out")
    assert 0 < len(prefix) < 1100 and prefix == whole[:len(prefix)]
    caffe_lmdb.rekey(tmp_path / "src", tmp_path / "out", resume=True)
    assert read_lmdb(tmp_path / "out") == whole


def test_interrupt_keeps_a_prefix_and_resume_refuses_other_options(imported, seed_db,
                                                                   tmp_path):
    src, _ = seed_db
    dst, _, _ = imported

    def stop(done, total):
        if done >= 1000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        caffe_lmdb.import_raw(src, tmp_path / "db", SHAPE, labels="{}_", progress=stop,
                              commit_every=300)
    kept = read_lmdb(tmp_path / "db")
    assert len(kept) >= 900 and kept == read_lmdb(dst)[:len(kept)]
    with pytest.raises(ResumeError, match="layout"):
        caffe_lmdb.import_raw(src, tmp_path / "db", SHAPE, layout="CHW", labels="{}_",
                              resume=True)
    caffe_lmdb.import_raw(src, tmp_path / "db", SHAPE, labels="{}_", resume=True)
    assert read_lmdb(tmp_path / "db") == read_lmdb(dst)


# ---------------------------------------------------------------------------------------------
# Bad samples, stray keys, --skip-bad
# ---------------------------------------------------------------------------------------------


def _small(path, n=6, drop=(), extra=(), text=None, shape=(2, 2, 3)):
    """A hand-written database of n samples (values i repeated), companions 'i,i.5 -i'."""
    size = int(np.prod(shape))
    items = []
    for i in range(n):
        if f"{i}" not in drop:
            items.append((f"{i}", bytes([i]) * size))
        if f"{i}_" not in drop:
            items.append((f"{i}_", (text or {}).get(i, f"{i},{i}.5 {-i}").encode()))
    write_lmdb(path, items + list(extra))
    return path


@pytest.mark.parametrize("case, message", [
    (dict(extra=[("3", b"\x00" * 5)], drop=("3",)), r"the value of key '3' is 5 bytes, but "
                                                    r"shape 2x2x3 needs 12"),
    (dict(drop=("4_",)), r"sample key '4' has no companion key \('4_'\)"),
    (dict(drop=("2",)), r"companion key '2_' has no sample key"),
    (dict(extra=[("meta", b"x")]), r"key 'meta' is neither a sample key .* nor a companion"),
    (dict(text={3: "3,abc 1"}), r"companion key '3_': 'abc' is not a number"),
    (dict(text={3: "3,1_0 1"}), r"companion key '3_': '1_0' is not a number"),
    (dict(text={5: "5,1"}), r"companion key '5_' holds 2 numbers, but '0_' holds 3"),
    (dict(text={1: "1.5,1 2"}), r"companion key '1_': the label \(first field\) 1.5 is not an "
                                r"integer"),
    (dict(text={2: "4000000000,1 2"}), r"the label .* 4000000000.0 is not an integer that "
                                       r"fits"),
])
def test_bad_samples_are_errors_naming_the_key_or_skipped(tmp_path, case, message):
    src = _small(tmp_path / "src", **case)
    with pytest.raises(SourceFormatError, match=message + ".*--skip-bad"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="{}_")
    summary = caffe_lmdb.import_raw(src, tmp_path / "skip", (2, 2, 3), labels="{}_",
                                    skip_bad=True)
    records = read_lmdb(tmp_path / "skip")
    bad = len(summary.skipped) + ("ignored keys" in summary.extra)
    assert bad == 1 and summary.written == len(records)
    for key, value in records:  # the good ones are all there, each with its own label
        i = int(key)
        arr, label = caffe_lmdb.decode(value)
        assert label == i and (arr == i).all() and arr.shape == (3, 2, 2)
    if summary.skipped:
        assert summary.written == 5 and "skipped" in str(summary)
        log = (tmp_path / "skip" / sink.LOG_NAME).read_text()
        assert summary.skipped[0].key.decode() in log
    else:
        assert summary.written == 5 or case.get("extra") and summary.written == 6


def test_structural_faults_stop_before_anything_is_written(tmp_path):
    src = _small(tmp_path / "src", drop=("4_",))
    with pytest.raises(SourceFormatError):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="{}_")
    assert not (tmp_path / "out").exists()


def test_a_bad_value_midway_keeps_the_records_before_it(tmp_path):
    items = []
    for i in range(5000):
        items += [(str(i), bytes([i % 251]) * 12), (f"{i}_", f"{i % 7},0.5".encode())]
    items[2 * 4321] = ("4321", b"\x00" * 11)
    write_lmdb(tmp_path / "src", items)
    with pytest.raises(SourceFormatError, match="'4321' is 11 bytes"):
        caffe_lmdb.import_raw(tmp_path / "src", tmp_path / "out", (2, 2, 3), labels="{}_",
                              commit_every=500)
    kept = read_lmdb(tmp_path / "out")
    assert 0 < len(kept) <= 4321 and [k for k, _ in kept] == [b"%08d" % i
                                                               for i in range(len(kept))]


def test_companions_without_labels_option_and_bad_options(tmp_path):
    src = _small(tmp_path / "src")
    with pytest.raises(SourceFormatError, match=r"'0_'.*--labels, e.g. '\{\}_'"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3))
    with pytest.raises(OptionError, match="must hold"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="label")
    with pytest.raises(OptionError, match="names the sample keys themselves"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="{}")
    with pytest.raises(OptionError, match="format"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="{}_,format=int3")
    with pytest.raises(OptionError, match="H,W,C"):
        caffe_lmdb.import_raw(src, tmp_path / "out", "2x2xa", labels="{}_")
    with pytest.raises(OptionError, match="HWC"):
        caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), layout="NHWC", labels="{}_")
    with pytest.raises(OptionError, match="is the source database"):
        caffe_lmdb.import_raw(src, src, (2, 2, 3), labels="{}_", overwrite=True)
    with pytest.raises(NotADatumDBError, match="does not exist"):
        caffe_lmdb.import_raw(tmp_path / "nope", tmp_path / "out", (2, 2, 3))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Other layouts of the labels and pixels
# ---------------------------------------------------------------------------------------------


def test_binary_labels_chw_padded_keys_and_a_second_database(tmp_path):
    rng = np.random.default_rng(3)
    planar = rng.integers(0, 256, (40, 1, 4, 5), np.uint8)
    labels = rng.integers(-3, 1000, 40)
    # planar values under %05d keys, int32 labels under label_%05d
    items = [(b"%05d" % i, planar[i].tobytes()) for i in range(40)]
    items += [(b"label_%05d" % i, struct.pack("<i", int(labels[i]))) for i in range(40)]
    write_lmdb(tmp_path / "src", items)
    s = caffe_lmdb.import_raw(tmp_path / "src", tmp_path / "out", "4,5,1", layout="CHW",
                              labels="label_{},format=int32")
    assert s.targets_path is None and not os.path.exists(str(tmp_path / "out") + "_targets")
    assert read_lmdb(tmp_path / "out") == [(b"%08d" % i, array_to_datum_bytes(planar[i],
                                                                               int(labels[i])))
                                           for i in range(40)]
    # float32 label + 2 targets in a second database whose keys are the sample numbers
    write_lmdb(tmp_path / "img", [(str(i), planar[i].tobytes()) for i in range(40)])
    vals = np.stack([labels, rng.normal(size=40), rng.normal(size=40)], 1).astype(np.float32)
    write_lmdb(tmp_path / "lab", [(str(i), vals[i].tobytes()) for i in range(40)])
    s = caffe_lmdb.import_raw(tmp_path / "img", tmp_path / "two", (4, 5, 1),
                              labels=f"db={tmp_path / 'lab'},format=float32")
    t = read_lmdb(str(tmp_path / "two") + "_targets")
    assert [v for _, v in t] == [targets_bytes(vals[i, 1:], int(labels[i])) for i in range(40)]
    assert s.written == 40
    # no labels at all: records without the label field
    write_lmdb(tmp_path / "bare", [(str(i), planar[i].tobytes()) for i in range(3)])
    caffe_lmdb.import_raw(tmp_path / "bare", tmp_path / "bare_out", (4, 5, 1), layout="CHW")
    assert [v for _, v in read_lmdb(tmp_path / "bare_out")] == [
        array_to_datum_bytes(planar[i]) for i in range(3)]


def test_text_labels_with_any_separators_nan_and_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(repair, "_BLOCK_BYTES", 12 * 7)  # blocks of 7 samples
    texts = {0: "0;1.5;2", 1: " 1\t-2.5e-3, 3 \n", 2: "2 nan 1", 3: "3,inf,-inf", 4: "4,,1 2",
             5: "+5 .5 5."}
    src = _small(tmp_path / "src", n=20, text=texts)
    caffe_lmdb.import_raw(src, tmp_path / "out", (2, 2, 3), labels="{}_")
    got = read_lmdb(str(tmp_path / "out") + "_targets")
    for i, (key, value) in enumerate(got):
        text = texts.get(i, f"{i},{i}.5 {-i}")
        fields = text.replace(",", " ").replace(";", " ").split()
        assert key == b"%08d" % i
        assert value == targets_bytes([float(v) for v in fields[1:]], int(fields[0]))


# ---------------------------------------------------------------------------------------------
# The key scan
# ---------------------------------------------------------------------------------------------


class _Keys:
    def __init__(self, keys):
        self.keys = sorted(keys)

    def iter_keys(self):
        return iter(self.keys)


_KEY = st.one_of(
    st.integers(0, 10 ** 19).map(lambda n: str(n).encode()),
    st.tuples(st.integers(0, 10 ** 6), st.integers(1, 9)).map(
        lambda t: b"%0*d" % (t[1], t[0])),
    st.integers(0, 10 ** 6).map(lambda n: b"%d_" % n),
    st.integers(0, 10 ** 6).map(lambda n: b"lab%d" % n),
    st.binary(min_size=1, max_size=6),
)


@settings(max_examples=150, deadline=None)
@given(st.sets(_KEY, max_size=40), st.integers(1, 7))
def test_the_key_scan_matches_a_plain_reading(keys, chunk):
    old = repair._SCAN_CHUNK
    repair._SCAN_CHUNK = chunk
    try:
        (samples, comps), total, other_count, others = repair._scan(
            _Keys(keys), [(b"", b""), (b"", b"_")])
    finally:
        repair._SCAN_CHUNK = old

    def plain(key, suffix):
        core = key[:len(key) - len(suffix)] if suffix and key.endswith(suffix) else (
            None if suffix else key)
        if core and core.isdigit() and core.isascii() and len(core) <= repair.MAX_DIGITS:
            return core
        return None

    want_samples = sorted((int(k), k) for k in keys if plain(k, b""))
    want_comps = sorted((int(c), c) for k in keys if not plain(k, b"")
                        for c in [plain(k, b"_")] if c)
    assert total == len(keys)
    assert samples.numbers.tolist() == [n for n, _ in want_samples]
    assert comps.numbers.tolist() == [n for n, _ in want_comps]
    # the exact digits come back (zero-padded ones too), in numeric order
    assert sorted(samples.digits(i) for i in range(len(samples))) == sorted(
        k for _, k in want_samples)
    assert other_count == len(keys) - len(want_samples) - len(want_comps)
    assert len(others) == min(other_count, repair._SHOWN)
