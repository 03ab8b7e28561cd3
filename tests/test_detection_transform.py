"""A caffe_lmdb.Transform on detection records (SSD-Caffe's AnnotatedDatum): the boxes follow the
crop and the mirror of their image, as the fork's DataTransformer::TransformAnnotation moves them.

The references here are written independently of caffe_lmdb.tools.transform: box values from the
fixture README's expected JSON, projected with plain float32 scalars one box at a time."""
import json

import numpy as np
import pytest

import caffe_lmdb
from caffe_lmdb.tools.prototxt import PrototxtError
from caffe_lmdb.write.annoset import AnnotatedDatumWriter

F = np.float32


@pytest.fixture(scope="module")
def ssd(fixtures):
    return fixtures / "ssd"


def _expected_boxes(ssd, name):
    """Per record: [(group_label, instance_id, xmin, ymin, xmax, ymax, difficult)] from the JSON."""
    records = json.loads((ssd / "expected" / f"{name}.json").read_text())["records"]
    out = []
    for r in records:
        rows = []
        for g in r["annotation_group"]:
            for a in g["annotation"]:
                rows.append((g["group_label"], a["instance_id"],
                             *(F(a[k]["value"]) for k in ("xmin", "ymin", "xmax", "ymax")),
                             bool(a["difficult"])))
        out.append((r["datum"]["height"], r["datum"]["width"], rows))
    return out


def _reference(rows, h_off, w_off, ch, cw, height, width, mirror=False, center=False):
    """SSD-Caffe's TransformAnnotation for one record, box by box in float32 scalars."""
    cx0, cy0 = F(w_off) / F(width), F(h_off) / F(height)
    cx1, cy1 = F(w_off + cw) / F(width), F(h_off + ch) / F(height)
    kept = []
    for label, inst, x0, y0, x1, y1, diff in rows:
        if center:
            xc, yc = (x0 + x1) / F(2), (y0 + y1) / F(2)
            if not (cx0 <= xc <= cx1 and cy0 <= yc <= cy1):
                continue
        if x0 >= cx1 or x1 <= cx0 or y0 >= cy1 or y1 <= cy0:
            continue
        sw, sh = F(cx1 - cx0), F(cy1 - cy0)
        p = [min(max((v - o) / s, F(0)), F(1)) for v, o, s in
             ((x0, cx0, sw), (y0, cy0, sh), (x1, cx0, sw), (y1, cy0, sh))]
        if p[2] < p[0] or p[3] < p[1] or F((p[2] - p[0]) * (p[3] - p[1])) <= 0:
            continue
        if mirror:
            p[0], p[2] = F(1) - p[2], F(1) - p[0]
        kept.append((label, inst, *p, diff))
    return kept


def _as_tuples(rows):
    return [(int(r[0]), int(r[1]), *(F(v) for v in r[2:6]), bool(r[6])) for r in rows]


@pytest.mark.parametrize("name", ["det_txt_raw_32x32", "det_json_raw"])
def test_test_phase_center_crop_matches_reference(ssd, name):
    """TEST phase, crop 20: the centre crop ((H - 20) // 2, (W - 20) // 2) of each record;
    every box, bit for bit (det_json_raw: native sizes, so the crop box is not a power of 2)."""
    db = caffe_lmdb.open(ssd / name)
    t = caffe_lmdb.Transform(crop_size=20, phase="test")
    images, _, boxes = db.read(range(len(db)), transform=t, boxes=True)
    assert images.shape == (len(db), 3, 20, 20)
    expected = _expected_boxes(ssd, name)
    dropped = 0
    for (h, w, rows), got in zip(expected, boxes, strict=True):
        want = _reference(rows, (h - 20) // 2, (w - 20) // 2, 20, 20, h, w)
        dropped += len(rows) - len(want)
        assert _as_tuples(got) == want
        for a, b in zip(got, want, strict=True):  # same bits, not only equal values
            assert F(a[2]).tobytes() == b[2].tobytes() and F(a[4]).tobytes() == b[4].tobytes()
    assert dropped > 0  # some boxes lie outside the centre crop


def test_no_crop_keeps_fixture_boxes_and_difficult(ssd):
    """Without crop or mirror the crop box is the whole image: boxes inside [0, 1] come back
    unchanged, labels, instance ids and difficult flags included (det_xml_jpg has some)."""
    db = caffe_lmdb.open(ssd / "det_xml_jpg")
    t = caffe_lmdb.Transform(force_color=True)
    expected = _expected_boxes(ssd, "det_xml_jpg")
    for j, (_, _, rows) in enumerate(expected):
        _, _, boxes = db.read([j], transform=t, boxes=True)
        assert _as_tuples(boxes[0]) == rows
    assert any(r[6] for _, _, rows in expected for r in rows)


def _bright_boxes_db(path, n=12, size=(48, 64), seed=0):
    """Dark images, each with two or three bright rectangles; each box surrounds one exactly."""
    rng = np.random.default_rng(seed)
    h, w = size
    with AnnotatedDatumWriter(path) as wr:
        for _ in range(n):
            img = np.zeros((3, h, w), np.uint8)
            boxes = []
            for _k in range(int(rng.integers(2, 4))):
                bw, bh = int(rng.integers(6, 16)), int(rng.integers(6, 16))
                x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                img[:, y0:y0 + bh, x0:x0 + bw] = 255
                boxes.append([x0, y0, x0 + bw, y0 + bh])
            wr.put(img, boxes, list(range(1, len(boxes) + 1)), pixels=True)


def _check_surrounded(image, boxes):
    """Every bright pixel of the transformed image lies in one of its boxes (in pixels), and
    every box holds bright pixels."""
    bright = image[0] > 128
    inside = np.zeros_like(bright)
    for x0, y0, x1, y1 in np.rint(np.asarray(boxes, np.float64)).astype(int):
        assert bright[y0:y1, x0:x1].any()
        inside[y0:y1, x0:x1] = True
    assert not (bright & ~inside).any()


def test_random_crop_and_mirror_move_boxes_with_pixels(tmp_path):
    _bright_boxes_db(tmp_path / "db")
    db = caffe_lmdb.open(tmp_path / "db")
    t = caffe_lmdb.Transform(crop_size=40, mirror=True, phase="train", seed=11)
    for images, _, boxes in db.batches(4, boxes=True, pixels=True, transform=t):
        assert images.shape[1:] == (3, 40, 40)
        for image, rows in zip(images, boxes, strict=True):
            _check_surrounded(image, rows[:, 2:6])
    # the stream of this seed mirrors some records and not others (first draw of each)
    draws = caffe_lmdb.Transform(crop_size=40, mirror=True, phase="train", seed=11).draw(len(db))
    assert 0 < int((draws[:, 0] % 2).sum()) < len(db)


def test_boxes_outside_dropped_partly_outside_clipped(tmp_path):
    img = np.zeros((1, 40, 40), np.uint8)
    with AnnotatedDatumWriter(tmp_path / "db") as w:
        # centre crop 20 of 40: pixels 10..30; box A outside, B straddles the left edge,
        # C inside, D (group 4, alone) outside: its group disappears
        w.put(img, [[0, 0, 8, 8], [5, 12, 15, 20], [12, 12, 18, 18], [32, 32, 39, 39]],
              [1, 2, 2, 4], pixels=True)
    db = caffe_lmdb.open(tmp_path / "db")
    t = caffe_lmdb.Transform(crop_size=20, phase="test")
    _, _, boxes = db.read([0], transform=t, boxes=True, pixels=True)
    assert boxes[0][:, [0, 1]].tolist() == [[2, 0], [2, 1]]
    assert np.allclose(boxes[0][:, 2:6], [[0, 2, 5, 10], [2, 2, 8, 8]], atol=1e-4)


def test_emit_constraint_center_drops_box_whose_centre_leaves(tmp_path):
    img = np.zeros((1, 40, 40), np.uint8)
    with AnnotatedDatumWriter(tmp_path / "db") as w:
        # crop 10..30: box 1's centre (7, 20) is outside, box 2's (14, 20) inside
        w.put(img, [[2, 15, 12, 25], [8, 15, 20, 25]], [1, 1], pixels=True)
    db = caffe_lmdb.open(tmp_path / "db")
    plain = caffe_lmdb.Transform(crop_size=20, phase="test")
    center = caffe_lmdb.Transform(crop_size=20, phase="test", emit_constraint="center")
    assert len(db.read([0], transform=plain, boxes=True)[2][0]) == 2
    rows = db.read([0], transform=center, boxes=True)[2][0]
    assert rows[:, 1].tolist() == [1]
    overlap = caffe_lmdb.Transform(crop_size=20, phase="test", emit_constraint="MIN_OVERLAP",
                                   emit_overlap=0.5)
    # box 1 is 20% inside the crop, box 2 83%: only box 2 passes coverage > 0.5
    assert db.read([0], transform=overlap, boxes=True)[2][0][:, 1].tolist() == [1]


def test_dataset_and_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset, detection_collate

    _bright_boxes_db(tmp_path / "db", n=16)
    t = caffe_lmdb.Transform(crop_size=40, mirror=True, phase="train", seed=5)
    ds = DatumDataset(tmp_path / "db", transform=t, pixels=True)
    image, boxes, labels = ds[3]
    assert image.shape == (3, 40, 40) and boxes.dtype == torch.float32
    assert labels.dtype == torch.int64 and len(boxes) == len(labels)
    _check_surrounded(image.numpy(), boxes.numpy())
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=detection_collate)
    seen = 0
    for images, boxes, labels in loader:
        assert images.shape == (4, 3, 40, 40)
        assert [len(b) for b in boxes] == [len(v) for v in labels]
        for im, bx in zip(images, boxes, strict=True):
            _check_surrounded(im.numpy(), bx.numpy())
            seen += 1
    assert seen == 16
    with pytest.raises(ValueError, match="pass joint_transform"):
        DatumDataset(tmp_path / "db", transform=lambda im: im)


def test_plain_callable_refused_by_batches(tmp_path):
    _bright_boxes_db(tmp_path / "db", n=2)
    db = caffe_lmdb.open(tmp_path / "db")
    with pytest.raises(ValueError, match="leave the boxes behind"):
        next(db.batches(2, boxes=True, transform=lambda im: im))


_SSD_NET = """
name: "ssd"
layer {{
  name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: TEST }}
  transform_param {{
    mean_value: 104 mean_value: 117 mean_value: 123
    resize_param {{ prob: 1 resize_mode: WARP height: 30 width: 36 interp_mode: {interp} }}
    {extra}
  }}
  data_param {{ source: "{source}" batch_size: 4 backend: LMDB }}
  annotated_data_param {{ label_map_file: "labelmap.prototxt" {sampler} }}
}}
"""


def test_prototxt_annotated_data_resize_warp(ssd):
    import cv2

    net = _SSD_NET.format(interp="AREA", extra="emit_constraint { emit_type: CENTER }",
                          source=ssd / "det_xml_jpg", sampler="")
    layer = caffe_lmdb.from_prototxt(net, phase="test")
    t = layer.transform
    assert t.resize == (30, 36) and t.interp_mode == "AREA" and t.emit_constraint == "CENTER"
    db = layer.open()
    images, _, boxes = db.read([0, 1], transform=t, boxes=True)
    assert images.shape == (2, 3, 30, 36)
    # the image: cv::resize(img, (36, 30), INTER_AREA), then - mean_value
    decoded = db.read([0])[0][0].transpose(1, 2, 0)
    resized = cv2.resize(np.ascontiguousarray(decoded), (36, 30), interpolation=cv2.INTER_AREA)
    want = resized.transpose(2, 0, 1).astype(F) - np.array([104, 117, 123], F)[:, None, None]
    assert np.array_equal(images[0], want)
    # WARP leaves normalized boxes where they were (no crop, no mirror)
    assert _as_tuples(boxes[0]) == _expected_boxes(ssd, "det_xml_jpg")[0][2]
    pytest.importorskip("torch")
    images, boxes, labels = next(iter(layer.dataloader()))
    assert tuple(images.shape) == (4, 3, 30, 36) and len(boxes) == len(labels) == 4


@pytest.mark.parametrize("extra, sampler, interp, field", [
    ("distort_param { brightness_prob: 0.5 brightness_delta: 32 }", "", "LINEAR",
     "distort_param"),
    ("expand_param { prob: 0.5 max_expand_ratio: 4 }", "", "LINEAR", "expand_param"),
    ("noise_param { prob: 0.1 }", "", "LINEAR", "noise_param"),
    ("", "batch_sampler { max_sample: 1 max_trials: 1 }", "LINEAR", "batch_sampler"),
    ("", "", "LINEAR interp_mode: AREA", "2 interp_modes"),
])
def test_prototxt_unsupported_fields_refused(ssd, extra, sampler, interp, field):
    net = _SSD_NET.format(interp=interp, extra=extra, source=ssd / "det_xml_jpg",
                          sampler=sampler)
    with pytest.raises(PrototxtError, match=f"{field}.*not supported yet"):
        caffe_lmdb.from_prototxt(net, phase="test")


def test_prototxt_other_resize_mode_refused(ssd):
    net = _SSD_NET.format(interp="LINEAR", extra="", source=ssd / "det_xml_jpg", sampler="")
    net = net.replace("WARP", "FIT_SMALL_SIZE")
    with pytest.raises(PrototxtError, match="resize_mode FIT_SMALL_SIZE.*not supported yet"):
        caffe_lmdb.from_prototxt(net, phase="test")


def test_raw_record_of_another_size_refused_by_resize(ssd):
    db = caffe_lmdb.open(ssd / "det_txt_raw_32x32")
    t = caffe_lmdb.Transform(resize=(30, 30))
    with pytest.raises(caffe_lmdb.tools.transform.TransformError, match="encoded records only"):
        db.read([0], transform=t, boxes=True)
