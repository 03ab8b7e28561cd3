"""Bad input gets a clear one-line error, and a result that is not what it seems is never
silent (issue 16, part 3)."""
import os
import subprocess
import sys

import cv2
import lmdb
import numpy as np
import pytest
from conftest import REPO

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import CaffeLMDBError, DatumDecodeError

SAMPLES = os.path.join(os.path.dirname(caffe_lmdb.__file__), "sample_data")


def cli(*args):
    return main([str(a) for a in args])


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("caffe-lmdb: ") and "Traceback" not in err, err
    return err


# -- 0 records written ----------------------------------------------------------------------


def test_a_conversion_that_writes_nothing_fails_and_says_why(tmp_path, capsys):
    wrong_root = tmp_path / "elsewhere"
    wrong_root.mkdir()
    db = tmp_path / "db"
    code = cli("convert-imageset", f"{wrong_root}/", f"{SAMPLES}/list.txt", db, "--quiet")
    err = one_line_error(capsys, code)
    assert "0 records written, 36 of 36 samples skipped" in err
    assert f"no listed file exists under {wrong_root}/: is the root folder right?" in err
    assert not db.exists()  # nothing left behind: the corrected run needs no --overwrite
    assert cli("convert-imageset", f"{SAMPLES}/", f"{SAMPLES}/list.txt", db, "--quiet") == 0
    assert len(caffe_lmdb.open(db)) == 36


# -- interrupted conversion -------------------------------------------------------------------


def test_info_and_verify_say_an_interrupted_conversion_is_incomplete(tmp_path, capsys):
    db = tmp_path / "db"
    code = ("import sys; from caffe_lmdb.write.convert import convert_imageset; "
            f"convert_imageset({SAMPLES + '/'!r}, {SAMPLES + '/list.txt'!r}, sys.argv[1], "
            "commit_every=10, workers=1)")
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT="saved:2",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code, str(db)], env=env, capture_output=True,
                         timeout=300)
    assert run.returncode != 0 and (db / "data.mdb").exists()
    assert cli("info", db, "--quiet") == 0
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "--resume" in out
    assert cli("verify", db, "--quiet") == 1
    out = capsys.readouterr().out
    assert "INCOMPLETE: " in out and "--resume" in out and "OK:" not in out
    assert cli("convert-imageset", f"{SAMPLES}/", f"{SAMPLES}/list.txt", db, "--resume",
               "--quiet") == 0
    assert cli("verify", db, "--quiet") == 0
    assert "OK: 36 records" in capsys.readouterr().out


# -- 16-bit images ---------------------------------------------------------------------------


@pytest.fixture
def deep_images(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    deep = (np.arange(8 * 8 * 3).reshape(8, 8, 3) * 900).astype(np.uint16)
    cv2.imwrite(str(root / "deep.png"), deep)
    cv2.imwrite(str(root / "flat.png"), (deep // 256).astype(np.uint8))
    (root / "list.txt").write_text("flat.png 0\ndeep.png 1\n")
    return root


def test_the_converter_skips_16_bit_images_with_the_reason(deep_images, tmp_path, capsys):
    db = tmp_path / "db"
    assert cli("convert-imageset", "--encoded", f"{deep_images}/", deep_images / "list.txt",
               db) == 0
    out = capsys.readouterr().out
    assert "1 records written, 1 skipped" in out and "more than 8 bits per sample" in out
    image, label = caffe_lmdb.open(db)[0]
    assert image.dtype == np.uint8 and label == 0


def test_readers_and_verify_refuse_16_bit_records(deep_images, tmp_path, capsys):
    db = tmp_path / "db"  # as an older converter stored it
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        for i, name in enumerate(["deep.png", "flat.png"]):
            txn.put(b"%08d" % i, caffe_lmdb.datum_bytes(
                data=(deep_images / name).read_bytes(), label=i, encoded=True))
    env.close()
    reader = caffe_lmdb.open(db)
    with pytest.raises(DatumDecodeError, match="8-bit"):
        reader[0]
    with pytest.raises(DatumDecodeError, match="8-bit"):
        next(iter(reader.batches(2)))
    assert reader[1][0].dtype == np.uint8
    assert cli("verify", db, "--quiet") == 1
    assert "uint16 samples" in capsys.readouterr().out
    one_line_error(capsys, cli("compute-mean", db, tmp_path / "mean.binaryproto"))


# -- labels ----------------------------------------------------------------------------------


def test_write_arrays_refuses_non_integer_labels(tmp_path):
    images = np.zeros((3, 1, 2, 2), np.uint8)
    with pytest.raises(CaffeLMDBError, match="targets"):
        caffe_lmdb.write_arrays(tmp_path / "db", images, [0.5, 1.7, -2.0])
    assert not (tmp_path / "db").exists()
    caffe_lmdb.write_arrays(tmp_path / "ok", images, [0.0, 1.0, -2.0])  # whole numbers: fine
    assert [y for _, y in caffe_lmdb.open(tmp_path / "ok")] == [0, 1, -2]


# -- one-line errors -------------------------------------------------------------------------


def test_compute_mean_of_an_empty_database(tmp_path, capsys):
    lmdb.open(str(tmp_path / "empty")).close()
    err = one_line_error(capsys, cli("compute-mean", tmp_path / "empty", tmp_path / "m"))
    assert "holds no records" in err


def test_npy_to_mean_on_a_file_that_is_not_npy(tmp_path, capsys):
    err = one_line_error(capsys, cli("npy-to-mean", f"{SAMPLES}/list.txt", tmp_path / "m"))
    assert "is not a .npy array file" in err and "text" in err


def test_npy_to_mean_refuses_channels_last(tmp_path, capsys):
    np.save(tmp_path / "hwc.npy", np.zeros((32, 32, 3), np.float32))
    err = one_line_error(capsys, cli("npy-to-mean", tmp_path / "hwc.npy", tmp_path / "m"))
    assert "H x W x C" in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("flags", [["--seed=-1", "--shuffle"], ["--workers=0"],
                                   ["--workers", "-2"]])
def test_out_of_range_flags_are_refused_before_anything_is_written(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exc:
        cli("convert-imageset", *flags, f"{SAMPLES}/", f"{SAMPLES}/list.txt", tmp_path / "db")
    assert exc.value.code == 2 and not (tmp_path / "db").exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "must be" in err


def test_an_unknown_encode_type_leaves_nothing_behind(tmp_path, capsys):
    db = tmp_path / "db"
    err = one_line_error(capsys, cli("convert-imageset", "--encode_type=xyz", f"{SAMPLES}/",
                                     f"{SAMPLES}/list.txt", db))
    assert "'xyz'" in err and not db.exists()
    assert cli("convert-imageset", "--encode_type=png", f"{SAMPLES}/", f"{SAMPLES}/list.txt",
               db, "--quiet") == 0


def test_a_command_piped_into_head_stops_quietly(tmp_path):
    caffe_lmdb.write_arrays(tmp_path / "db", np.zeros((3000, 1, 2, 2), np.uint8),
                            list(range(3000)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO),
                                                        os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(f"{sys.executable} -m caffe_lmdb.cli info {tmp_path / 'db'} --quiet "
                         "| head -1", shell=True, env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.strip() == str(tmp_path / "db")
    assert "Traceback" not in run.stderr and "Broken pipe" not in run.stderr, run.stderr


def test_compute_mean_takes_caffe_gflags_spellings(tmp_path, capsys):
    db = tmp_path / "db"
    caffe_lmdb.write_arrays(db, np.full((2, 1, 2, 2), 4, np.uint8), [0, 1])
    # as Caffe's examples/cifar10/create_cifar10.sh calls compute_image_mean
    assert cli("compute-mean", "-backend=lmdb", db, tmp_path / "mean.binaryproto") == 0
    assert caffe_lmdb.read_mean(tmp_path / "mean.binaryproto").tolist() == [[[4, 4], [4, 4]]]


# -- smaller items ---------------------------------------------------------------------------


def test_ctrl_c_says_interrupted_once(tmp_path):
    code = ("import sys; from caffe_lmdb.cli import main; "
            f"sys.exit(main(['convert-imageset', {SAMPLES + '/'!r}, "
            f"{SAMPLES + '/list.txt'!r}, sys.argv[1], '--workers=1', '--quiet']))")
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT="put:5:INT",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "db")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130, run.stderr
    assert run.stderr.count("interrupted") == 1 and "--resume" in run.stderr, run.stderr


def test_demo_refuses_to_replace_its_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli("demo", out, "--quiet") == 0
    capsys.readouterr()
    err = one_line_error(capsys, cli("demo", out, "--quiet"))
    assert "--overwrite" in err
    assert cli("demo", out, "--quiet", "--overwrite") == 0


def test_a_key_given_to_getitem_points_to_get(tmp_path):
    caffe_lmdb.convert_imageset(SAMPLES + "/", SAMPLES + "/list.txt", tmp_path / "db")
    db = caffe_lmdb.open(tmp_path / "db")
    key = db.keys()[0].decode()
    with pytest.raises(TypeError, match=r"db\.get\("):
        db[key]
    assert db.get(key)[1] == db[0][1]


def test_text_values_are_described_as_text(tmp_path, capsys):
    env = lmdb.open(str(tmp_path / "db"))
    with env.begin(write=True) as txn:  # a list file stored as values; a character at byte 64
        txn.put(b"00000000", ("a" + "é" * 40).encode())
    env.close()
    err = one_line_error(capsys, cli("verify", tmp_path / "db", "--quiet"))
    assert "text" in err and "binary data" not in err


def test_every_subcommand_has_a_description(capsys):
    from caffe_lmdb.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [name for name, p in sub.choices.items() if not p.description]
    assert not missing
    for name in ("info", "verify", "export", "features", "compute-mean", "demo", "salvage"):
        with pytest.raises(SystemExit):
            main([name, "--help"])
        out = capsys.readouterr().out
        assert sub.choices[name].description in " ".join(out.split()).replace(
            "\n", " ") or sub.choices[name].description.split()[0] in out
