"""caffe_lmdb.Transform (Caffe's transform_param) and from_prototxt.

* The four DataTransformer fixtures (what real Caffe's Data layer produced in TEST) reproduced bit
  for bit through Transform, from_prototxt, DatumDB.batches(transform=) and DatumDataset.
* TRAIN draws checked against an MT19937 written here from its definition.
* Variable-size encoded databases through a DataLoader with fork and spawn workers.
"""
import os
import pickle
import warnings

import cv2
import numpy as np
import pytest

import caffe_lmdb
from caffe_lmdb import ShapeMismatchError, Transform
from caffe_lmdb.format.datum import array_to_datum_bytes, datum_bytes
from caffe_lmdb.tools.prototxt import PathFallbackWarning, PrototxtError
from caffe_lmdb.tools.transform import TransformError, caffe_mt19937

from conftest import expected, read_lmdb
from helpers import write_lmdb

# ---------------------------------------------------------------------------------------------
# MT19937 from its definition (Matsumoto & Nishimura 1998, init_genrand / genrand_int32)
# ---------------------------------------------------------------------------------------------


class PyMT19937:
    N, M = 624, 397

    def __init__(self, seed):
        self.mt = [0] * self.N
        self.mt[0] = seed & 0xFFFFFFFF
        for i in range(1, self.N):
            prev = self.mt[i - 1]
            self.mt[i] = (1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF
        self.index = self.N

    def _twist(self):
        mt = self.mt
        for i in range(self.N):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % self.N] & 0x7FFFFFFF)
            mt[i] = mt[(i + self.M) % self.N] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self.index = 0

    def __call__(self):
        if self.index >= self.N:
            self._twist()
        y = self.mt[self.index]
        self.index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y


def test_reference_mt19937_known_value():
    # the 10000th output of mt19937 default-seeded (5489) is 4123659995 (C++11 [rand.predef])
    rng = PyMT19937(5489)
    for _ in range(9999):
        rng()
    assert rng() == 4123659995


@pytest.mark.parametrize("seed", [0, 1, 1701, 5489, 2**32 - 1])
def test_caffe_mt19937_is_boost_mt19937(seed):
    ref = PyMT19937(seed)
    got = caffe_mt19937(seed).random_raw(1300)  # crosses two twists
    assert got.tolist() == [ref() for _ in range(1300)]


def test_seed_range():
    with pytest.raises(ValueError, match="32-bit"):
        Transform(seed=2**32)
    with pytest.raises(ValueError, match="32-bit"):
        Transform(seed=-1)


# ---------------------------------------------------------------------------------------------
# The four Caffe fixtures, bit for bit
# ---------------------------------------------------------------------------------------------

CASES = {
    "raw32_crop24_meanfile": ("imageset_raw_32x32", 4, dict(
        crop_size=24, mean_file="mean_raw_32x32.binaryproto", scale=0.00390625)),
    "raw32_crop28_meanvalues": ("imageset_raw_32x32", 6, dict(
        crop_size=28, mean_value=[104, 117, 123])),
    "encoded_crop16_color_mean128": ("imageset_encoded_passthrough", 8, dict(
        crop_size=16, force_color=True, mean_value=128, scale=0.5)),
    "gray24x20_crop11_scale2": ("imageset_gray_24x20", 3, dict(crop_size=11, scale=2.0)),
}


def caffe_blob(fixtures, case):
    """The `data` blob Caffe wrote, as float32 (24, C, h, w), checked against the LMDB."""
    arr = expected(fixtures, f"transform/{case}_data_lmdb")["array"]
    stored = caffe_lmdb.open(fixtures / "transform" / f"{case}_data_lmdb")
    assert np.array_equal(stored.read(range(len(stored)))[0].view(np.uint32),
                          arr.view(np.uint32))
    return arr


def caffe_labels(fixtures, case):
    return expected(fixtures, f"transform/{case}_label_lmdb")["array"].reshape(-1)


def same_bits(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_through_transform(fixtures, case):
    source, _batch, params = CASES[case]
    params = dict(params)
    if "mean_file" in params:
        params["mean_file"] = fixtures / params["mean_file"]
    t = Transform(**params)
    values = [v for _, v in read_lmdb(fixtures / source)]
    images, labels = t.transform_values(values)
    assert same_bits(images, caffe_blob(fixtures, case))
    np.testing.assert_array_equal(labels, caffe_labels(fixtures, case))
    # one record at a time, from bytes and (raw sources) from the decoded array
    assert same_bits(t(values[5]), caffe_blob(fixtures, case)[5])
    if source != "imageset_encoded_passthrough":
        db = caffe_lmdb.open(fixtures / source)
        assert same_bits(t(db[7][0]), caffe_blob(fixtures, case)[7])
        assert same_bits(t([db[i][0] for i in range(24)]), caffe_blob(fixtures, case))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_through_from_prototxt(fixtures, case, monkeypatch):
    monkeypatch.chdir(fixtures)  # Caffe ran from the fixtures root
    layer = caffe_lmdb.from_prototxt(f"transform/{case}.prototxt", phase="test")
    source, batch, _params = CASES[case]
    assert layer.batch_size == batch and layer.backend == "LMDB" and layer.name == "data"
    assert layer.source == os.path.join(str(fixtures), source)
    assert layer.include == [{"phase": "TEST"}] and layer.tops == ["data", "label"]
    assert "working directory" in layer.paths["source"]
    batches = list(layer)
    assert [len(x) for x, _ in batches] == [batch] * (24 // batch)
    assert same_bits(np.concatenate([x for x, _ in batches]), caffe_blob(fixtures, case))
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]),
                                  caffe_labels(fixtures, case))
    t = Transform.from_prototxt(fixtures / "transform" / f"{case}.prototxt", phase="test",
                                root=fixtures)
    assert same_bits(t(caffe_lmdb.open(fixtures / source).read(range(24))[0])
                     if source != "imageset_encoded_passthrough" else
                     t.transform_values([v for _, v in read_lmdb(fixtures / source)])[0],
                     caffe_blob(fixtures, case))


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_through_batches_and_read(fixtures, case):
    source, batch, params = CASES[case]
    params = dict(params)
    if "mean_file" in params:
        params["mean_file"] = fixtures / params["mean_file"]
    db = caffe_lmdb.open(fixtures / source)
    t = Transform(**params)
    blob = caffe_blob(fixtures, case)
    got = [x.copy() for x, _ in db.batches(batch, transform=t)]
    assert same_bits(np.concatenate(got), blob)
    order = [17, 3, 3, 0, 23]
    images, labels = db.read(order, transform=t)
    assert same_bits(images, blob[order])
    np.testing.assert_array_equal(labels, caffe_labels(fixtures, case)[order])
    shuffled = np.concatenate([x.copy() for x, _ in db.batches(
        5, transform=t, shuffle=True, seed=3)])
    perm = np.random.default_rng([3, 0]).permutation(24)
    assert same_bits(shuffled, blob[perm])


@pytest.mark.parametrize("case", sorted(CASES))
def test_fixture_through_datumdataset(fixtures, case):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset

    source, batch, params = CASES[case]
    params = dict(params)
    if "mean_file" in params:
        params["mean_file"] = fixtures / params["mean_file"]
    ds = DatumDataset(fixtures / source, transform=Transform(**params))
    blob = caffe_blob(fixtures, case)
    image, label = ds[9]
    assert isinstance(image, torch.Tensor) and same_bits(image.numpy(), blob[9])
    assert label == caffe_labels(fixtures, case)[9]
    loader = DataLoader(ds, batch_size=batch)
    got = torch.cat([x for x, _ in loader]).numpy()
    assert same_bits(got, blob)


def test_from_prototxt_torch_counterpart(fixtures):
    torch = pytest.importorskip("torch")
    import caffe_lmdb.torch as ct

    loader = ct.from_prototxt(fixtures / "transform" / "raw32_crop24_meanfile.prototxt",
                              phase="test", root=fixtures)
    batches = list(loader)
    assert [len(x) for x, _ in batches] == [4] * 6
    assert same_bits(torch.cat([x for x, _ in batches]).numpy(),
                     caffe_blob(fixtures, "raw32_crop24_meanfile"))


# ---------------------------------------------------------------------------------------------
# The arithmetic on inputs the fixtures do not cover, against Caffe's loop written out
# ---------------------------------------------------------------------------------------------


def caffe_loop(x, crop, mirror, h_off, w_off, mean=None, mean_values=None, scale=1.0):
    """DataTransformer::Transform(datum) element by element, in float32."""
    c_n, h_n, w_n = x.shape
    ch, cw = (crop, crop) if crop else (h_n, w_n)
    out = np.empty(c_n * ch * cw, np.float32)
    flat = x.reshape(-1)
    mflat = None if mean is None else np.asarray(mean, np.float32).reshape(-1)
    mv = None if mean_values is None else [np.float32(v) for v in mean_values]
    if mv is not None and len(mv) == 1:
        mv = mv * c_n
    scale = np.float32(scale)
    for c in range(c_n):
        for h in range(ch):
            for w in range(cw):
                data_index = (c * h_n + h_off + h) * w_n + w_off + w
                top = (c * ch + h) * cw + ((cw - 1 - w) if mirror else w)
                e = np.float32(flat[data_index])
                if mflat is not None:
                    out[top] = (e - mflat[data_index]) * scale
                elif mv is not None:
                    out[top] = (e - mv[c]) * scale
                else:
                    out[top] = e * scale
    return out.reshape(c_n, ch, cw)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_arithmetic_matches_caffe_loop(dtype):
    rng = np.random.default_rng(7)
    for shape, crop in [((3, 9, 13), 5), ((1, 7, 6), 6), ((4, 5, 5), 0), ((3, 10, 8), 3)]:
        x = rng.integers(0, 256, shape).astype(dtype)
        if dtype == np.float32:
            x += rng.random(shape, dtype=np.float32)
        mean = rng.random(shape, dtype=np.float32) * 255
        h_off = (shape[1] - crop) // 2 if crop else 0
        w_off = (shape[2] - crop) // 2 if crop else 0
        for kwargs, ref in [
            (dict(mean_file=mean, scale=0.37), dict(mean=mean, scale=0.37)),
            (dict(mean_value=[11.5] * shape[0], scale=3.0), dict(mean_values=[11.5] * shape[0],
                                                               scale=3.0)),
            (dict(mean_value=99.25), dict(mean_values=[99.25])),
            (dict(scale=0.00390625), dict(scale=0.00390625)),
            (dict(), dict()),
        ]:
            got = Transform(crop_size=crop, **kwargs)(x)
            assert same_bits(got, caffe_loop(x, crop, False, h_off, w_off, **ref)), kwargs


def test_mirror_uses_the_source_pixel_mean():
    """A mirrored record keeps the mean of its source pixel (Caffe indexes the mean with the
    data index): the output is the flip of the unmirrored output, not x flipped minus mean."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (3, 12, 11)).astype(np.uint8)
    mean = rng.random((3, 12, 11), dtype=np.float32) * 200
    t = Transform(crop_size=7, mirror=True, mean_file=mean, scale=0.5, phase="test", seed=11)
    ref = PyMT19937(11)
    for _ in range(6):
        mirror = ref() % 2 == 1
        got = t(x)
        want = caffe_loop(x, 7, mirror, 2, 2, mean=mean, scale=0.5)
        assert same_bits(got, want)
    # the same as HWC-decoded images take (the OpenCV path)
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
    t2 = Transform(crop_size=7, mirror=True, mean_file=mean, scale=0.5, phase="test", seed=11)
    t3 = Transform(crop_size=7, mirror=True, mean_file=mean, scale=0.5, phase="test", seed=11)
    for _ in range(6):
        assert same_bits(t2(hwc.transpose(2, 0, 1)), t3(x))



@pytest.mark.parametrize("layout", ["chw", "hwc"])
def test_mirrored_records_match_caffe_loop_for_every_kind_of_mean(layout):
    """uint8 planes are mirrored by OpenCV plane by plane (raw records) or as a whole decoded
    image (HWC): both must give Caffe's element loop, bit for bit, with or without a mean."""
    rng = np.random.default_rng(5)
    for shape, crop in [((3, 12, 11), 7), ((1, 9, 14), 0), ((4, 8, 8), 5)]:
        x = rng.integers(0, 256, shape).astype(np.uint8)
        src = x if layout == "chw" else np.ascontiguousarray(x.transpose(1, 2, 0)).transpose(2, 0, 1)
        mean = rng.random(shape, dtype=np.float32) * 255
        for kwargs, ref in [
            (dict(mean_file=mean, scale=0.37), dict(mean=mean, scale=0.37)),
            (dict(mean_value=[3.5 * (k + 1) for k in range(shape[0])], scale=0.017),
             dict(mean_values=[3.5 * (k + 1) for k in range(shape[0])], scale=0.017)),
            (dict(mean_value=104), dict(mean_values=[104])),
            (dict(scale=0.00390625), dict(scale=0.00390625)),
        ]:
            t = Transform(crop_size=crop, mirror=True, phase="test", seed=21, **kwargs)
            draws = PyMT19937(21)
            h_off = (shape[1] - crop) // 2 if crop else 0
            w_off = (shape[2] - crop) // 2 if crop else 0
            seen = set()
            for _ in range(6):
                mirror = draws() % 2 == 1
                seen.add(mirror)
                want = caffe_loop(x, crop, mirror, h_off, w_off, **ref)
                assert same_bits(t(src), want), (shape, kwargs, mirror)
            assert seen == {True, False}


# ---------------------------------------------------------------------------------------------
# TRAIN: the draws
# ---------------------------------------------------------------------------------------------


def position_record(h, w):
    """A float record whose value at (c, y, x) is c * 10000 + y * 100 + x: a crop tells its
    offset and whether it was mirrored."""
    c, y, x = np.mgrid[0:3, 0:h, 0:w]
    return (c * 10000 + y * 100 + x).astype(np.float32)


def read_offsets(out):
    y0, x_first, x_last = int(out[0, 0, 0]) // 100, int(out[0, 0, 0]) % 100, \
        int(out[0, 0, -1]) % 100
    mirror = x_first > x_last
    return y0, min(x_first, x_last), mirror


def test_train_draw_order_against_reference_mt():
    """Per record: mirror = rng() % 2, then h_off = rng() % (H - crop + 1), then
    w_off = rng() % (W - crop + 1), with each record's own size."""
    sizes = [(9, 12), (15, 8), (8, 8), (30, 11), (10, 20)] * 8
    records = [position_record(h, w) for h, w in sizes]
    t = Transform(crop_size=8, mirror=True, phase="train", seed=1234)
    out = t(records)  # one call: the whole batch's draws taken in record order
    ref = PyMT19937(1234)
    for (h, w), o in zip(sizes, out, strict=True):
        mirror = ref() % 2 == 1
        h_off, w_off = ref() % (h - 8 + 1), ref() % (w - 8 + 1)
        assert read_offsets(o) == (h_off, w_off, mirror)
    # the stream goes on with the next call, as Caffe's transformer does
    mirror = ref() % 2 == 1
    h_off, w_off = ref() % 2, ref() % 5
    assert read_offsets(t(position_record(9, 12))) == (h_off, w_off, mirror)


def test_train_without_mirror_draws_only_offsets_and_test_mirror_draws_one():
    t = Transform(crop_size=4, phase="train", seed=99)
    ref = PyMT19937(99)
    for _ in range(20):
        h_off, w_off = ref() % 7, ref() % 3
        assert read_offsets(t(position_record(10, 6))) == (h_off, w_off, False)
    t = Transform(crop_size=4, mirror=True, phase="test", seed=5)
    ref = PyMT19937(5)
    for _ in range(20):
        assert read_offsets(t(position_record(10, 6))) == (3, 1, ref() % 2 == 1)
    assert Transform(crop_size=4, phase="test").draws_per_record == 0


def test_train_crops_cover_every_offset_and_mirror_about_half(tmp_path):
    h, w, crop = 12, 10, 8
    n = 1500
    rec = array_to_datum_bytes((position_record(h, w) % 256).astype(np.uint8), 0)
    write_lmdb(tmp_path / "db", [(b"%08d" % i, rec) for i in range(n)])
    db = caffe_lmdb.open(tmp_path / "db")
    t = Transform(crop_size=crop, mirror=True, phase="train", seed=2024)
    seen, mirrors = set(), 0
    for images, _ in db.batches(64, transform=t):
        for o in images:  # values (y * 100 + x) % 256 of the source position
            first, last = int(o[0, 0, 0]), int(o[0, 0, -1])
            # x positions differ by crop - 1 between first and last column
            mirror = (first - last) % 256 == crop - 1
            mirrors += mirror
            base = last if mirror else first  # value at (h_off, w_off)
            offsets = [(yy, xx) for yy in range(h - crop + 1) for xx in range(w - crop + 1)
                       if (yy * 100 + xx) % 256 == base]
            assert len(offsets) == 1
            seen.add(offsets[0])
    assert seen == {(yy, xx) for yy in range(h - crop + 1) for xx in range(w - crop + 1)}
    assert 0.45 < mirrors / n < 0.55


def test_same_seed_same_batches_next_epoch_other_crops(fixtures):
    db = caffe_lmdb.open(fixtures / "imageset_encoded_passthrough")

    def run(t):
        return np.concatenate([x.copy() for x, _ in db.batches(6, transform=t)])

    def make():
        return Transform(crop_size=20, mirror=True, mean_value=(1, 2, 3), phase="train",
                         force_color=True, seed=77)

    a, b = make(), make()
    first = run(a)
    assert same_bits(first, run(b))
    second = run(a)  # the stream went on: other crops and mirrors
    assert not np.array_equal(first, second)
    assert same_bits(second, run(b))
    c = make()
    c.set_epoch(0)
    assert same_bits(run(c), first)  # epoch 0 is the seed's own (Caffe's) stream
    c.set_epoch(1)
    e1 = run(c)
    c.set_epoch(1)
    assert same_bits(run(c), e1) and not np.array_equal(e1, first)
    d = make()
    d.seed = 78
    d.set_epoch(0)
    assert not np.array_equal(run(d), first)


def test_pickle_keeps_the_stream():
    t = Transform(crop_size=3, mirror=True, phase="train", seed=8)
    t(position_record(9, 9))
    u = pickle.loads(pickle.dumps(t))
    for _ in range(5):
        assert same_bits(t(position_record(9, 9)), u(position_record(9, 9)))


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_variable_sizes_without_equalizing_transform_name_both_keys(fixtures):
    db = caffe_lmdb.open(fixtures / "imageset_raw_native")
    with pytest.raises(ShapeMismatchError) as err:
        db.read([0, 1])
    msg = str(err.value)
    assert "00000000_cat/img_000.jpg" in msg and "00000001_dog/img_001.png" in msg
    assert "crop_size" in msg and "batch_size=1" in msg
    enc = caffe_lmdb.open(fixtures / "imageset_encoded_passthrough")
    for call in (lambda: next(enc.batches(4)), lambda: enc.read([0, 1], transform=np.asarray),
                 lambda: next(enc.batches(4, transform=Transform()))):
        with pytest.raises(ShapeMismatchError) as err:
            call()
        msg = str(err.value)
        assert "00000000_cat/img_000.jpg" in msg and "00000001_dog/img_001.png" in msg
        assert "crop_size" in msg


def test_gray_among_colour_needs_force_color(fixtures):
    exp = expected(fixtures, "imageset_encoded_passthrough")
    gray = [i for i in range(24) if exp["native_channels"][i] == 1]
    color = [i for i in range(24) if exp["native_channels"][i] == 3]
    db = caffe_lmdb.open(fixtures / "imageset_encoded_passthrough")
    with pytest.raises(ShapeMismatchError, match="force_color"):
        db.read([color[0], gray[0]], transform=Transform(crop_size=16))
    images, _ = db.read([color[0], gray[0]], transform=Transform(crop_size=16,
                                                                force_color=True))
    assert images.shape == (2, 3, 16, 16)
    images, _ = db.read(gray[:2], transform=Transform(crop_size=16))
    assert images.shape == (2, 1, 16, 16)  # natively decoded, as Caffe's Data layer


def test_caffe_checks(fixtures):
    db = caffe_lmdb.open(fixtures / "imageset_raw_32x32")
    key3 = db.keys()[3].decode()
    with pytest.raises(TransformError, match=f"'{key3}'.*smaller than crop_size 33"):
        db.read([3], transform=Transform(crop_size=33))
    with pytest.raises(TransformError, match="mean file"):
        db.read([0], transform=Transform(mean_file=np.zeros((3, 30, 32), np.float32)))
    with pytest.raises(TransformError, match="1 mean_value or as many as channels"):
        db.read([0], transform=Transform(mean_value=[1, 2]))
    with pytest.raises(ValueError, match="force_color and force_gray"):
        Transform(force_color=True, force_gray=True)
    with pytest.raises(ValueError, match="mean_file and mean_value"):
        Transform(mean_file=fixtures / "mean_raw_32x32.binaryproto", mean_value=1)
    with pytest.raises(ValueError, match="phase"):
        Transform(phase="val")
    with pytest.warns(UserWarning, match="encoded records only"):
        db.read([0], transform=Transform(force_gray=True))


def test_sixteen_bit_png_is_refused(tmp_path):
    ok, png = cv2.imencode(".png", np.full((5, 6), 40000, np.uint16))
    assert ok
    write_lmdb(tmp_path / "db", [(b"a16", datum_bytes(data=png.tobytes(), label=1,
                                                      encoded=True))])
    # the reader refuses it before the transform sees it (16-bit images never reach a batch)
    with pytest.raises((TransformError, caffe_lmdb.DatumDecodeError), match="'a16'.*8-bit"):
        caffe_lmdb.open(tmp_path / "db").read([0], transform=Transform())


# ---------------------------------------------------------------------------------------------
# A variable-size encoded database through a DataLoader (fork and spawn)
# ---------------------------------------------------------------------------------------------


def variable_jpeg_db(path, n=41):
    """Encoded JPEG/PNG records of sizes 20..59 px; returns (path, {label: decoded BGR CHW})."""
    rng = np.random.default_rng(5)
    items, truth = [], {}
    for i in range(n):
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ext = ".png" if i % 3 == 0 else ".jpg"
        ok, blob = cv2.imencode(ext, img)
        assert ok
        label = 1000 + 7 * i
        items.append((b"%08d_img_%d%s" % (i, i, ext.encode()),
                      datum_bytes(data=blob.tobytes(), label=label, encoded=True)))
        truth[label] = cv2.imdecode(blob, cv2.IMREAD_COLOR).transpose(2, 0, 1)
    write_lmdb(path, items)
    return path, truth


def resize_to_16(image):
    """A user's own transform: a (C, H, W) tensor resized to 16 x 16 (module level: spawn
    workers import it)."""
    arr = image.numpy().transpose(1, 2, 0)
    return cv2.resize(arr, (16, 16), interpolation=cv2.INTER_AREA).transpose(2, 0, 1).copy()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_variable_sizes_every_pair(tmp_path, method):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset, collate

    path, truth = variable_jpeg_db(tmp_path / "db")
    t = Transform(crop_size=18, mean_value=(10, 20, 30), scale=0.5, phase="test")
    cases = [(t, {k: t(v) for k, v in truth.items()}, collate)]  # batches in shared memory
    if method == "fork":  # (spawn workers start slowly: one loader is enough there)
        cases.append((resize_to_16, {k: resize_to_16(torch.from_numpy(v))
                                     for k, v in truth.items()}, None))
        cases.append((t, cases[0][1], None))  # default_collate
    for transform, want, collate_fn in cases:
        ds = DatumDataset(path, transform=transform)
        ds.db[0]  # open in the parent before the workers start
        loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2,
                            multiprocessing_context=method, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(1))
        seen = []
        for images, labels in loader:
            assert len(images) <= 8
            for image, label in zip(images.numpy(), labels.tolist(), strict=True):
                assert np.array_equal(image, want[label]), label
                seen.append(label)
        assert sorted(seen) == sorted(truth)


def test_dataloader_workers_draw_their_own_streams(tmp_path):
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from caffe_lmdb.torch import DatumDataset

    rec = array_to_datum_bytes((position_record(16, 16) % 256).astype(np.uint8), 0)
    write_lmdb(tmp_path / "db", [(b"%08d" % i, rec) for i in range(64)])

    def epoch(ds, e):
        ds.set_epoch(e)
        loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork")
        return torch.cat([x for x, _ in loader]).numpy()

    ds = DatumDataset(tmp_path / "db", transform=Transform(crop_size=8, mirror=True,
                                                           phase="train", seed=3))
    e0 = epoch(ds, 0)
    assert np.array_equal(e0, epoch(ds, 0))  # reproducible from (seed, epoch, worker)
    assert not np.array_equal(e0, epoch(ds, 1))
    # the two workers (batches alternate between them) do not repeat each other's crops
    assert not np.array_equal(e0[0:8], e0[8:16])


def test_generic_transform_of_mixed_sizes_names_both_keys(tmp_path):
    pytest.importorskip("torch")
    from caffe_lmdb.torch import DatumDataset

    path, _truth = variable_jpeg_db(tmp_path / "db", n=4)
    ds = DatumDataset(path, transform=lambda x: x)
    with pytest.raises(ShapeMismatchError) as err:
        ds.__getitems__([0, 1])
    assert "00000000_img_0.png" in str(err.value) and "00000001_img_1.jpg" in str(err.value)
    ds = DatumDataset(path, transform=lambda x: x, same_shape=False)
    assert len(ds.__getitems__([0, 1])) == 2


# ---------------------------------------------------------------------------------------------
# from_prototxt: Caffe's layer filtering and paths
# ---------------------------------------------------------------------------------------------

NET = """
name: "net"  # a comment
state { level: 1 stage: "deploy" }
layer {
  name: "train_data" type: "Data" top: "data" top: "label"
  include { phase: TRAIN }
  transform_param { mirror: true crop_size: 20 mean_value: 1 mean_value: 2 mean_value: 3 }
  data_param { source: "SRC" batch_size: 5 backend: LMDB rand_skip: 7 }
}
layer {
  name: "test_data" type: "Data" top: "data" top: "label"
  include { phase: TEST not_stage: "deploy" }
  transform_param { crop_size: 16 scale: 0.25 force_color: true }
  data_param { source: "SRC" batch_size: 3 backend: LMDB }
}
layer {
  name: "test_data_deploy" type: "Data" top: "data" top: "label"
  include { phase: TEST stage: "deploy" min_level: 1 }
  data_param { source: "SRC" batch_size: 2 }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 } convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "xavier" } }
}
layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_from_prototxt_rules_and_fields(fixtures):
    src = str(fixtures / "imageset_encoded_passthrough")
    text = NET.replace("SRC", src)
    train = caffe_lmdb.from_prototxt(text, phase="train", seed=4)
    assert (train.name, train.batch_size, train.rand_skip, train.phase) == \
        ("train_data", 5, 7, "train")
    t = train.transform
    assert (t.crop_size, t.mirror, t.mean_value, t.phase, t.seed) == \
        (20, True, [1.0, 2.0, 3.0], "train", 4)
    assert train.paths["source"].endswith("(absolute)")
    # the net's own state (level 1, stage deploy) selects the deploy layer in TEST ...
    deploy = caffe_lmdb.from_prototxt(text, phase="test")
    assert deploy.name == "test_data_deploy" and deploy.backend == "LEVELDB"
    with pytest.raises(caffe_lmdb.NotADatumDBError, match="backend: LMDB"):
        deploy.open()
    # ... and other stages / levels select the other
    test = caffe_lmdb.from_prototxt(text, phase="test", stages=[])
    assert test.name == "test_data" and test.include == [{"phase": "TEST",
                                                          "not_stage": ["deploy"]}]
    assert test.transform.force_color and test.transform.scale == 0.25
    images, labels = next(iter(test))
    assert images.shape == (3, 3, 16, 16)
    with pytest.raises(PrototxtError, match="no Data layer in phase TEST"):
        caffe_lmdb.from_prototxt(text, phase="test", stages=["deploy"], level=0)
    assert caffe_lmdb.from_prototxt(text, phase="test", layer="test_data",
                                    stages=["x"]).name == "test_data"
    with pytest.raises(PrototxtError, match="not part of the net in phase TRAIN"):
        caffe_lmdb.from_prototxt(text, phase="train", layer="test_data")
    with pytest.raises(PrototxtError, match="'Convolution' layer"):
        caffe_lmdb.from_prototxt(text, phase="train", layer="conv1")


def test_from_prototxt_bad_files(tmp_path, fixtures):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer {\n  name: "d" type: "Data"\n  data_param { batch_size: "x" }\n}\n')
    with pytest.raises(PrototxtError, match=r"bad.prototxt:3:"):
        caffe_lmdb.from_prototxt(bad)
    v1 = tmp_path / "v1.prototxt"
    v1.write_text('layers { name: "d" type: DATA data_param { source: "x" } }\n')
    with pytest.raises(PrototxtError, match="V1"):
        caffe_lmdb.from_prototxt(v1)
    both = tmp_path / "both.prototxt"
    both.write_text('layer { name: "d" type: "Data" include { phase: TRAIN } '
                    'exclude { phase: TEST } data_param { source: "x" batch_size: 1 } }\n')
    with pytest.raises(PrototxtError, match="both include and exclude"):
        caffe_lmdb.from_prototxt(both)
    two = tmp_path / "two.prototxt"
    two.write_text('layer { name: "a" type: "Data" data_param { source: "x" batch_size: 1 } }\n'
                   'layer { name: "b" type: "Data" data_param { source: "x" batch_size: 1 } }\n')
    with pytest.raises(PrototxtError, match="pick one with layer="):
        caffe_lmdb.from_prototxt(two)
    img = tmp_path / "img.prototxt"
    img.write_text('layer { name: "i" type: "ImageData" image_data_param { source: "l" } }\n')
    with pytest.raises(PrototxtError, match="'i' \\(ImageData\\)"):
        caffe_lmdb.from_prototxt(img)
    missing = tmp_path / "missing.prototxt"
    missing.write_text('layer { name: "d" type: "Data" '
                       'data_param { source: "nowhere_lmdb" batch_size: 1 } }\n')
    with pytest.raises(PrototxtError, match="'nowhere_lmdb'.*working directory.*prototxt"):
        caffe_lmdb.from_prototxt(missing)
    with pytest.raises(PrototxtError, match="cannot read"):
        caffe_lmdb.from_prototxt(tmp_path / "absent.prototxt")


def test_relative_paths_fall_back_to_the_prototxt_folder(tmp_path, fixtures, monkeypatch):
    net = tmp_path / "net"
    net.mkdir()
    os.symlink(fixtures / "imageset_raw_32x32", net / "train_lmdb")
    os.symlink(fixtures / "mean_raw_32x32.binaryproto", net / "mean.binaryproto")
    proto = net / "train_val.prototxt"
    proto.write_text('layer { name: "d" type: "Data" top: "data" top: "label"\n'
                     '  transform_param { mean_file: "mean.binaryproto" crop_size: 24 '
                     'scale: 0.00390625 }\n'
                     '  data_param { source: "train_lmdb" batch_size: 4 backend: LMDB '
                     'mean_file: "ignored" } }\n')
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = caffe_lmdb.from_prototxt(proto, phase="test")
    kinds = {type(w.message) for w in caught}
    assert PathFallbackWarning in kinds
    assert any("deprecated" in str(w.message) for w in caught)
    assert "prototxt's folder" in layer.paths["source"]
    assert "prototxt's folder" in layer.paths["mean_file"]
    assert same_bits(np.concatenate([x for x, _ in layer]),
                     caffe_blob(fixtures, "raw32_crop24_meanfile"))
    monkeypatch.chdir(net)  # where Caffe would run: no fallback
    with pytest.warns(UserWarning, match="deprecated"):
        layer = caffe_lmdb.from_prototxt("train_val.prototxt", phase="train")
    assert "working directory" in layer.paths["source"]
