"""Installing beside what users already have: the declared dependency ranges, and the package
working on protobuf runtimes across that range (each installed into a scratch folder that
shadows the test environment's protobuf in a subprocess)."""
import configparser
import re

import pytest
from conftest import REPO
from scratch_envs import run_with, scratch_install


def _requirements():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = [line.strip() for line in cfg["options"]["install_requires"].splitlines()]
    reqs = {}
    for line in lines:
        if line and not line.startswith("#"):
            name = re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower()
            reqs[name] = line[len(name):].split(";")[0].strip()
    return reqs


def _admits(spec, version):
    from packaging.specifiers import SpecifierSet

    return SpecifierSet(spec).contains(version, prereleases=False)


@pytest.mark.parametrize("name, version", [
    # Debian 12's python3-protobuf (the runtime of pycaffe there) reports 3.21.12
    ("protobuf", "3.21.12"), ("protobuf", "4.21.12"), ("protobuf", "5.29.6"),
    ("protobuf", "6.33.6"), ("protobuf", "7.36.2"),
    ("numpy", "1.24.2"), ("numpy", "1.26.4"), ("numpy", "2.4.6"),
    ("opencv-python-headless", "4.6.0.66"), ("opencv-python-headless", "4.11.0.86"),
    ("opencv-python-headless", "5.0.0.93"),
])
def test_install_requires_admit_what_users_have(name, version):
    """setup.cfg must not replace a dependency a user's environment (pycaffe's) already has."""
    spec = _requirements()[name]
    assert _admits(spec, version), f"{name}{spec} refuses {version}"


def test_build_does_not_pin_the_runtime():
    """The build compiles the descriptor with any grpcio-tools; nothing ties the runtime to
    the protoc of the build."""
    text = (REPO / "pyproject.toml").read_text()
    requires = re.search(r"^requires\s*=\s*\[(.*?)\]", text, re.M | re.S).group(1)
    assert "grpcio-tools" in requires
    assert "==" not in requires, requires


ROUNDTRIP = r"""
import sys
import numpy as np
import google.protobuf
import caffe_lmdb
assert google.protobuf.__version__ == sys.argv[1], (google.protobuf.__version__, sys.argv[1])
assert not [m for m in sys.modules if m.startswith("caffe_lmdb") and m.endswith("_pb2")]
arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
datum = caffe_lmdb.array_to_datum(arr, label=-5)
raw = datum.SerializeToString()
assert raw == caffe_lmdb.datum_bytes(2, 3, 4, data=arr.tobytes(), label=-5, encoded=False)
back, label = caffe_lmdb.decode(raw)
assert np.array_equal(back, arr) and label == -5
assert np.array_equal(caffe_lmdb.datum_to_array(caffe_lmdb.Datum.FromString(raw)), arr)
floats = caffe_lmdb.Datum(channels=1, height=1, width=2, float_data=[0.5, -2.0])
assert caffe_lmdb.decode(floats.SerializeToString())[0].tolist() == [[[0.5, -2.0]]]
mean = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 2, 2)
caffe_lmdb.write_mean(mean, sys.argv[2])
assert np.array_equal(caffe_lmdb.read_mean(sys.argv[2]), mean)
print("ok")
"""


@pytest.mark.parametrize("version", ["3.20.3", "4.21.12", "5.29.6", "6.33.6"])
def test_works_on_older_protobuf_runtimes(tmp_path_factory, tmp_path, version):
    """The shipped message classes work on every runtime of the range, not only the one the
    build's protoc belongs to (generated code of a recent protoc raises VersionError)."""
    folder = scratch_install(tmp_path_factory.getbasetemp() / "scratch",
                             f"protobuf=={version}")
    run = run_with([folder], ROUNDTRIP, version, tmp_path / "mean.binaryproto")
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_import_does_not_load_optional_or_heavy_modules():
    run = run_with([], "import sys, caffe_lmdb; print(sorted(m for m in ('cv2', 'torch', 'ray',"
                   " 'tqdm') if m in sys.modules))")
    assert run.returncode == 0 and run.stdout.strip() == "[]", (run.stdout, run.stderr)

