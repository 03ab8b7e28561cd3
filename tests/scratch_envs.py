"""Other releases of a dependency, for the tests of the supported ranges: installed with pip
into a scratch folder (``pip install --target``) and put first on ``PYTHONPATH`` of a
subprocess, so that they shadow the release of the test environment. Tests that need one skip,
saying why, when pip cannot fetch it (no network, no wheel for this Python)."""
import os
import subprocess
import sys

import pytest
from conftest import REPO

_CACHE: dict = {}


def scratch_install(tmp_root, *requirements):
    """A folder holding ``requirements`` (wheels only, no dependencies), or a pytest skip."""
    key = requirements
    if key in _CACHE:
        return _CACHE[key]
    target = tmp_root / ("_".join(r.replace("=", "").replace("<", "") for r in requirements))
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--only-binary=:all:", "--target", str(target), *requirements],
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        _CACHE[key] = None
    else:
        _CACHE[key] = target
    if _CACHE[key] is None:
        pytest.skip(f"pip could not install {' '.join(requirements)} for Python "
                    f"{sys.version_info[0]}.{sys.version_info[1]} here: "
                    + (run.stderr.strip().splitlines() or ["?"])[-1])
    return target


def run_with(paths, code, *args, timeout=300):
    """Run ``code`` in a new interpreter with ``paths`` (then this repository) first on
    PYTHONPATH; returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(REPO)])
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def old_protoc_module(tmp_root, proto_text, package, name):
    """``<name>_pb2.py`` generated from ``proto_text`` (its package renamed) by the protoc of
    protobuf 3.21 (bundled with grpcio-tools 1.49.1, the protoc of pycaffe builds of the last
    years and of Debian 12's python3-protobuf 3.21.12): the folder holding it."""
    tools = scratch_install(tmp_root, "grpcio-tools==1.49.1")
    out = tmp_root / f"old_{package}_{name}"
    out.mkdir(exist_ok=True)
    (out / f"{name}.proto").write_text(
        proto_text.replace("package caffe_lmdb;", f"package {package};"))
    code = ("import sys; from grpc_tools import _protoc_compiler as c; "
            "sys.exit(c.run_main([b'protoc', b'-I' + sys.argv[1].encode(), "
            "b'--python_out=' + sys.argv[1].encode(), sys.argv[2].encode()]))")
    run = run_with([tools], code, out, out / f"{name}.proto")
    assert run.returncode == 0, run.stderr
    text = (out / f"{name}_pb2.py").read_text()
    assert "_builder" in text and "ValidateProtobufRuntimeVersion" not in text  # 3.21 style
    return out
