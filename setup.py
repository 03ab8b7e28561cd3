"""Build hook: compile proto/*.proto with grpcio-tools before the package is built.

What is compiled is the files' descriptors (one ``FileDescriptorSet``,
``caffe_lmdb/format/messages.desc``, protoc's ``--descriptor_set_out --include_imports``), not
Python code: the Python code of a recent protoc refuses every older protobuf runtime, while the
descriptors are read by every runtime from 3.20 to 7.x (``caffe_lmdb/format/proto.py`` makes the
message classes from them at import time).

The descriptor set is never committed. It is written into the source tree, so that both
`pip install .` (copied into the wheel as package data) and `pip install -e .` (read from the
source tree) find it.
"""
import glob
import os

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "proto")
TARGET = os.path.join(HERE, "caffe_lmdb", "format", "messages.desc")


def compile_proto():
    from grpc_tools import protoc  # build-time requirement (pyproject.toml)

    protos = sorted(glob.glob(os.path.join(PROTO_DIR, "*.proto")))
    if os.path.exists(TARGET) and all(os.path.getmtime(TARGET) >= os.path.getmtime(p)
                                      for p in protos):
        return
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={TARGET}",
            "--include_imports", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")


class BuildPyWithProto(build_py):
    def run(self):
        compile_proto()
        super().run()


setup(cmdclass={"build_py": BuildPyWithProto})
