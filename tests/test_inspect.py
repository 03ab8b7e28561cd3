"""info, verify and export (Python API and CLI) on Caffe's fixtures and on broken LMDBs."""
import numpy as np
import pytest
from conftest import expected, read_lmdb
from helpers import float_db, images_db, write_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import CaffeLMDBError, OutputExistsError
from caffe_lmdb.format.datum import datum_bytes
from caffe_lmdb.tools.dbinfo import export, info, verify


def test_info_on_imageset(fixtures):
    r = info(fixtures / "imageset_raw_32x32")
    exp = expected(fixtures, "imageset_raw_32x32")
    assert r.entries == 24 and r.key_pattern == "%08d_<path>"
    assert r.number_range == (0, 25) and r.gap_count == 2 and r.gaps == [3, 7]
    assert r.kinds == {"raw": 24} and r.shapes == {(3, 32, 32): 24}
    labels, counts = np.unique(exp["labels"], return_counts=True)
    assert r.labels == dict(zip(labels.tolist(), counts.tolist()))
    assert r.first_keys[0] == exp["keys"][0].encode() and r.file_bytes > 0
    assert r.raw_without_encoded == 0 and r.ok
    text = str(r)
    assert "2 missing (3, 7)" in text and "%08d_<path>" in text


@pytest.mark.parametrize("name,kinds,pattern", [
    ("mnist_lmdb", {"raw": 100}, "%08d"),
    ("cifar10_test_head_lmdb", {"raw": 200}, "%05d"),
    ("features_pool1_lmdb", {"float": 24}, "%010d"),
    ("imageset_encoded_jpg", {"encoded jpg": 24}, "%08d_<path>"),
    ("imageset_encoded_passthrough", {"encoded jpg": 14, "encoded png": 10}, "%08d_<path>"),
])
def test_info_kinds_and_patterns(fixtures, name, kinds, pattern):
    r = info(fixtures / name)
    exp = expected(fixtures, name)
    assert dict(r.kinds) == kinds and r.key_pattern == pattern
    assert r.without_label == int((~exp["has_label"]).sum())
    if name == "mnist_lmdb":
        assert r.raw_without_encoded == 100 and "DALI" in str(r)
    if name.startswith("imageset_encoded"):
        assert sum(r.shapes.values()) == 24  # decoded for their shapes


def test_verify_passes_caffes_uniform_databases(fixtures):
    for name in ("imageset_raw_32x32", "imageset_encoded_png_32x32", "mnist_lmdb",
                 "features_data_lmdb", "cifar10_train_sample_lmdb"):
        r = verify(fixtures / name)
        assert r.ok, (name, [str(p) for p in r.problems])


def test_verify_catches_unpadded_keys(tmp_path):
    path, _, _ = images_db(tmp_path / "db", n=12, keyfmt="%d")  # "0", "1", "10", "11", "2"..
    r = verify(path)
    assert not r.ok and [p.kind for p in r.problems] == ["keys"]
    assert "'1' before '10'" in str(r.problems[0]) or "'11' before '2'" in str(r.problems[0])
    padded, _, _ = images_db(tmp_path / "ok", n=12)
    assert verify(padded).ok


def test_verify_lists_bad_records_and_shapes(tmp_path, fixtures):
    good = datum_bytes(1, 2, 2, data=b"abcd", label=1, encoded=False)
    wide = datum_bytes(1, 2, 3, data=b"abcdef", label=1, encoded=False)
    short = datum_bytes(1, 2, 2, data=b"abc", label=1, encoded=False)
    broken_png = datum_bytes(data=b"\x89PNG\r\n\x1a\nnot really", label=0, encoded=True)
    write_lmdb(tmp_path / "db", [(b"a", good), (b"b", wide), (b"c", b"\x0a\xff"),
                                 (b"d", short), (b"e", broken_png)])
    r = verify(tmp_path / "db")
    kinds = sorted(p.kind for p in r.problems)
    assert kinds == ["decode", "parse", "parse", "shape"], [str(p) for p in r.problems]
    text = str(r)
    for key in ("'c'", "'d'", "'e'", "2 different shapes"):
        assert key in text
    assert verify(tmp_path / "db", decode_images=False).problem_count == 3
    assert not verify(fixtures / "imageset_raw_native").ok


def test_cli_info_and_verify(fixtures, tmp_path, capsys):
    assert main(["info", str(fixtures / "mnist_lmdb"), "--quiet"]) == 0
    assert "entries      100" in capsys.readouterr().out
    assert main(["verify", str(fixtures / "mnist_lmdb"), "--quiet"]) == 0
    assert "OK: 100 records" in capsys.readouterr().out
    path, _, _ = images_db(tmp_path / "db", n=12, keyfmt="%d")
    assert main(["verify", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "without zero padding" in out and "FAILED: 1 problems" in out
    assert main(["info", str(fixtures / "mnist_lmdb" / "data.mdb")]) == 1
    assert capsys.readouterr().err.startswith("caffe-lmdb: ")


def test_export_passthrough_gives_back_the_files(fixtures, tmp_path):
    out = tmp_path / "out"
    assert export(fixtures / "imageset_encoded_passthrough", out) == 24
    source = fixtures / "inputs" / "images"
    lines = (source / "list.txt").read_text().splitlines()
    readable = [line for i, line in enumerate(lines) if i not in (3, 7)]
    assert (out / "list.txt").read_text().splitlines() == readable
    for line in readable:
        name = line.rsplit(" ", 1)[0]
        assert (out / name).read_bytes() == (source / name).read_bytes(), name


def test_export_then_convert_gives_the_same_records(fixtures, tmp_path):
    export(fixtures / "imageset_encoded_passthrough", tmp_path / "out")
    caffe_lmdb.convert_imageset(str(tmp_path / "out") + "/", tmp_path / "out" / "list.txt",
                                tmp_path / "again", encoded=True, workers=1)
    original = [v for _, v in read_lmdb(fixtures / "imageset_encoded_passthrough")]
    assert [v for _, v in read_lmdb(tmp_path / "again")] == original


def test_export_raw_as_png(fixtures, tmp_path):
    import cv2

    export(fixtures / "imageset_gray_24x20", tmp_path / "out")
    exp = expected(fixtures, "imageset_gray_24x20")
    lines = (tmp_path / "out" / "list.txt").read_text().splitlines()
    assert len(lines) == 24
    for i, line in enumerate(lines):
        name, label = line.rsplit(" ", 1)
        assert name.endswith(".png") and int(label) == exp["labels"][i]
        img = cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(img, exp["array"][i][0])


def test_export_npz(fixtures, tmp_path):
    assert main(["export", str(fixtures / "cifar10_test_head_lmdb"), str(tmp_path / "c"),
                 "--npz", "--quiet"]) == 0
    exp = expected(fixtures, "cifar10_test_head_lmdb")
    with np.load(tmp_path / "c.npz") as z:
        np.testing.assert_array_equal(z["images"], exp["array"])
        np.testing.assert_array_equal(z["labels"], exp["labels"])
        assert [k.decode() for k in z["keys"]] == list(exp["keys"])
    with pytest.raises(caffe_lmdb.ShapeMismatchError):
        export(fixtures / "imageset_raw_native", tmp_path / "n.npz", npz=True)
    assert not (tmp_path / "n.npz").exists() and not (tmp_path / "n.npz.part").exists()


def test_export_refusals_and_safe_names(fixtures, tmp_path):
    with pytest.raises(CaffeLMDBError, match="float_data"):
        export(fixtures / "features_ip1_lmdb", tmp_path / "f")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        export(fixtures / "mnist_lmdb", tmp_path / "full")
    value = datum_bytes(1, 1, 1, data=b"\x07", label=2, encoded=False)
    write_lmdb(tmp_path / "db", [(b"00000000_../../evil.jpg", value),
                                 (b"00000001_/abs/evil.jpg", value),
                                 (b"00000002_../../evil.jpg", value)])
    export(tmp_path / "db", tmp_path / "safe")
    names = [line.rsplit(" ", 1)[0] for line in
             (tmp_path / "safe" / "list.txt").read_text().splitlines()]
    assert names == ["evil.png", "abs/evil.png", "evil_2.png"]
    assert not (tmp_path / "evil.png").exists()


def test_cli_features_with_names(fixtures, tmp_path, capsys):
    out = tmp_path / "feats.npy"
    assert main(["features", str(fixtures / "features_ip1_lmdb"), "--out", str(out),
                 "--names-from", str(fixtures / "imageset_raw_32x32"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(out), expected(fixtures, "features_ip1_lmdb")["array"])
    exp = expected(fixtures, "imageset_raw_32x32")
    names = (tmp_path / "feats.txt").read_text().splitlines()
    assert names == [f"{k.split('_', 1)[1]} {label}" for k, label in zip(exp["keys"],
                                                                          exp["labels"])]
    assert main(["features", str(fixtures / "features_ip1_lmdb")]) == 0
    assert "24 records of float32 (10, 1, 1)" in capsys.readouterr().out


def test_cli_compute_mean(fixtures, tmp_path, capsys):
    out, npy = tmp_path / "m.binaryproto", tmp_path / "m.npy"
    assert main(["compute-mean", str(fixtures / "imageset_raw_32x32"), str(out), "--npy",
                 str(npy), "--quiet"]) == 0
    assert out.read_bytes() == (fixtures / "mean_raw_32x32.binaryproto").read_bytes()
    np.testing.assert_array_equal(np.load(npy),
                                  np.load(fixtures / "expected" / "mean_raw_32x32.npy")[0])
    text = capsys.readouterr().out
    assert "mean_value channel [0]: 142.554" in text


def test_info_gaps_and_float_db(tmp_path):
    float_db(tmp_path / "f", np.zeros((3, 2, 1, 1), np.float32))
    r = info(tmp_path / "f")
    assert r.kinds == {"float": 3} and r.without_label == 3 and r.shapes == {(2, 1, 1): 3}
