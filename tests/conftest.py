"""Shared test helpers: where the Caffe-made fixtures are, and how to read them.

The fixtures live in ``../shared/fixtures`` beside the repository (or $CAFFE_LMDB_FIXTURES).
Tests that need them skip, with the reason, when they are absent (a user's clone); with
CAFFE_LMDB_REQUIRE_FIXTURES=1 (set by .ci/run) a missing fixture is an error instead, so it can
never turn into a silent pass.
"""
import os
import pathlib

import lmdb
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = pathlib.Path(os.environ.get("CAFFE_LMDB_FIXTURES", REPO.parent / "shared" / "fixtures"))


def _require_fixtures():
    if FIXTURES.is_dir():
        return FIXTURES
    reason = f"Caffe fixtures not found at {FIXTURES} (set CAFFE_LMDB_FIXTURES)"
    if os.environ.get("CAFFE_LMDB_REQUIRE_FIXTURES") == "1":
        pytest.fail(reason + "; CAFFE_LMDB_REQUIRE_FIXTURES=1 makes this an error")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fixtures():
    """Path of the fixtures folder (skips, or fails in CI, when absent)."""
    return _require_fixtures()


def read_lmdb(path):
    """All (key, value) pairs of an LMDB, in key order, opened read-only without a lock file."""
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def expected(fixtures_dir, name):
    """The expected/<name>.npz produced by the real caffe_pb2 from a fixture LMDB."""
    return np.load(fixtures_dir / "expected" / f"{name}.npz", allow_pickle=True)


LIST_FILE_FLAGS = {
    # fixture: the convert_imageset flags that made it, as encode_image keywords
    "imageset_raw_32x32": dict(resize=(32, 32)),
    "imageset_gray_24x20": dict(gray=True, resize=(24, 20)),
    "imageset_raw_native": dict(),
    "imageset_encoded_passthrough": dict(encode=True),
    "imageset_encoded_png_32x32": dict(encode="png", resize=(32, 32)),
    "imageset_encoded_jpg": dict(encode="jpg"),
}

LMDB_FIXTURES = [
    "cifar10_test_head_lmdb", "cifar10_train_sample_lmdb", "features_data_lmdb",
    "features_ip1_lmdb", "features_label_lmdb", "features_pool1_lmdb", "imageset_encoded_jpg",
    "imageset_encoded_passthrough", "imageset_encoded_png_32x32", "imageset_gray_24x20",
    "imageset_raw_32x32", "imageset_raw_native", "mnist_lmdb",
]
