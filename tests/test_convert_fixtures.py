"""The converters against databases written by Caffe's own tools: same keys, same values."""
import hashlib
import json
import shutil
import subprocess
import sys

import pytest
from conftest import read_lmdb

import caffe_lmdb

# fixture -> the convert_imageset flags that made it (see fixtures/README.md)
IMAGESET_FLAGS = {
    "imageset_raw_32x32": dict(resize_height=32, resize_width=32),
    "imageset_gray_24x20": dict(gray=True, resize_height=24, resize_width=20),
    "imageset_raw_native": dict(),
    "imageset_encoded_passthrough": dict(encoded=True),
    "imageset_encoded_png_32x32": dict(encoded=True, encode_type="png", resize_height=32,
                                       resize_width=32),
    "imageset_encoded_jpg": dict(encoded=True, encode_type="jpg"),
}


@pytest.mark.parametrize("name", sorted(IMAGESET_FLAGS))
def test_convert_imageset_matches_caffe(fixtures, tmp_path, name):
    images = fixtures / "inputs" / "images"
    summary = caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "db",
                                          workers=2, **IMAGESET_FLAGS[name])
    ours, caffe = read_lmdb(tmp_path / "db"), read_lmdb(fixtures / name)
    assert [k for k, _ in ours] == [k for k, _ in caffe]
    assert ours == caffe
    # the two unreadable lines are skipped, their numbers never reused, and reported
    assert summary.written == 24
    assert [(s.index, s.key) for s in summary.skipped] == [
        (3, b"00000003_cat/missing_file.jpg"), (7, b"00000007_dog/corrupt.jpg")]
    assert "list.txt:4" in summary.skipped[0].where and "list.txt:8" in summary.skipped[1].where
    log = (tmp_path / "db" / "convert.log").read_text()
    assert "cat/missing_file.jpg" in log and "dog/corrupt.jpg" in log


@pytest.mark.parametrize("gz", [False, True])
def test_convert_mnist_matches_caffe(fixtures, tmp_path, gz):
    mnist = fixtures / "inputs" / "mnist"
    ext = ".gz" if gz else ""
    summary = caffe_lmdb.convert_mnist(mnist / f"images-idx3-ubyte{ext}",
                                       mnist / f"labels-idx1-ubyte{ext}", tmp_path / "db")
    assert summary.written == 100
    assert read_lmdb(tmp_path / "db") == read_lmdb(fixtures / "mnist_lmdb")


def _digests(pairs):
    keys, values = hashlib.sha256(), hashlib.sha256()
    for k, v in pairs:
        keys.update(k + b"\n")
        values.update(v)
    return keys.hexdigest(), values.hexdigest()


def test_convert_cifar_matches_caffe(fixtures, tmp_path):
    """The full 60,000 records against the digests of Caffe's full output, and the stored
    subsets record by record (about 3 s: the inputs are regenerated, 184 MB)."""
    inputs = tmp_path / "cifar_in"
    subprocess.run([sys.executable, str(fixtures / "inputs" / "make_cifar.py"), str(inputs)],
                   check=True)
    train, test = caffe_lmdb.convert_cifar(inputs, tmp_path / "out")
    shutil.rmtree(inputs)
    assert (train.written, test.written) == (50000, 10000)
    full = json.loads((fixtures / "expected" / "cifar10_full_digests.json").read_text())
    for name in ("cifar10_train_lmdb", "cifar10_test_lmdb"):
        pairs = read_lmdb(tmp_path / "out" / name)
        assert len(pairs) == full[name]["entries"]
        assert _digests(pairs) == (full[name]["sha256_keys_newline_joined"],
                                   full[name]["sha256_values_concatenated"])
        ours = dict(pairs)
        subset = "cifar10_train_sample_lmdb" if "train" in name else "cifar10_test_head_lmdb"
        for key, value in read_lmdb(fixtures / subset):
            assert ours[key] == value, key
