"""caffe_lmdb.torch.DatumDataset through torch's DataLoader, with 2 workers under fork and
spawn: every (image, label) pair checked against what Caffe's tools wrote."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from conftest import expected  # noqa: E402
from helpers import images_db, to_float, write_lmdb  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import caffe_lmdb  # noqa: E402
from caffe_lmdb.format.datum import datum_bytes  # noqa: E402
from caffe_lmdb.torch import DatumDataset  # noqa: E402


def test_import_caffe_lmdb_does_not_import_torch():
    code = "import sys, caffe_lmdb, caffe_lmdb.read.reader, caffe_lmdb.tools.features, caffe_lmdb.tools.dbinfo; " \
           "import caffe_lmdb.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataloader_two_workers_every_pair(fixtures, method):
    exp = expected(fixtures, "imageset_raw_32x32")
    by_pixels = {exp["array"][i].tobytes(): int(exp["labels"][i]) for i in range(24)}
    assert len(by_pixels) == 24  # every image differs: pixels identify the record
    ds = DatumDataset(fixtures / "imageset_raw_32x32")
    ds.db[0]  # the parent has the database open while the workers start
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=2,
                        multiprocessing_context=method,
                        generator=torch.Generator().manual_seed(0))
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        for image, label in zip(images.numpy(), labels.tolist()):
            assert by_pixels[image.tobytes()] == label
            seen.append(image.tobytes())
    assert sorted(seen) == sorted(by_pixels)


def test_dataloader_transform_and_options(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=23, shape=(3, 6, 5))
    ds = DatumDataset(path, transform=to_float, channel_order="RGB", layout="HWC")
    loader = DataLoader(ds, batch_size=4, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    got = torch.cat([x for x, _ in batches]).numpy()
    want = images[:, ::-1].transpose(0, 2, 3, 1).astype(np.float32) / 255
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(torch.cat([y for _, y in batches]).numpy(), labels)


def test_getitem_and_getitems_agree(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=9)
    ds = DatumDataset(path)
    assert len(ds) == 9 and "9 records" in repr(ds)
    batch = ds.__getitems__([8, 0, 3, -1])
    for (x, y), i in zip(batch, [8, 0, 3, 8]):
        np.testing.assert_array_equal(x.numpy(), images[i])
        assert y == labels[i]
        x1, y1 = ds[i]
        assert torch.equal(x1, x) and y1 == y
    with pytest.raises(IndexError):
        ds[9]


def _companion(tmp_path, n, missing=None):
    """A multi-target float LMDB with the same keys as images_db: targets (i, -i, 0.5)."""
    items = [(b"%08d" % i, datum_bytes(3, 1, 1, float_data=[i, -i, 0.5], label=0))
             for i in range(n) if i != missing]
    if missing is not None:
        items.append((b"x_extra", datum_bytes(3, 1, 1, float_data=[0, 0, 0], label=0)))
    return write_lmdb(tmp_path / "targets", items)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_companion_zipped_by_key(tmp_path, method):
    path, images, labels = images_db(tmp_path / "db", n=11)
    ds = DatumDataset(path, companion=_companion(tmp_path, 11))
    loader = DataLoader(ds, batch_size=3, shuffle=True, num_workers=2,
                        multiprocessing_context=method)
    for x, t in loader:
        assert t.dtype == torch.float32 and t.shape[1:] == (3,)
        for image, target in zip(x.numpy(), t.numpy()):
            i = int(target[0])
            np.testing.assert_array_equal(image, images[i])
            np.testing.assert_array_equal(target, [i, -i, 0.5])
    x, label, t = DatumDataset(path, companion=ds.companion, keep_label=True)[4]
    assert label == labels[4] and t.tolist() == [4, -4, 0.5]


def test_companion_errors(tmp_path):
    path, _, _ = images_db(tmp_path / "db", n=5)
    short = write_lmdb(tmp_path / "short", [(b"%08d" % 0, datum_bytes(1, 1, 1, float_data=[0]))])
    with pytest.raises(ValueError, match="one record per image"):
        DatumDataset(path, companion=short)
    ds = DatumDataset(path, companion=_companion(tmp_path, 5, missing=2))
    with pytest.raises(KeyError, match="00000002"):
        ds[2]
    with pytest.raises(KeyError, match="00000002"):
        ds.__getitems__([1, 2])


def test_numpy_mode_and_reader_object(tmp_path):
    path, images, labels = images_db(tmp_path / "db", n=4)
    ds = DatumDataset(caffe_lmdb.open(path, dtype="float32"), to_tensor=False,
                      target_transform=lambda y: y * 10)
    x, y = ds[1]
    assert isinstance(x, np.ndarray) and x.dtype == np.float32 and y == labels[1] * 10
    with pytest.raises(ValueError, match="reader options"):
        DatumDataset(caffe_lmdb.open(path), layout="HWC")
