"""Never write what Caffe cannot read: py-lmdb 3 bundles LMDB 0.9 (Caffe's format) and 1.0,
and picks the engine of a new database from ``lib_version=`` or LMDB_DEFAULT_LIB_VERSION.
Every writer makes 0.9 files whatever the environment says; readers read both; info shows the
format; verify fails a 1.0 file; appending or resuming into one is refused."""
import os
import struct
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from conftest import REPO

import caffe_lmdb
from caffe_lmdb.errors import LMDBFormatError

MAGIC = 0xBEEFC0DE


def file_format(db):
    """The MDB_DATA_VERSION written after the magic in data.mdb: 1 = LMDB 0.9, 3 = LMDB 1.0
    (read here independently of the package)."""
    head = (db / "data.mdb").read_bytes()[:64]
    for off in range(0, 56, 4):
        if struct.unpack_from("=I", head, off)[0] == MAGIC:
            return struct.unpack_from("=I", head, off + 4)[0]
    raise AssertionError(f"no LMDB magic in {db}/data.mdb")


def _has_engine_1():
    try:
        return lmdb.version(lib_version=1)[0] == 1
    except (TypeError, lmdb.Error):
        return False


needs_10 = pytest.mark.skipif(not _has_engine_1(), reason=f"py-lmdb {lmdb.__version__} has no "
                              "LMDB 1.0 engine (py-lmdb >= 3 bundles one)")


def lmdb_10_db(path, n=4):
    """A database of n raw records in the 1.0 format."""
    env = lmdb.open(str(path), map_size=1 << 24, lib_version=1)
    with env.begin(write=True) as txn:
        for i in range(n):
            txn.put(b"%08d" % i, caffe_lmdb.datum_bytes(1, 2, 2, data=bytes([i] * 4), label=i,
                                                        encoded=False))
    env.close()
    assert file_format(path) == 3
    return path


WRITE_ALL = r"""
import sys, numpy as np, caffe_lmdb
from caffe_lmdb.cli import main
out = sys.argv[1]
imgs = np.zeros((3, 1, 4, 4), np.uint8)
caffe_lmdb.write_arrays(out + "/arrays", imgs, [0, 1, 2])
with caffe_lmdb.DatumWriter(out + "/writer") as w:
    w.put(imgs[0], 1)
caffe_lmdb.write_features(out + "/features", np.ones((2, 3), np.float32))
caffe_lmdb.merge(out + "/merged", [out + "/arrays"])
assert main(["demo", out + "/demo", "--quiet"]) == 0
with caffe_lmdb.DatumWriter(out + "/writer", resume=True) as w:   # appending to a 0.9 file
    w.put(imgs[1], 2)
print("ok")
"""


@needs_10
@pytest.mark.parametrize("default", ["1", "0"])
def test_every_writer_makes_lmdb_09_whatever_the_environment_says(tmp_path, default):
    env = dict(os.environ, LMDB_DEFAULT_LIB_VERSION=default,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", WRITE_ALL, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-3000:]
    made = ["arrays", "writer", "features", "merged", "demo"]
    assert {name: file_format(tmp_path / name) for name in made} == dict.fromkeys(made, 1)
    assert len(caffe_lmdb.open(tmp_path / "writer")) == 2


@needs_10
def test_readers_read_lmdb_10_and_info_shows_the_format(tmp_path, capsys):
    db = lmdb_10_db(tmp_path / "v10")
    with caffe_lmdb.open(db) as reader:
        assert reader.data_format == "LMDB 1.0"
        image, label = reader[3]
        assert label == 3 and image.tolist() == [[[3, 3], [3, 3]]]
    caffe_lmdb.write_arrays(tmp_path / "v09", np.zeros((1, 1, 2, 2), np.uint8), [0])
    assert caffe_lmdb.open(tmp_path / "v09").data_format == "LMDB 0.9"

    from caffe_lmdb.cli import main

    assert main(["info", str(db), "--quiet"]) == 0
    assert "format       LMDB 1.0 (Caffe cannot open it)" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "v09"), "--quiet"]) == 0
    assert "format       LMDB 0.9 (Caffe reads it)" in capsys.readouterr().out


@needs_10
def test_verify_fails_lmdb_10_saying_how_to_convert(tmp_path, capsys):
    db = lmdb_10_db(tmp_path / "v10")
    from caffe_lmdb.cli import main

    assert main(["verify", str(db), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "Caffe (LMDB 0.9) cannot open this file" in out
    assert f"caffe-lmdb salvage {db}" in out and "FAILED" in out


@needs_10
def test_appending_or_resuming_into_lmdb_10_is_refused(tmp_path, capsys):
    db = lmdb_10_db(tmp_path / "v10")
    before = (db / "data.mdb").read_bytes()
    with pytest.raises(LMDBFormatError, match=r"Caffe \(LMDB 0\.9\) cannot open this file"):
        caffe_lmdb.DatumWriter(db, resume=True)
    images = caffe_lmdb.__file__.replace("__init__.py", "sample_data")
    from caffe_lmdb.cli import main

    code = main(["convert-imageset", images + "/", images + "/list.txt", str(db), "--resume",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "Caffe (LMDB 0.9) cannot open this file" in err, err
    assert (db / "data.mdb").read_bytes() == before


@needs_10
def test_salvage_copies_lmdb_10_into_lmdb_09(tmp_path, capsys):
    db = lmdb_10_db(tmp_path / "v10", n=5)
    from caffe_lmdb.cli import main

    assert main(["salvage", str(db), str(tmp_path / "out")]) == 0
    assert file_format(tmp_path / "out") == 1
    old = caffe_lmdb.open(db)
    new = caffe_lmdb.open(tmp_path / "out")
    assert list(new.keys()) == list(old.keys()) and [y for _, y in new] == [0, 1, 2, 3, 4]
    assert "5 records copied" in capsys.readouterr().out
