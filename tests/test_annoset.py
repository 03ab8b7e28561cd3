"""SSD-Caffe's AnnotatedDatum: codec, convert_annoset, reading, against the fork's fixtures.

The fixtures (../shared/fixtures/ssd) were written by the real convert_annoset; every LMDB is
rebuilt here key for key and byte for byte, and read back to the expected images and boxes.
"""
import hashlib
import json
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import read_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main as cli_main
from caffe_lmdb.errors import AnnotationError, ListFileError, OptionError
from caffe_lmdb.format.annofiles import read_json, read_txt, strtof
from caffe_lmdb.format.annotated import (
    annotated_bytes,
    group_boxes,
    labelmap_text,
    messages,
    parse_annotated,
    read_labelmap,
    unwrap_datum,
)
from caffe_lmdb.write.annoset import AnnotatedDatumWriter, convert_annoset, labelmap_items

LM = "labelmap.prototxt"
# fixture: (list, convert_annoset keywords): the README's commands
CASES = {
    "det_xml_jpg": ("list_xml.txt", dict(label_type="xml", label_map_file=LM, check_label=True,
                                         encoded=True, encode_type="jpg")),
    "det_txt_raw_32x32": ("list_txt.txt", dict(label_type="txt", label_map_file=LM,
                                               resize_height=32, resize_width=32)),
    "det_xml_png_min24_max40": ("list_xml.txt", dict(label_type="xml", label_map_file=LM,
                                                     min_dim=24, max_dim=40, encoded=True,
                                                     encode_type="png")),
    "det_xml_png_min40_max64": ("list_xml.txt", dict(label_type="xml", label_map_file=LM,
                                                     min_dim=40, max_dim=64, encoded=True,
                                                     encode_type="png")),
    "cls_jpg": ("list_cls.txt", dict(anno_type="classification", encoded=True,
                                     encode_type="jpg")),
    "det_json_raw": ("list_json.txt", dict(label_type="json",
                                           label_map_file="labelmap_json.prototxt")),
    "det_xml_encoded_noext": ("list_xml.txt", dict(label_type="xml", label_map_file=LM,
                                                   encoded=True)),
}


@pytest.fixture(scope="module")
def ssd(fixtures):
    return fixtures / "ssd"


def _expected(ssd, name):
    return json.loads((ssd / "expected" / f"{name}.json").read_text())


def _rows_of(record):
    return [(g["group_label"], a["instance_id"], a["xmin"]["value"], a["ymin"]["value"],
             a["xmax"]["value"], a["ymax"]["value"], float(bool(a["difficult"])))
            for g in record["annotation_group"] for a in g["annotation"]]


def _kwargs(ssd, kw):
    kw = dict(kw)
    if "label_map_file" in kw:
        kw["label_map_file"] = ssd / kw["label_map_file"]
    return kw


# ---------------------------------------------------------------------------------------------
# Codec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_codec_parses_and_reserializes_every_fixture_record(ssd, name):
    records = _expected(ssd, name)["records"]
    pairs = read_lmdb(ssd / name)
    assert [k.decode() for k, _ in pairs] == [r["key"] for r in records]
    for (_key, value), rec in zip(pairs, records, strict=True):
        datum, kind, rows = parse_annotated(value)
        assert (kind is None) == (rec["type"] is None)
        assert [tuple(r) for r in rows.tolist()] == _rows_of(rec)
        bits = [int(a[c]["bits"], 16) for g in rec["annotation_group"]
                for a in g["annotation"] for c in ("xmin", "ymin", "xmax", "ymax")]
        assert rows[:, 2:6].astype("<f4").view("<u4").reshape(-1).tolist() == bits
        assert annotated_bytes(datum, kind, rows) == value
        assert bytes(unwrap_datum(value)) == datum
        # the generated message class agrees
        msg = messages().AnnotatedDatum.FromString(value)
        assert msg.datum.SerializeToString() == datum
        assert msg.SerializeToString() == value


def test_group_boxes_first_appearance_and_instance_ids():
    rows = group_boxes([3, 1, 3, 3], [[0.1, 0.2, 0.3, 0.4]] * 4, [1, 0, 0, 1])
    assert rows[:, 0].tolist() == [3, 3, 3, 1]
    assert rows[:, 1].tolist() == [0, 1, 2, 0]
    assert rows[:, 6].tolist() == [1, 0, 1, 0]
    value = annotated_bytes(b"\x08\x01", 0, rows)
    assert parse_annotated(value)[2].tolist() == rows.astype(np.float32).astype(float).tolist()


def test_labelmap_roundtrip(ssd, tmp_path):
    for name in ("labelmap.prototxt", "labelmap_json.prototxt"):
        items = read_labelmap(ssd / name)
        assert labelmap_text(items) == (ssd / name).read_text()
    bad = tmp_path / "bad.prototxt"
    bad.write_text('item {\n  name: "a"\n  labl: 1\n}\n')
    with pytest.raises(AnnotationError, match=r"bad.prototxt:3: .*labl"):
        read_labelmap(bad)


def test_strtof_rounds_once():
    assert strtof("24.05") == np.float32(24.05)
    # a decimal just above a float32 midpoint whose nearest double IS the midpoint
    mid = (float(np.float32(1.0)) + float(np.nextafter(np.float32(1.0), np.float32(2)))) / 2
    above = f"{mid:.30f}1"
    assert float(above) == mid
    assert strtof(above) == np.nextafter(np.float32(1.0), np.float32(2))
    assert strtof("1_0") is None and strtof("inf") is None and strtof("12abc") is None


# ---------------------------------------------------------------------------------------------
# convert_annoset: every fixture, byte for byte, 1 and 2 workers; the command line
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_convert_annoset_rebuilds_fixture(ssd, tmp_path, name, workers):
    lst, kw = CASES[name]
    summary = convert_annoset(str(ssd) + "/", ssd / lst, tmp_path / "db", workers=workers,
                              **_kwargs(ssd, kw))
    assert read_lmdb(tmp_path / "db") == read_lmdb(ssd / name)
    assert summary.written == 16
    assert [s.where for s in summary.skipped] == [f"{ssd / lst}:4"]


def test_cli_convert_annoset_and_gflags(ssd, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ssd)  # run as the fixtures were made: from their folder
    argv = ["convert-annoset", "-anno_type=detection", "--label_type", "xml",
            "--label_map_file=labelmap.prototxt", "--check_label=true", "-encoded",
            "--encode_type=jpg", "--quiet", "./", "list_xml.txt", str(tmp_path / "db")]
    assert cli_main(argv) == 0
    assert read_lmdb(tmp_path / "db") == read_lmdb(ssd / "det_xml_jpg")
    assert cli_main(["convert-annoset", "--label_type=txt", "--label_map_file=labelmap.prototxt",
                     "--resize_height=32", "--resize_width=32", "--quiet", "./", "list_txt.txt",
                     str(tmp_path / "db2")]) == 0
    assert read_lmdb(tmp_path / "db2") == read_lmdb(ssd / "det_txt_raw_32x32")
    capsys.readouterr()
    assert cli_main(["convert-annoset", "--label_type=xml", "./", "list_xml.txt",
                     str(tmp_path / "db3")]) == 1
    assert "needs --label_map_file" in capsys.readouterr().err
    # SSD-Caffe's convert_annoset takes --backend=leveldb too: the same records in a LevelDB
    assert cli_main(["convert-annoset", "--backend=leveldb", "--label_type=txt", "./",
                     "list_txt.txt", str(tmp_path / "db4")]) == 0
    assert cli_main(["convert-annoset", "--label_type=txt", "./", "list_txt.txt",
                     str(tmp_path / "db5")]) == 0
    with caffe_lmdb.open(tmp_path / "db4") as db4, db4.begin(buffers=False) as txn:
        assert db4.backend == "leveldb" and db4.kind == "annotated"
        assert list(txn.iter_items()) == read_lmdb(tmp_path / "db5")


def test_cli_labelmap(tmp_path, capsys):
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n\n17 traffic light\n")
    out = tmp_path / "lm.prototxt"
    assert cli_main(["labelmap", str(classes), str(out)]) == 0
    assert read_labelmap(out) == [("none_of_the_above", 0, "background"), ("cat", 1, "cat"),
                                  ("dog", 2, "dog"), ("17", 3, "traffic light")]
    assert cli_main(["labelmap", str(classes), str(out)]) == 1  # exists
    assert cli_main(["labelmap", "--no-background", "--overwrite", str(classes), str(out)]) == 0
    assert read_labelmap(out)[0] == ("cat", 0, "cat")
    with pytest.raises(AnnotationError, match="listed twice"):
        labelmap_items(["a", "b", "a"])


# ---------------------------------------------------------------------------------------------
# Reading: images exactly as for Datum records, plus the boxes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_records_read_back(ssd, name):
    records = _expected(ssd, name)["records"]
    values = [v for _k, v in read_lmdb(ssd / name)]
    db = caffe_lmdb.open(ssd / name)
    assert db.kind == "annotated" and len(db) == 16
    for i, rec in enumerate(records):
        d = rec["datum"]
        image, label = db[i]
        assert label == d["label"]
        data = messages().AnnotatedDatum.FromString(values[i]).datum.data
        assert hashlib.sha256(data).hexdigest() == d["data_sha256"]
        if d["encoded"]:
            native = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            assert list(native.shape) == rec["decoded_native_shape"]
            chw = native[None] if native.ndim == 2 else native.transpose(2, 0, 1)
            assert np.array_equal(image, chw)
        else:
            assert image.shape == (d["channels"], d["height"], d["width"])
            assert image.tobytes() == data
        if rec["type"] is None:  # classification: a Datum only, no boxes
            assert db.boxes(i).shape == (0, 7)
            continue
        boxes = db.boxes(i)
        assert [tuple(r) for r in boxes.tolist()] == _rows_of(rec)
        px = db.boxes(rec["key"], pixels=True)
        h, w = image.shape[1:]
        assert np.allclose(px[:, [2, 4]], boxes[:, [2, 4]] * w, atol=1e-4)
        assert np.allclose(px[:, [3, 5]], boxes[:, [3, 5]] * h, atol=1e-4)


def test_batches_with_boxes_match_annotation_files(ssd):
    """Pixel boxes of every batch are the integer boxes of the image's XML file."""
    inputs = {e["rel"]: e for e in json.loads((ssd / "expected" / "inputs.json").read_text())}
    labels = dict((n, lab) for n, lab, _ in read_labelmap(ssd / LM))
    db = caffe_lmdb.open(ssd / "det_txt_raw_32x32")
    keys = db.keys()
    perm = np.random.default_rng([3, 0]).permutation(len(db))
    at = 0
    for _images, _labels, boxes in db.batches(5, boxes=True, shuffle=True, seed=3, epoch=0):
        for rows in boxes:  # the batch's boxes are those of its records, in its order
            assert np.array_equal(rows, db.boxes(int(perm[at])))
            at += 1
    assert at == len(db)
    # per record, in key order: the stored boxes are the XML boxes over the original size
    for i, key in enumerate(keys):
        entry = inputs[key.decode().split("_", 1)[1]]
        objs = entry["objs"] if os.path.exists(ssd / "annotations" / "xml" /
                                               (entry["stem"] + ".xml")) else []
        got = db.boxes(i)
        order = sorted(range(len(objs)), key=lambda k: [o["name"] for o in objs].index(
            objs[k]["name"]))
        f32 = np.float32
        want = [(labels[objs[k]["name"]], f32(objs[k]["xmin"]) / f32(entry["w"]),
                 f32(objs[k]["ymax"]) / f32(entry["h"])) for k in order]
        assert [(int(r[0]), f32(r[2]), f32(r[5])) for r in got] == want


def test_dataloader_batches_keep_boxes_with_their_images(ssd):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset, detection_collate

    ds = DatumDataset(ssd / "det_txt_raw_32x32")
    db = caffe_lmdb.open(ssd / "det_txt_raw_32x32")
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=2,
                        collate_fn=detection_collate)
    i = 0
    for images, boxes, labels in loader:
        assert images.shape[1:] == (3, 32, 32)
        for j in range(len(images)):
            rows = db.boxes(i)
            assert torch.equal(boxes[j], torch.from_numpy(rows[:, 2:6].astype(np.float32)))
            assert labels[j].tolist() == rows[:, 0].astype(int).tolist()
            assert torch.equal(images[j], torch.from_numpy(db[i][0]))
            i += 1
    assert i == 16
    with pytest.raises(ValueError, match="joint_transform"):
        DatumDataset(ssd / "det_txt_raw_32x32", transform=lambda x: x)
    flipped = DatumDataset(ssd / "det_txt_raw_32x32", pixels=True,
                           joint_transform=lambda im, b, lab: (im.flip(-1), b, lab))
    assert torch.equal(flipped[0][0], torch.from_numpy(db[0][0]).flip(-1))
    assert flipped[0][1].max() > 1


# ---------------------------------------------------------------------------------------------
# The Python writer
# ---------------------------------------------------------------------------------------------


def test_writer_reproduces_verbatim_jpeg_records(ssd, tmp_path):
    """A JPEG file + its XML boxes in pixels -> the fork's det_xml_jpg record, byte for byte."""
    inputs = {e["rel"]: e for e in json.loads((ssd / "expected" / "inputs.json").read_text())}
    labels = dict((n, lab) for n, lab, _ in read_labelmap(ssd / LM))
    fixture = dict(read_lmdb(ssd / "det_xml_jpg"))
    checked = 0
    with AnnotatedDatumWriter(tmp_path / "db") as w:
        for key in fixture:
            rel = key.decode().split("_", 1)[1]
            entry = inputs[rel]
            if not rel.lower().endswith((".jpg", ".jpeg")) or rel.endswith("img_017.JPEG") \
                    or entry["stem"] == "cat/img_000":
                continue  # PNGs are re-encoded; 017 has no XML; 000 has the difficult quirk
            objs = entry["objs"]
            w.put(str(ssd / rel), [[o["xmin"], o["ymin"], o["xmax"], o["ymax"]] for o in objs],
                  [labels[o["name"]] for o in objs], [o["difficult"] for o in objs],
                  pixels=True, key=key)
            checked += 1
    got = dict(read_lmdb(tmp_path / "db"))
    assert checked >= 6 and all(got[k] == fixture[k] for k in got)


def test_writer_arrays_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (3, 20, 30), dtype=np.uint8)
    with AnnotatedDatumWriter(tmp_path / "db") as w:
        w.put(img, [[3, 4, 10, 12], [0, 0, 30, 20]], [7, 2], pixels=True)
        w.put(img, None)
        w.put(img[0], [[0.1, 0.2, 0.5, 0.6]], [1], encode="png")
    db = caffe_lmdb.open(tmp_path / "db")
    assert db.kind == "annotated"
    assert np.array_equal(db[0][0], img) and db[0][1] == -1
    assert db.boxes(0, pixels=True)[:, 2:6].tolist() == [[3, 4, 10, 12], [0, 0, 30, 20]]
    assert db.boxes(1).shape == (0, 7)
    assert np.array_equal(db[2][0], img[:1])
    assert db.boxes(2)[0, 0] == 1


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _voc(objs, size=(40, 30)):
    body = "".join(f"<object><name>{n}</name>{extra}<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}"
                   f"</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n"
                   for n, b, extra in objs)
    return (f"<annotation>\n<size><width>{size[0]}</width><height>{size[1]}</height></size>\n"
            f"{body}</annotation>\n")


@pytest.fixture
def small(tmp_path):
    """Two images with VOC, JSON and TXT files, a label map, lists."""
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for k, (w, h) in enumerate([(40, 30), (25, 50)]):
        cv2.imwrite(str(root / "img" / f"{k}.png"), np.full((h, w, 3), 40 * k, np.uint8))
        (root / "ann" / f"{k}.xml").write_text(_voc([("cat", (1, 2, 10, 20), ""),
                                                     ("dog", (3, 4, 5, 6), "")], (w, h)))
    (root / "lm.prototxt").write_text(labelmap_text(labelmap_items(["cat", "dog"])))
    (root / "list.txt").write_text("img/0.png ann/0.xml\nimg/1.png ann/1.xml\n")
    return root


def _convert(root, **kw):
    kw.setdefault("label_map_file", root / "lm.prototxt")
    return convert_annoset(str(root) + "/", root / "list.txt", root.parent / "out", **kw)


def test_non_integer_xml_coordinate_names_file_and_line(small):
    (small / "ann" / "1.xml").write_text(_voc([("cat", (1, 2, 10, 20), ""),
                                               ("dog", ("12.5", 4, 20, 6), "")], (25, 50)))
    with pytest.raises(AnnotationError, match=r"ann/1.xml:4: <xmin> is '12.5', not an integer"):
        _convert(small, workers=2)
    # the record before the bad file was committed and the database opens
    db = caffe_lmdb.open(small.parent / "out")
    assert [bytes(k) for k in list(db.keys())] == [b"00000000_img/0.png"]


@pytest.mark.parametrize("text, match", [
    ("<annotation><size>", r"1.xml:1: malformed XML"),
    ("<annotation>\n<object><name>horse</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2"
     "</xmax><ymax>2</ymax></bndbox></object></annotation>", r"1.xml:2: the name 'horse' is not"),
    ("<annotation><size><width>0</width><height>0</height></size></annotation>",
     "no valid image width/height"),
    ("<voc/>", "not <annotation>"),
    ("<annotation>\n<object><name>cat</name></object></annotation>", "without a <bndbox>"),
    ("<annotation><object><name>cat</name><bndbox><xmin>1</xmin></bndbox></object>"
     "</annotation>", "no <ymin>"),
])
def test_malformed_xml(small, text, match):
    (small / "ann" / "1.xml").write_text(text)
    with pytest.raises(AnnotationError, match=match):
        _convert(small)


def test_xml_quirks(small):
    # whitespace around integers is fine; <size> missing -> the image's; difficult after box
    (small / "ann" / "1.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin> 5 </xmin><ymin>10</ymin>"
        "<xmax>25</xmax><ymax>50</ymax></bndbox><difficult>1</difficult></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>0</xmin><ymin>0</ymin>"
        "<xmax>1</xmax><ymax>1</ymax></bndbox></object></annotation>")
    _convert(small)
    rows = caffe_lmdb.open(small.parent / "out").boxes(1)
    assert rows[:, 0].tolist() == [2, 1]
    assert rows[0, 2:6].astype(np.float32).tolist() == np.float32([0.2, 0.2, 1, 1]).tolist()
    assert rows[:, 6].tolist() == [0, 1]


@pytest.mark.parametrize("text, match", [
    ('{"image": {"width": 25, "height": 50}, "annotation": [', r"1.json:1: malformed JSON"),
    ('{"image": {}, "annotation": [{"category_id": 9, "bbox": [1, 2, 3, 4]}]}',
     "category_id '9' is not a name"),
    ('{"annotation": [{"category_id": "cat", "bbox": [1, 2, 3]}]}', "not four numbers"),
    ('{"annotation": [{"category_id": "cat", "bbox": [1, 2, "x", 4]}]}', "not four numbers"),
    ('{"image": {"width": 25, "height": 50}}', 'no "annotation"'),
])
def test_malformed_json(small, text, match):
    (small / "ann" / "1.json").write_text(text)
    (small / "list.txt").write_text("img/0.png ann/none.json\nimg/1.png ann/1.json\n")
    with pytest.raises(AnnotationError, match=match):
        _convert(small, label_type="json")


def test_json_reader(small):
    (small / "ann" / "1.json").write_text(
        '{"image": {"width": 25, "height": 50}, "annotation": [{"category_id": "dog", '
        '"bbox": [2.5, 5, 10, 20], "iscrowd": 1}, {"category_id": "cat", "bbox": [0,0,1,1]}]}')
    rows = read_json(small / "ann" / "1.json", 50, 25, {"cat": 1, "dog": 2})
    f32 = np.float32
    assert rows.astype(f32).tolist() == f32([[2, 0, 0.1, 0.1, 0.5, 0.5, 1],
                                             [1, 0, 0, 0, 1 / 25, 1 / 50, 0]]).tolist()


@pytest.mark.parametrize("text, match", [
    ("1 2 3 4 5\n2 1 1 x 1\n", r"1.txt:2: 'x' is not a number"),
    ("1 2 3 4 5\n2 1 1\n", r"1.txt:2: 3 values"),
    ("1.5 2 3 4 5\n", r"1.txt:1: '1.5' is not an integer label"),
])
def test_malformed_txt(small, text, match):
    (small / "ann" / "1.txt").write_text(text)
    (small / "list.txt").write_text("img/0.png ann/none.txt\nimg/1.png ann/1.txt\n")
    with pytest.raises(AnnotationError, match=match):
        _convert(small, label_type="txt")


def test_txt_reader_uses_original_size(small):
    (small / "ann" / "1.txt").write_text("2 5 10 25 50\n1 0 0 12.5 25\n2 1 1 2 2")
    rows = read_txt(small / "ann" / "1.txt", 50, 25)
    assert rows[:, :2].tolist() == [[2, 0], [2, 1], [1, 0]]
    assert rows[0, 2:6].astype(np.float32).tolist() == np.float32([0.2, 0.2, 1, 1]).tolist()
    assert rows[1, 2:6].astype(np.float32).tolist() == \
        np.float32([1 / 25, 1 / 50, 2 / 25, 2 / 50]).tolist()
    assert rows[2, 2:6].tolist() == [0, 0, 0.5, 0.5]


def test_missing_annotation_and_image(small):
    (small / "list.txt").write_text("img/0.png ann/absent.xml\nimg/gone.png ann/1.xml\n"
                                    "img/1.png ann/1.xml\n")
    summary = _convert(small)
    db = caffe_lmdb.open(small.parent / "out")
    assert list(db.keys()) == [b"00000000_img/0.png", b"00000002_img/1.png"]
    assert db.boxes(0).shape == (0, 7) and db.boxes(1).shape == (2, 7)
    assert len(summary.skipped) == 1 and "gone.png" in summary.skipped[0].reason


def test_bad_options_and_lists(small):
    with pytest.raises(OptionError):
        _convert(small, anno_type="segmentation")
    with pytest.raises(OptionError):
        _convert(small, label_type="yaml")
    dup = small / "dup.prototxt"
    dup.write_text(labelmap_text([("cat", 1), ("cat", 2), ("dog", 3)]))
    with pytest.raises(AnnotationError, match="more than once"):
        _convert(small, label_map_file=dup, check_label=True)
    _convert(small, label_map_file=dup, overwrite=True)  # without the check the last one wins
    assert caffe_lmdb.open(small.parent / "out").boxes(0)[0, 0] == 2
    (small / "list.txt").write_text("img/0.png ann/0.xml extra\n")
    with pytest.raises(ListFileError, match="list.txt:1"):
        _convert(small, overwrite=True)
    (small / "list.txt").write_text("img/0.png x\n")
    with pytest.raises(ListFileError, match="not an int32"):
        _convert(small, anno_type="classification", overwrite=True)


def test_gray_min_dim_and_check_size(small):
    _convert(small, gray=True, min_dim=40, encoded=True, encode_type="png")
    db = caffe_lmdb.open(small.parent / "out")
    assert db[0][0].shape == (1, 40, 53) and db[1][0].shape == (1, 80, 40)
    with pytest.raises(caffe_lmdb.ShapeMismatchError):
        _convert(small, check_size=True, overwrite=True)
    _convert(small, check_size=True, resize_height=8, resize_width=8, overwrite=True)
    # encoded records of the fork carry channels, height and width: --check_size checks them
    with pytest.raises(caffe_lmdb.ShapeMismatchError, match=r"1.png.*3x50x25.*3x30x40"):
        _convert(small, check_size=True, encoded=True, encode_type="png", overwrite=True)
    _convert(small, check_size=True, encoded=True, encode_type="png", resize_height=8,
             resize_width=8, overwrite=True)


def test_convert_imageset_refuses_check_size_with_encoded(small, tmp_path):
    """Encoded records of convert_imageset hold no size: the check cannot apply (Caffe stops
    at the second image); refused before anything is created."""
    (small / "cls.txt").write_text("img/0.png 0\nimg/1.png 1\n")
    with pytest.raises(caffe_lmdb.errors.OptionError, match="--check_size.*--encoded"):
        caffe_lmdb.convert_imageset(str(small) + "/", small / "cls.txt", tmp_path / "enc",
                                    encoded=True, check_size=True)
    assert not (tmp_path / "enc").exists()


# ---------------------------------------------------------------------------------------------
# Kill and resume
# ---------------------------------------------------------------------------------------------

_CHILD = """
import sys
from caffe_lmdb.write.annoset import convert_annoset
root, db = sys.argv[1], sys.argv[2]
convert_annoset(root + "/", root + "/list.txt", db, label_map_file=root + "/lm.prototxt",
                encode_type="png", min_dim=20, workers=2, commit_every=32)
"""


@pytest.mark.parametrize("crash", ["commit:3", "put:150", "saved:2"])
def test_sigkill_then_resume(tmp_path, crash):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    rng = np.random.default_rng(1)
    lines = []
    for k in range(200):
        w, h = (int(v) for v in rng.integers(16, 48, 2))
        cv2.imwrite(str(root / "img" / f"{k}.jpg"), rng.integers(0, 255, (h, w, 3), np.uint8))
        objs = [("cat", (0, 1, w // 2, h), ""), ("dog", (1, 0, w, h // 2), "")][:1 + k % 2]
        (root / "ann" / f"{k}.xml").write_text(_voc(objs, (w, h)))
        lines.append(f"img/{k}.jpg ann/{k}.xml")
    lines.insert(7, "img/missing.jpg ann/0.xml")
    (root / "lm.prototxt").write_text(labelmap_text(labelmap_items(["cat", "dog"])))
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    argv = ["convert-annoset", "--label_map_file", str(root / "lm.prototxt"), "--encode_type=png",
            "--min_dim=20", "--workers=2", "--quiet", str(root) + "/", str(root / "list.txt")]
    ref = tmp_path / "ref"
    assert cli_main([*argv, str(ref)]) == 0
    db = tmp_path / "db"
    env = dict(os.environ, CAFFE_LMDB_TEST_CRASH_AT=crash,
               PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(db)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = read_lmdb(db)
    full = read_lmdb(ref)
    assert len(full) == 200
    assert partial == full[:len(partial)] and len(partial) < len(full)
    assert caffe_lmdb.verify(str(db)).ok if hasattr(caffe_lmdb, "verify") else True
    assert cli_main([*argv, "--resume", str(db)]) == 0
    assert read_lmdb(db) == full


# ---------------------------------------------------------------------------------------------
# info, verify, compute-mean, export
# ---------------------------------------------------------------------------------------------


def test_info_verify_report_boxes(ssd, tmp_path):
    from caffe_lmdb.tools.dbinfo import info, verify

    report = info(str(ssd / "det_xml_jpg"))
    assert report.record_format == "AnnotatedDatum"
    assert report.boxes == 46 and report.without_boxes == 2
    assert sum(report.box_labels.values()) == 46
    assert "AnnotatedDatum" in str(report) and "no boxes     2 records" in str(report)
    assert verify(str(ssd / "det_xml_jpg")).ok  # varying shapes are normal for SSD data
    with AnnotatedDatumWriter(tmp_path / "db") as w:
        img = np.zeros((3, 8, 8), np.uint8)
        w.put(img, [[0.5, 0.1, 0.4, 0.3], [-0.1, 0, 0.5, 1.2]], [1, 2])
    bad = verify(str(tmp_path / "db"))
    assert not bad.ok and {p.kind for p in bad.problems} == {"box"}
    assert bad.boxes_outside == 1 and bad.boxes_degenerate == 1


def test_compute_mean_unwraps_annotated_datum(ssd):
    mean = caffe_lmdb.compute_mean(str(ssd / "det_txt_raw_32x32"))
    mean = mean[0] if isinstance(mean, tuple) else mean
    db = caffe_lmdb.open(ssd / "det_txt_raw_32x32")
    images = np.stack([db[i][0] for i in range(len(db))]).astype(np.float64)
    assert np.asarray(mean).shape == (3, 32, 32)
    assert np.allclose(np.asarray(mean), images.mean(axis=0), atol=1e-3)


def test_export_writes_voc_xml_that_convert_annoset_reads_back(ssd, tmp_path):
    from caffe_lmdb.tools.dbinfo import export

    assert export(str(ssd / "det_xml_jpg"), tmp_path / "ex", label_map=ssd / LM) == 16
    lines = (tmp_path / "ex" / "list.txt").read_text().split("\n")
    assert lines[0] == "images/cat/img_000.jpg Annotations/images/cat/img_000.xml"
    convert_annoset(str(tmp_path / "ex") + "/", tmp_path / "ex" / "list.txt", tmp_path / "db",
                    label_map_file=ssd / LM, encode_type="jpg")
    # no resize: the integer boxes come back exactly, the files verbatim
    assert [v for _k, v in read_lmdb(tmp_path / "db")] == \
        [v for _k, v in read_lmdb(ssd / "det_xml_jpg")]
