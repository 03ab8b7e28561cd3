"""The converter commands: Caffe's gflags spellings, errors as one line, the demo."""
import pytest
from conftest import read_lmdb

from caffe_lmdb.cli import main
from caffe_lmdb.cli.convert import gflags_argv


@pytest.mark.parametrize("flags", [
    ["-gray", "-resize_height=24", "-resize_width=20"],
    ["--gray", "--resize_height", "24", "--resize_width", "20"],
    ["--gray=true", "--resize_height=24", "--resize-width=20", "--backend=lmdb"],
    ["--gray=1", "--noshuffle", "--resize_height=24", "--resize_width", "20"],
])
def test_convert_imageset_accepts_gflags_spellings(fixtures, tmp_path, capsys, flags):
    images = fixtures / "inputs" / "images"
    rc = main(["convert-imageset", *flags, f"{images}/", str(images / "list.txt"),
               str(tmp_path / "db")])
    assert rc == 0
    assert read_lmdb(tmp_path / "db") == read_lmdb(fixtures / "imageset_gray_24x20")
    out = capsys.readouterr().out
    assert "24 records written, 2 skipped" in out and "list.txt:4" in out


def test_gflags_rewriting():
    assert gflags_argv(["-gray", "--gray=false", "--nogray", "-encode_type=png", "x",
                        "--check_size=no", "-h"]) == [
        "--gray", "--no-gray", "--no-gray", "--encode_type=png", "x", "--no-check_size", "-h"]


def test_gray_false_and_encode_type_alone(fixtures, tmp_path):
    images = fixtures / "inputs" / "images"
    # Caffe: a non-empty --encode_type encodes even without --encoded
    assert main(["convert-imageset", "--gray=false", "--encode_type=png", "--resize_height=32",
                 "--resize_width=32", f"{images}/", str(images / "list.txt"),
                 str(tmp_path / "db"), "--quiet"]) == 0
    assert read_lmdb(tmp_path / "db") == read_lmdb(fixtures / "imageset_encoded_png_32x32")


@pytest.mark.parametrize("argv, message", [
    (["--backend=leveldb", "--resume"], "holds an LMDB, not a LevelDB: resume with "
     "--backend=lmdb"),
    ([], "already holds an LMDB: pass --overwrite"),
])
def test_errors_are_one_line_and_exit_1(fixtures, tmp_path, capsys, argv, message):
    images = fixtures / "inputs" / "images"
    base = [f"{images}/", str(images / "list.txt"), str(tmp_path / "db"), "--quiet"]
    assert main(["convert-imageset", *base]) == 0
    capsys.readouterr()
    assert main(["convert-imageset", *argv, *base]) == 1
    err = capsys.readouterr().err
    assert err.startswith("caffe-lmdb: ") and message in err and err.count("\n") == 1


def test_convert_mnist_and_cifar_commands(fixtures, tmp_path, capsys):
    mnist = fixtures / "inputs" / "mnist"
    assert main(["convert-mnist", str(mnist / "images-idx3-ubyte.gz"),
                 str(mnist / "labels-idx1-ubyte.gz"), str(tmp_path / "m"),
                 "--backend", "lmdb"]) == 0
    assert read_lmdb(tmp_path / "m") == read_lmdb(fixtures / "mnist_lmdb")
    assert main(["convert-cifar", str(tmp_path / "nowhere"), str(tmp_path / "c"), "lmdb"]) == 1
    assert "data_batch_1.bin: no such CIFAR-10 batch file" in capsys.readouterr().err


def test_demo_converts_the_shipped_samples_and_reruns(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "sample_lmdb"]) == 0
    out = capsys.readouterr().out
    assert "sample_lmdb: 36 records written, 0 skipped" in out
    assert len(read_lmdb(tmp_path / "sample_lmdb")) == 36
    # an existing output is refused, as by every converter (issue 16); --overwrite replaces it
    assert main(["demo", "sample_lmdb"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["demo", "sample_lmdb", "--overwrite"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.mdb").write_bytes(b"")
    assert main(["demo", "other"]) == 1
    assert "already holds an LMDB" in capsys.readouterr().err
