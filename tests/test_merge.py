"""merge: key order, refused overlaps, nothing half-written, map growth, shards of a conversion."""
import os

import pytest
from conftest import read_lmdb
from helpers import images_db, write_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import KeyRangeError, NotADatumDBError, OptionError, OutputExistsError
from caffe_lmdb.storage.lmdb import LMDBWriter


@pytest.fixture
def parts(tmp_path):
    """Three DBs of 3x4x5 records with keys %08d: 0..9, 10..14, 15..29."""
    return [images_db(tmp_path / name, n=n, start=start, seed=start)[0]
            for name, n, start in (("a", 10, 0), ("b", 5, 10), ("c", 15, 15))]


def test_merge_concatenates_in_key_order(parts, tmp_path):
    summary = caffe_lmdb.merge(tmp_path / "out", parts)
    merged = read_lmdb(tmp_path / "out")
    assert merged == read_lmdb(parts[0]) + read_lmdb(parts[1]) + read_lmdb(parts[2])
    assert [k for k, _ in merged] == [b"%08d" % i for i in range(30)]
    assert summary.written == summary.total == 30 and summary.skipped == []
    assert summary.bytes == sum(len(v) for _, v in merged)
    # the database reads back as one: labels as images_db made them (3 * i + 1)
    with caffe_lmdb.open(tmp_path / "out") as db:
        assert [label for _, label in db] == [3 * i + 1 for i in range(30)]
    assert not [n for n in os.listdir(tmp_path) if "merging" in n]  # temp folder gone


def test_out_of_order_inputs_are_refused_naming_both(parts, tmp_path):
    a, b, c = (str(p) for p in parts)
    with pytest.raises(KeyRangeError) as info:
        caffe_lmdb.merge(tmp_path / "out", [a, c, b])
    msg = str(info.value)
    assert f"{b} comes before {c}" in msg and "'00000014'" in msg and "'00000015'" in msg
    assert f"give them in key order: {a} {b} {c}" in msg
    assert (info.value.first, info.value.second) == (c, b)
    assert not (tmp_path / "out").exists()


def test_overlapping_inputs_are_refused(parts, tmp_path):
    overlap = images_db(tmp_path / "overlap", n=4, start=12)[0]  # keys 12..15
    with pytest.raises(KeyRangeError, match="overlap") as info:
        caffe_lmdb.merge(tmp_path / "out", [parts[0], parts[1], overlap])
    msg = str(info.value)
    assert "'00000010' .. '00000014'" in msg and "'00000012' .. '00000015'" in msg
    assert "--shard" in msg
    assert info.value.last_key == b"00000014" and info.value.first_key == b"00000012"
    with pytest.raises(KeyRangeError, match="overlap"):  # the same DB twice
        caffe_lmdb.merge(tmp_path / "out", [parts[0], parts[0]])
    assert not (tmp_path / "out").exists()


def test_empty_inputs_are_skipped_and_bad_ones_named(parts, tmp_path):
    empty = write_lmdb(tmp_path / "empty", [])
    caffe_lmdb.merge(tmp_path / "out", [empty, parts[0], empty, parts[1]])
    assert read_lmdb(tmp_path / "out") == read_lmdb(parts[0]) + read_lmdb(parts[1])
    (tmp_path / "notdb").mkdir()
    with pytest.raises(NotADatumDBError, match="notdb has no data.mdb"):
        caffe_lmdb.merge(tmp_path / "out2", [parts[0], tmp_path / "notdb"])
    with pytest.raises(OptionError, match="also an input"):
        caffe_lmdb.merge(parts[1], [parts[0], parts[1]], overwrite=True)
    assert not (tmp_path / "out2").exists()


def test_existing_output_needs_overwrite_and_is_replaced_whole(parts, tmp_path):
    out = tmp_path / "out"
    caffe_lmdb.merge(out, parts[:1])
    (out / "convert_state.json").write_text("{}")  # left by an earlier conversion
    with pytest.raises(OutputExistsError, match="--overwrite"):
        caffe_lmdb.merge(out, parts[1:])
    assert read_lmdb(out) == read_lmdb(parts[0])
    caffe_lmdb.merge(out, parts[1:], overwrite=True)
    assert read_lmdb(out) == read_lmdb(parts[1]) + read_lmdb(parts[2])
    assert not (out / "convert_state.json").exists()


def test_a_failure_mid_merge_leaves_no_half_merged_output(parts, tmp_path, monkeypatch):
    real_put = LMDBWriter.put
    calls = []

    def failing_put(self, key, value, replace=False):
        calls.append(key)
        if len(calls) == 17:
            raise OSError(28, "No space left on device (simulated)")
        return real_put(self, key, value, replace)

    monkeypatch.setattr(LMDBWriter, "put", failing_put)
    # a new OUT: removed again
    with pytest.raises(OSError, match="No space left"):
        caffe_lmdb.merge(tmp_path / "new", parts, commit_every=5)
    assert not (tmp_path / "new").exists()
    # an existing OUT with --overwrite: kept as it was
    monkeypatch.setattr(LMDBWriter, "put", real_put)
    caffe_lmdb.merge(tmp_path / "old", parts[:1])
    monkeypatch.setattr(LMDBWriter, "put", failing_put)
    calls.clear()
    with pytest.raises(OSError, match="No space left"):
        caffe_lmdb.merge(tmp_path / "old", parts, overwrite=True, commit_every=5)
    assert read_lmdb(tmp_path / "old") == read_lmdb(parts[0])
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c", "old"]


def test_map_grows_from_one_mib(tmp_path):
    big = [images_db(tmp_path / f"p{k}", n=40, shape=(3, 64, 64), start=40 * k, seed=k)[0]
           for k in range(3)]  # 1.5 MB of records
    summary = caffe_lmdb.merge(tmp_path / "out", big, map_size=1 << 20, commit_every=7)
    assert summary.map_grown >= 1
    assert read_lmdb(tmp_path / "out") == sum((read_lmdb(p) for p in big), [])


def test_caffe_fixture_split_in_two_merges_back_byte_for_byte(fixtures, tmp_path):
    pairs = read_lmdb(fixtures / "imageset_raw_32x32")
    write_lmdb(tmp_path / "first", pairs[:11])
    write_lmdb(tmp_path / "second", pairs[11:])
    caffe_lmdb.merge(tmp_path / "out", [tmp_path / "first", tmp_path / "second"])
    assert read_lmdb(tmp_path / "out") == pairs


def test_shards_of_a_conversion_merge_into_the_whole(fixtures, tmp_path):
    images = fixtures / "inputs" / "images"
    opts = dict(resize_height=24, resize_width=20, gray=True, shuffle=True, seed=3, workers=2)
    parts = []
    for k in range(3):
        part = tmp_path / f"part{k}"
        s = caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", part,
                                        shard=(k, 3), **opts)
        assert s.total == [8, 9, 9][k]  # 26 lines: positions 0-7, 8-16, 17-25
        parts.append(part)
    caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "whole", **opts)
    whole = caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "whole2",
                                        **opts)
    summary = caffe_lmdb.merge(tmp_path / "merged", parts)
    assert read_lmdb(tmp_path / "merged") == read_lmdb(tmp_path / "whole")
    assert summary.written == 24 and summary.total == 26
    # the parts' skipped samples, as the whole conversion skipped them (issue 16)
    assert [(s.key, s.where, s.reason) for s in summary.skipped] == \
        [(s.key, s.where, s.reason) for s in whole.skipped] and len(whole.skipped) == 2
    with pytest.raises(OptionError, match="needs --seed"):
        caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "x",
                                    shuffle=True, shard=(0, 2))
    with pytest.raises(OptionError, match="0 .. N - 1"):
        caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / "x",
                                    shard="2/2")


def test_cli_shards_and_merge(fixtures, tmp_path, capsys):
    images = fixtures / "inputs" / "images"
    base = ["--resize_height=32", "--resize_width=32", "--quiet", f"{images}/",
            str(images / "list.txt")]
    for k in range(2):
        assert main(["convert-imageset", f"--shard={k}/2", *base, str(tmp_path / f"p{k}")]) == 0
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "p0"), str(tmp_path / "p1")]) == 0
    out = capsys.readouterr().out
    assert "24 records written, 2 skipped" in out and "merged: 2 databases" in out
    assert read_lmdb(tmp_path / "out") == read_lmdb(fixtures / "imageset_raw_32x32")
    # errors: one line, exit 1
    assert main(["merge", str(tmp_path / "o2"), str(tmp_path / "p1"), str(tmp_path / "p0")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("caffe-lmdb: ") and err.count("\n") == 1 and "comes before" in err
    assert main(["merge", str(tmp_path / "out"), str(tmp_path / "p0")]) == 1
    assert "already holds an LMDB: pass --overwrite" in capsys.readouterr().err


def test_an_interrupted_part_is_refused(fixtures, tmp_path):
    """A part whose conversion stopped (its state says not done) would leave a hole."""
    import json

    images = fixtures / "inputs" / "images"
    for k in range(2):
        caffe_lmdb.convert_imageset(f"{images}/", images / "list.txt", tmp_path / f"p{k}",
                                    shard=(k, 2), resize_height=8, resize_width=8)
    state_file = tmp_path / "p1" / "convert_state.json"
    state = json.loads(state_file.read_text())
    state["done"] = False
    state_file.write_text(json.dumps(state))
    with pytest.raises(OptionError, match=r"p1 is incomplete: .*--resume"):
        caffe_lmdb.merge(tmp_path / "out", [tmp_path / "p0", tmp_path / "p1"])
    assert not (tmp_path / "out").exists()
