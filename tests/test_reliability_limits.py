"""Limits: decompression bombs, a full disk, records bigger than a page or than the whole
initial map, a database much larger than its first map size, a truncated data.mdb."""
import errno
import os
import struct
import subprocess
import sys
import zlib

import cv2
import lmdb
import numpy as np
import pytest
from conftest import read_lmdb
from test_reliability_crash import check_prefix, make_workload

import caffe_lmdb
from caffe_lmdb.cli import main as cli_main
from caffe_lmdb.errors import ImageTooLargeError, NotADatumDBError, WriteError
from caffe_lmdb.format.imagesize import DEFAULT_MAX_PIXELS, check_image, declared_size
from caffe_lmdb.tools.dbinfo import verify
from caffe_lmdb.write import sink

# --------------------------------------------------------------------------------------------
# Decompression bombs
# --------------------------------------------------------------------------------------------

_IMG = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext, array, params", [
    ("png", _IMG, []), ("png", _IMG.astype(np.uint16) * 257, []), ("jpg", _IMG, []),
    ("jpg", _IMG, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), ("bmp", _IMG, []), ("bmp", _IMG[:, :, 0], []),
    ("webp", _IMG, []), ("webp", _IMG, [cv2.IMWRITE_WEBP_QUALITY, 101]),
    ("webp", np.dstack([_IMG, _IMG[:, :, :1]]), []), ("tiff", _IMG, []),
    ("tiff", _IMG[:, :, 0], []), ("ppm", _IMG, []), ("pgm", _IMG[:, :, 0], []),
    ("pbm", _IMG[:, :, 0], []), ("pam", _IMG, []), ("pfm", _IMG.astype(np.float32), []),
    ("gif", _IMG, []), ("hdr", _IMG, []), ("ras", _IMG, []),
])
def test_declared_size_matches_what_opencv_decodes(tmp_path, ext, array, params):
    path = str(tmp_path / f"x.{ext}")
    assert cv2.imwrite(path, array, params)
    decoded = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert declared_size(path) == (decoded.shape[1], decoded.shape[0])


def _png_header(width, height):
    """A PNG whose IHDR declares width x height (8-bit gray) and whose data is a tiny piece of
    a zlib stream of zeros: some hundred bytes standing for width * height pixels."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _patched(ext, width, height):
    """A real small image file of this type, its header patched to declare width x height."""
    ok, buf = cv2.imencode("." + ext, _IMG)
    data = bytearray(buf.tobytes())
    if ext == "jpg":
        at = data.index(b"\xff\xc0") + 5
        data[at:at + 4] = struct.pack(">HH", height, width)
    elif ext == "bmp":
        data[18:26] = struct.pack("<ii", width, height)
    elif ext == "gif":
        data[6:10] = struct.pack("<HH", width, height)
    elif ext == "png":
        data[16:24] = struct.pack(">II", width, height)
    return bytes(data)


@pytest.mark.parametrize("name, data, size", [
    ("bomb.png", _png_header(100_000, 100_000), (100_000, 100_000)),
    ("bomb2.png", _png_header(20_000, 20_000), (20_000, 20_000)),   # under OpenCV's own limit
    ("bomb.jpg", _patched("jpg", 65_000, 65_000), (65_000, 65_000)),
    ("bomb.bmp", _patched("bmp", 30_000, 30_000), (30_000, 30_000)),
    ("bomb.gif", _patched("gif", 65_535, 65_535), (65_535, 65_535)),
])
def test_a_bomb_is_skipped_unread_and_strict_stops_on_it(tmp_path, name, data, size):
    (tmp_path / "ok.png").write_bytes(cv2.imencode(".png", _IMG)[1].tobytes())
    (tmp_path / name).write_bytes(data)
    (tmp_path / "list.txt").write_text(f"ok.png 0\n{name} 1\nok.png 2\n")
    args = (f"{tmp_path}/", tmp_path / "list.txt")
    summary = caffe_lmdb.convert_imageset(*args, tmp_path / "db")
    assert summary.written == 2 and len(summary.skipped) == 1
    reason = summary.skipped[0].reason
    assert f"declares {size[0]} x {size[1]}" in reason and "--max_pixels" in reason
    assert f"{DEFAULT_MAX_PIXELS:,}" in reason
    with pytest.raises(caffe_lmdb.ImageReadError, match=f"{name} declares .* bomb"):
        caffe_lmdb.convert_imageset(*args, tmp_path / "strict", strict=True)


def test_a_png_chunk_longer_than_the_file_is_refused_before_opencv(tmp_path):
    """A 400-byte PNG whose IDAT declares 4 GB: OpenCV allocated and cleared 4 GB (and took
    seconds) before failing on it. It is skipped as unreadable without being decoded."""
    png = bytearray(cv2.imencode(".png", _IMG)[1].tobytes())
    at = png.index(b"IDAT") - 4
    png[at:at + 4] = struct.pack(">I", 0xFF00003D)
    (tmp_path / "bad.png").write_bytes(bytes(png))
    (tmp_path / "ok.png").write_bytes(cv2.imencode(".png", _IMG)[1].tobytes())
    (tmp_path / "list.txt").write_text("ok.png 0\nbad.png 1\n")
    summary = caffe_lmdb.convert_imageset(f"{tmp_path}/", tmp_path / "list.txt", tmp_path / "db",
                                          max_pixels=None)  # no pixel limit: still refused
    assert summary.written == 1
    assert "its IDAT chunk declares 4,278,190,141 bytes, more than the" in summary.skipped[0].reason
    with pytest.raises(caffe_lmdb.ImageReadError, match="damaged or truncated"):
        check_image(bytes(png))
    check_image(tmp_path / "ok.png")


def test_max_pixels_is_an_option_of_the_api_and_the_command(tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", _IMG)[1].tobytes())  # 1,961 pixels
    # and a small one (a conversion that writes nothing is an error since issue 16)
    (tmp_path / "b.png").write_bytes(cv2.imencode(".png", _IMG[:10, :10])[1].tobytes())
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    args = [f"{tmp_path}/", str(tmp_path / "list.txt")]
    small = caffe_lmdb.convert_imageset(*args, tmp_path / "a", max_pixels=1000)
    assert small.written == 1 and "over the limit of 1,000" in small.skipped[0].reason
    assert caffe_lmdb.convert_imageset(*args, tmp_path / "b", max_pixels=None).written == 2
    assert cli_main(["convert-imageset", "--max_pixels=1000", *args, str(tmp_path / "c")]) == 0
    assert "1 skipped" in capsys.readouterr().out and len(read_lmdb(tmp_path / "c")) == 1
    assert cli_main(["convert-imageset", "--max_pixels=0", *args, str(tmp_path / "d")]) == 0
    assert len(read_lmdb(tmp_path / "d")) == 2
    with pytest.raises(ImageTooLargeError):
        check_image(tmp_path / "a.png", 1000)
    check_image(tmp_path / "a.png", 2000)


def test_a_bomb_inside_a_record_is_a_decode_error_not_an_allocation(tmp_path):
    """An encoded record holding a bomb: the reader's decode refuses it (OpenCV's own limit of
    2^30 pixels applies there) and verify lists it."""
    value = caffe_lmdb.datum_bytes(data=_png_header(100_000, 100_000), label=1, encoded=True)
    with pytest.raises(caffe_lmdb.DatumDecodeError):
        caffe_lmdb.decode(value)
    ok = caffe_lmdb.datum_bytes(data=cv2.imencode(".png", _IMG)[1].tobytes(), label=0,
                                encoded=True)
    with caffe_lmdb.DatumWriter(tmp_path / "db") as w:
        w.put(ok)
        w.put(value)
    report = verify(tmp_path / "db")
    assert not report.ok and [p.kind for p in report.problems] == ["decode"]
    assert report.problems[0].key == b"00000001"


# --------------------------------------------------------------------------------------------
# A full disk
# --------------------------------------------------------------------------------------------

_LIMITED = """
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit, mode, job = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if mode == "cli":
    from caffe_lmdb.cli import main
    sys.exit(main(job))
import caffe_lmdb
try:
    caffe_lmdb.convert_imageset(**job)
except caffe_lmdb.errors.WriteError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def _limited(limit, mode, job):
    import json
    return subprocess.run([sys.executable, "-c", _LIMITED, str(limit), mode, json.dumps(job)],
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_stops_with_a_clear_error_and_resume_finishes(tmp_path):
    """data.mdb may not grow past 150 KB (RLIMIT_FSIZE): the conversion stops at the first
    commit that does not fit, says so, keeps every record committed before, and --resume
    (with room again) completes it to the bytes of an uninterrupted run."""
    work = make_workload(str(tmp_path), repeat=15)  # 600 records, about 400 KB
    job = dict(root=work["root"], list_file=work["list_file"], resize_height=12,
               resize_width=10, commit_every=25)
    done = _limited(150_000, "api", dict(job, db=str(tmp_path / "db")))
    assert done.returncode == 3, done.stderr
    assert "could not write to" in done.stderr and "--resume" in done.stderr
    caffe_lmdb.convert_imageset(**job, db=str(tmp_path / "whole"))
    whole = read_lmdb(tmp_path / "whole")
    kept = check_prefix(tmp_path / "db", whole)
    assert 0 < kept < len(whole) and kept % 25 == 0
    state = sink.read_state(tmp_path / "db")
    assert state["written"] == kept and not state["done"]
    assert cli_main(["convert-imageset", "--quiet", "--resume", "--resize_height=12",
                     "--resize_width=10", work["root"], work["list_file"],
                     str(tmp_path / "db")]) == 0
    assert read_lmdb(tmp_path / "db") == whole


@pytest.mark.parametrize("limit, message, detail", [
    # no room for lock.mdb (73 KB with 1024 reader slots)
    (20_000, "could not open", "File too large"),
    # the first commit (the whole run) does not fit; LMDB reports a short write as EIO
    (100_000, "could not write to", "run the same command with --resume"),
])
def test_a_full_disk_is_one_line_from_the_command(tmp_path, limit, message, detail):
    work = make_workload(str(tmp_path), repeat=15)
    done = _limited(limit, "cli", ["convert-imageset", "--quiet", "--resize_height=12",
                                   "--resize_width=10", work["root"], work["list_file"],
                                   str(tmp_path / "db")])
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"caffe-lmdb: {message}"), lines
    assert detail in lines[0]
    check_prefix(tmp_path / "db", [])  # nothing fitted, nothing torn


def test_a_state_file_that_cannot_be_saved_keeps_the_old_one(tmp_path, monkeypatch):
    """The disk fills up while the resume state is written: the error says so, the previous
    state stays (it never claims records that are not there), and --resume finishes."""
    work = make_workload(str(tmp_path), repeat=3)
    job = dict(root=work["root"], list_file=work["list_file"], resize_height=12,
               resize_width=10)
    calls = []
    real_replace = os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:
            raise OSError(errno.ENOSPC, "No space left on device", dst)
        return real_replace(src, dst)

    monkeypatch.setattr(sink.os, "replace", replace)
    with pytest.raises(WriteError, match="No space left on device"):
        caffe_lmdb.convert_imageset(**job, db=tmp_path / "db", commit_every=10)
    monkeypatch.undo()
    caffe_lmdb.convert_imageset(**job, db=tmp_path / "whole")
    whole = read_lmdb(tmp_path / "whole")
    kept = check_prefix(tmp_path / "db", whole)  # three commits; the fourth save failed
    assert kept == 30 and sink.read_state(tmp_path / "db")["written"] == 30  # saved on the way out
    caffe_lmdb.convert_imageset(**job, db=tmp_path / "db", resume=True)
    assert read_lmdb(tmp_path / "db") == whole


def test_a_failed_commit_is_never_taken_for_written(tmp_path, monkeypatch):
    """LMDB refuses a commit (EIO, as it reports a short write): WriteError, and a commit()
    asked again (as the converters do on the way out) raises too instead of claiming the
    records."""
    sink.prepare_output(tmp_path / "db")
    s = sink.LMDBSink(tmp_path / "db", commit_every=1000)
    s.put(b"a", b"1")
    s.commit()

    class FailingTxn:
        def __init__(self, txn):
            self.txn = txn

        def __getattr__(self, name):
            return getattr(self.txn, name)

        def commit(self):
            self.txn.abort()
            raise lmdb.Error("mdb_txn_commit: Input/output error")

    monkeypatch.setattr(sink.LMDBSink, "_begin",
                        lambda self: FailingTxn(self.env.begin(write=True)))
    s.put(b"b", b"2")
    with pytest.raises(WriteError, match="keeps the 1 records"):
        s.commit()
    with pytest.raises(WriteError):
        s.commit()
    assert s.entries == 1
    s.env.close()
    assert read_lmdb(tmp_path / "db") == [(b"a", b"1")]


# --------------------------------------------------------------------------------------------
# Big records, big databases
# --------------------------------------------------------------------------------------------


def test_records_larger_than_a_page_and_than_the_initial_map(tmp_path):
    """A 1200 x 1100 raw image (3.96 MB) and 4 MB of floats (5 MB as Caffe writes them) through
    a 1 MiB map, between small records: overflow pages, map growth in the middle of a batch."""
    big = np.random.default_rng(1).integers(0, 256, (1100, 1200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    cv2.imwrite(str(tmp_path / "small.png"), _IMG)
    (tmp_path / "list.txt").write_text("small.png 0\nbig.png 1\nsmall.png 2\n")
    s = caffe_lmdb.convert_imageset(f"{tmp_path}/", tmp_path / "list.txt", tmp_path / "db",
                                    map_size=1 << 20)
    assert s.written == 3 and s.map_grown >= 2
    with caffe_lmdb.open(tmp_path / "db") as db:
        image, label = db[1]
        assert label == 1 and np.array_equal(image, big.transpose(2, 0, 1))
        assert np.array_equal(db[2][0], _IMG.transpose(2, 0, 1))
    assert [p.kind for p in verify(tmp_path / "db").problems] == ["shape"]  # two sizes, no damage
    floats = np.random.default_rng(2).standard_normal((1, 1000, 1000)).astype(np.float32)
    with caffe_lmdb.DatumWriter(tmp_path / "f", map_size=1 << 20) as w:
        w.put(floats[:, :10, :10])
        w.put(floats)
    with caffe_lmdb.open(tmp_path / "f") as db:
        assert np.array_equal(db[1][0], floats)
    assert w.close().map_grown >= 2


def test_a_database_36_times_its_first_map_size(tmp_path):
    """3,000 records of 12 KB (36 MB) written from a 1 MiB map (it doubles 6 times), every
    record read back, in batches and one by one."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3000, 3, 64, 64), dtype=np.uint8)
    s = caffe_lmdb.write_arrays(tmp_path / "db", images, np.arange(3000), map_size=1 << 20,
                                commit_every=400)
    assert s.written == 3000 and s.map_grown >= 5 and s.file_bytes > 36 << 20
    with caffe_lmdb.open(tmp_path / "db") as db:
        got = np.concatenate([b for b, _ in db.batches(500)])
        assert np.array_equal(got, images)
        assert db[2999][1] == 2999
    assert verify(tmp_path / "db", decode_images=False).ok


# --------------------------------------------------------------------------------------------
# A truncated data.mdb (an interrupted copy)
# --------------------------------------------------------------------------------------------

_OPEN = """
import sys
import caffe_lmdb
from caffe_lmdb.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_truncated_database_is_refused_not_a_crash(tmp_path):
    """LMDB maps data.mdb into memory: reading a page past the end of a truncated file killed
    the process with SIGBUS. Reader, verify and --resume now refuse it with one line."""
    caffe_lmdb.write_arrays(tmp_path / "db", np.zeros((500, 3, 32, 32), np.uint8))
    data = tmp_path / "db" / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, size // 2)
    with pytest.raises(NotADatumDBError, match="truncated"):
        caffe_lmdb.open(tmp_path / "db")
    for argv in (["verify", str(tmp_path / "db")], ["info", str(tmp_path / "db")]):
        done = subprocess.run([sys.executable, "-c", _OPEN, *argv], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 1, (done.returncode, done.stderr)  # was -7 (SIGBUS)
        assert done.stderr.startswith("caffe-lmdb: ") and "is truncated" in done.stderr
    with pytest.raises(caffe_lmdb.errors.ResumeError, match="truncated"):
        caffe_lmdb.DatumWriter(tmp_path / "db", resume=True)
