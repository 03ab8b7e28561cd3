"""Build hook: compile proto/datum.proto with grpcio-tools before the package is built.

The generated module (caffe_lmdb/format/datum_pb2.py) is never committed. It is written into the
source tree, so that both `pip install .` (copied into the wheel by build_py) and
`pip install -e .` (imported from the source tree) find it.
"""
import os
import re

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
OUT_DIR = os.path.join(HERE, "caffe_lmdb", "format")


def compile_proto():
    import glob

    from grpc_tools import protoc  # build-time requirement (pyproject.toml)

    for proto in sorted(glob.glob(os.path.join(PROTO_DIR, "*.proto"))):
        name = os.path.splitext(os.path.basename(proto))[0]
        target = os.path.join(OUT_DIR, f"{name}_pb2.py")
        if os.path.exists(target) and os.path.getmtime(target) >= os.path.getmtime(proto):
            continue
        args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={OUT_DIR}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
        with open(target) as f:  # protoc imports a sibling .proto's module as top-level
            text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", f.read(),
                          flags=re.M)
        with open(target, "w") as f:
            f.write(text)


class BuildPyWithProto(build_py):
    def run(self):
        compile_proto()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProto})
