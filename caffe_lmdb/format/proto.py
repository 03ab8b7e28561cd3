"""The protobuf message classes of ``proto/*.proto`` (Datum, BlobShape, BlobProto,
BlobProtoVector; AnnotatedDatum, LabelMap, ... of ``annotated.proto``), made when the package
is imported.

Why not the ``datum_pb2.py`` that protoc writes: the Python code of a recent protoc checks the
runtime it runs on and refuses any older one (``VersionError: ... gencode 7.x runtime 6.x``),
so the package could only be installed beside exactly one protobuf. What ships instead is the
compiled *descriptors* of the files (``messages.desc``, a serialized ``FileDescriptorSet``,
written by grpcio-tools' protoc with ``--descriptor_set_out --include_imports`` when the package
is built; see setup.py), and
the classes are made from it here with ``descriptor_pool`` and ``message_factory``, APIs every
protobuf runtime from 4.21 to 7.x has. The descriptor format itself has not changed since
protobuf 2.

The classes live in a descriptor pool of their own, not protobuf's default pool, so nothing
this package loads can clash with another module's messages (pycaffe's ``caffe_pb2`` included,
whatever protoc generated it, even one compiled from this very file).
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["Datum", "BlobShape", "BlobProto", "BlobProtoVector", "DESCRIPTOR_FILE",
           "message_classes", "messages"]

HERE = os.path.dirname(os.path.abspath(__file__))
#: The compiled descriptors (built from proto/*.proto by setup.py; never committed).
DESCRIPTOR_FILE = os.path.join(HERE, "messages.desc")
_SOURCE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "proto")


def _compile_from_source() -> None:
    """In a source checkout that was never built: compile the descriptors with grpcio-tools."""
    import glob

    from grpc_tools import protoc

    protos = sorted(glob.glob(os.path.join(_SOURCE, "*.proto")))
    args = ["grpc_tools.protoc", f"-I{_SOURCE}", f"--descriptor_set_out={DESCRIPTOR_FILE}",
            "--include_imports", *protos]
    if protoc.main(args) != 0:
        raise ImportError(f"protoc could not compile {protos}")


def _stale() -> bool:
    """In a source checkout: the descriptors are missing, or older than a .proto file (edited
    since the last build)."""
    if not os.path.isdir(_SOURCE):
        return False
    try:
        built = os.path.getmtime(DESCRIPTOR_FILE)
    except OSError:
        return True
    with os.scandir(_SOURCE) as entries:
        return any(e.name.endswith(".proto") and e.stat().st_mtime > built for e in entries)


def _load_descriptor() -> bytes:
    if _stale():
        try:
            _compile_from_source()
        except ImportError as exc:
            if os.path.exists(DESCRIPTOR_FILE):  # no grpcio-tools here: the last build
                with open(DESCRIPTOR_FILE, "rb") as f:
                    return f.read()
            raise ImportError(
                f"{DESCRIPTOR_FILE} is missing: install the package (pip install -e .), which "
                "compiles proto/*.proto, or run: python -m grpc_tools.protoc -Iproto "
                "--descriptor_set_out=caffe_lmdb/format/messages.desc --include_imports "
                "proto/*.proto "
                f"({exc})") from exc
    with open(DESCRIPTOR_FILE, "rb") as f:
        return f.read()


def message_classes(serialized_set: bytes) -> dict[str, Any]:
    """The message classes of a serialized FileDescriptorSet (files in dependency order, as
    protoc writes them), by short name, in a new pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

    files = descriptor_pb2.FileDescriptorSet.FromString(serialized_set)
    pool = descriptor_pool.DescriptorPool()
    for file_proto in files.file:
        pool.AddSerializedFile(file_proto.SerializeToString())
    get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get_class is None:  # 4.21: the factory API (removed in later releases)
        get_class = message_factory.MessageFactory(pool).GetPrototype
    classes = {}
    for file_proto in files.file:
        for message in file_proto.message_type:
            full_name = f"{file_proto.package}.{message.name}" if file_proto.package \
                else message.name
            classes[message.name] = get_class(pool.FindMessageTypeByName(full_name))
        for enum in file_proto.enum_type:  # top-level enums, as a generated module has them
            full_name = f"{file_proto.package}.{enum.name}" if file_proto.package \
                else enum.name
            classes[enum.name] = EnumTypeWrapper(pool.FindEnumTypeByName(full_name))
            classes.update((value.name, value.number) for value in enum.value)
    return classes


_CLASSES = message_classes(_load_descriptor())
Datum = _CLASSES["Datum"]
BlobShape = _CLASSES["BlobShape"]
BlobProto = _CLASSES["BlobProto"]
BlobProtoVector = _CLASSES["BlobProtoVector"]


def messages() -> Any:
    """All the message classes as attributes of one object (``messages().AnnotatedDatum``), as
    a generated ``_pb2`` module offers them."""
    from types import SimpleNamespace

    return SimpleNamespace(**_CLASSES)
