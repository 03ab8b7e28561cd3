"""A damaged data.mdb (bytes overwritten in the middle, as a failing disk or an interrupted
copy leaves it): readers raise the project's error naming the file, verify reports each
structural problem, and salvage copies every record that can still be read, in order."""
import os

import numpy as np
import pytest

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import DamagedDBError

N = 3000


@pytest.fixture
def damaged(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (N, 1, 8, 8), dtype=np.uint8)
    db = tmp_path / "db"
    caffe_lmdb.write_arrays(db, images, list(range(N)))
    size = os.path.getsize(db / "data.mdb")
    with open(db / "data.mdb", "r+b") as f:  # garbage over the middle of a leaf page
        f.seek((size // 4096 // 2) * 4096 + 100)
        f.write(b"\xff" * 300)
    return db, images


def test_readers_raise_damaged_db_error_naming_the_file(damaged):
    db, _ = damaged
    with pytest.raises(DamagedDBError, match=r"data\.mdb is damaged") as info:
        reader = caffe_lmdb.open(db)
        for _ in reader.batches(64):
            pass
    assert str(db) in str(info.value) and "caffe-lmdb salvage" in str(info.value)


def test_verify_reports_each_structural_problem(damaged, capsys):
    pytest.importorskip("lmdb.verify", reason="py-lmdb < 3 has no structural checker")
    db, _ = damaged
    assert main(["verify", str(db), "--quiet"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "structure:" in line]
    assert len(lines) >= 2 and any("overruns page" in line for line in lines), out
    assert "walked 2997 entries, record says 3000" in out
    assert "FAILED" in out and "OK:" not in out


def test_salvage_copies_every_readable_record_in_order(damaged, tmp_path, capsys):
    db, images = damaged
    assert main(["salvage", str(db), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    copied = caffe_lmdb.open(tmp_path / "out")
    labels = [int(y) for _, y in copied]
    assert labels == sorted(labels) and len(labels) == len(copied) == 2997
    assert f"2997 records copied of {N}" in out and "lost: 3 records" in out
    for image, label in copied:
        assert np.array_equal(image, images[label])
    lost = sorted(set(range(N)) - set(labels))
    assert f"between '{lost[0] - 1:08d}' and '{lost[-1] + 1:08d}'" in out
    assert main(["verify", str(tmp_path / "out"), "--quiet"]) == 0
