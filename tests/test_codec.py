"""The codec against records written by the real Caffe tools (../shared/fixtures)."""
import hashlib

import numpy as np
import pytest
from conftest import LIST_FILE_FLAGS, LMDB_FIXTURES, expected, read_lmdb

import caffe_lmdb
from caffe_lmdb.errors import DatumDecodeError, EncodeError, ImageReadError, ShapeMismatchError
from caffe_lmdb.format import batch
from caffe_lmdb.format import datum as codec
from caffe_lmdb.format.batch import decode_batch
from caffe_lmdb.format.datum import Datum, array_to_datum, datum_bytes, datum_to_array, decode
from caffe_lmdb.format.image import encode_image, image_to_datum


def _list_lines(fixtures):
    root = fixtures / "inputs" / "images"
    lines = (root / "list.txt").read_text().splitlines()
    return root, [line.rsplit(" ", 1) for line in lines]


# --- reading every record Caffe wrote ---------------------------------------------------------


@pytest.mark.parametrize("name", LMDB_FIXTURES)
def test_fixture_records_decode_to_expected_pixels_and_labels(fixtures, name):
    exp = expected(fixtures, name)
    records = read_lmdb(fixtures / name)
    assert [k.decode() for k, _ in records] == list(exp["keys"])
    kind = str(exp["kind"])
    for i, (key, value) in enumerate(records):
        assert hashlib.sha256(value).hexdigest() == exp["value_sha256"][i]
        # expected arrays of encoded records were decoded with IMREAD_COLOR
        arr, label = decode(value, color=True if kind == "encoded" else None)
        assert arr.dtype == np.asarray(exp["array"][i]).dtype
        assert np.array_equal(arr, exp["array"][i]), key
        assert label == (exp["labels"][i] if exp["has_label"][i] else 0)
        # datum_to_array via the protobuf message gives the same array
        datum = Datum()
        datum.ParseFromString(value)
        again = datum_to_array(datum, color=True if kind == "encoded" else None)
        assert np.array_equal(again, arr)


@pytest.mark.parametrize("name", [n for n in LMDB_FIXTURES if "encoded" in n])
def test_encoded_records_decode_natively_by_default(fixtures, name):
    exp = expected(fixtures, name)
    for i, (_, value) in enumerate(read_lmdb(fixtures / name)):
        native, _ = decode(value)
        assert native.shape[0] == exp["native_channels"][i]
        gray, _ = decode(value, color=False)
        assert gray.shape == (1,) + tuple(exp["array_shapes"][i][1:])


@pytest.mark.parametrize("name", LMDB_FIXTURES)
def test_decode_batch_matches_expected(fixtures, name):
    exp = expected(fixtures, name)
    shapes = {tuple(s) for s in exp["array_shapes"]}
    values = [v for _, v in read_lmdb(fixtures / name)]
    keys = [k for k, _ in read_lmdb(fixtures / name)]
    color = True if str(exp["kind"]) == "encoded" else None
    if len(shapes) > 1:
        with pytest.raises(ShapeMismatchError, match="key"):
            decode_batch(values, color=color, keys=keys)
        return
    out = np.full((len(values),) + shapes.pop(), 7, np.asarray(exp["array"][0]).dtype)
    labels = np.full(len(values), -5, np.int64)
    images, got = decode_batch(values, out=out, labels_out=labels, color=color)
    assert images is out and got is labels
    assert np.array_equal(images, np.stack(list(exp["array"])))
    assert np.array_equal(labels, np.where(exp["has_label"], exp["labels"], 0))


def test_decode_batch_into_another_dtype(fixtures):
    values = [v for _, v in read_lmdb(fixtures / "imageset_raw_32x32")]
    exp = expected(fixtures, "imageset_raw_32x32")
    out = np.empty((24, 3, 32, 32), np.float32)
    images, _ = decode_batch(values, out=out)
    assert np.array_equal(images, exp["array"].astype(np.float32))


# --- writing the bytes Caffe writes -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LIST_FILE_FLAGS))
def test_encode_image_is_byte_identical_to_convert_imageset(fixtures, name):
    root, lines = _list_lines(fixtures)
    want = dict(read_lmdb(fixtures / name))
    got, skipped = {}, []
    for i, (path, label) in enumerate(lines):
        key = b"%08d_" % i + path.encode()
        try:
            got[key] = encode_image(root / path, int(label), **LIST_FILE_FLAGS[name])
        except ImageReadError as exc:
            assert str(root / path) in str(exc)
            skipped.append(i)
    assert skipped == [3, 7]  # the missing file and the corrupt JPEG, as Caffe skipped them
    assert list(got) == list(want)
    for key in want:
        assert got[key] == want[key], key


def test_encode_image_from_bytes_matches_path(fixtures):
    root, lines = _list_lines(fixtures)
    for path, label in lines[:3]:
        blob = (root / path).read_bytes()
        assert encode_image(blob, int(label), resize=(32, 32)) \
            == encode_image(root / path, int(label), resize=(32, 32))
        # encode=True with bytes: the format is sniffed and the bytes kept
        datum = image_to_datum(blob, int(label), encode=True)
        assert datum.encoded and datum.data == blob and datum.label == int(label)


def test_gray_encoded_stores_a_gray_image(fixtures):
    """The one documented difference from Caffe: --gray --encoded re-encodes the gray image."""
    root, _ = _list_lines(fixtures)
    datum = image_to_datum(root / "cat" / "img_000.jpg", 0, gray=True, encode="jpg")
    assert datum.encoded and datum.data != (root / "cat" / "img_000.jpg").read_bytes()
    arr, _ = decode(datum.SerializeToString())
    assert arr.shape[0] == 1


def test_unknown_encode_type_is_a_clear_error(fixtures):
    root, _ = _list_lines(fixtures)
    with pytest.raises(EncodeError, match="nosuchformat"):
        encode_image(root / "cat" / "img_000.jpg", 0, encode="nosuchformat")


@pytest.mark.parametrize("name", ["mnist_lmdb", "cifar10_test_head_lmdb",
                                  "cifar10_train_sample_lmdb"])
def test_converter_records_rebuild_byte_identically(fixtures, name):
    """convert_mnist_data / convert_cifar_data: shape, data and label, no `encoded` field."""
    exp = expected(fixtures, name)
    for i, (_, value) in enumerate(read_lmdb(fixtures / name)):
        c, h, w = exp["array"][i].shape
        rebuilt = datum_bytes(c, h, w, data=exp["array"][i].tobytes(), label=exp["labels"][i])
        assert rebuilt == value


@pytest.mark.parametrize("name", [n for n in LMDB_FIXTURES if n.startswith("features_")])
def test_extract_features_records_rebuild_byte_identically(fixtures, name):
    """extract_features: shape and unpacked float_data; no data, no label."""
    exp = expected(fixtures, name)
    for i, (_, value) in enumerate(read_lmdb(fixtures / name)):
        c, h, w = exp["array"][i].shape
        assert datum_bytes(c, h, w, float_data=exp["array"][i]) == value


def test_raw_records_end_with_encoded_false(fixtures):
    """convert_imageset sets encoded = false explicitly (38 00); so do array records."""
    for _, value in read_lmdb(fixtures / "imageset_raw_32x32"):
        assert value.endswith(b"\x38\x00")
    assert caffe_lmdb.array_to_datum(np.zeros((1, 2, 2), np.uint8), 0) \
        .SerializeToString().endswith(b"\x28\x00\x38\x00")


# --- pycaffe's helpers --------------------------------------------------------------------------


def test_array_to_datum_uint8_and_float():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = array_to_datum(arr, label=0)
    assert (datum.channels, datum.height, datum.width) == (2, 3, 4)
    assert datum.data == arr.tobytes() and not datum.float_data
    assert datum.HasField("label") and datum.label == 0
    assert datum.HasField("encoded") and not datum.encoded
    assert np.array_equal(datum_to_array(datum), arr)

    farr = np.linspace(-2, 2, 24).reshape(2, 3, 4)  # float64 goes to float_data as float32
    datum = array_to_datum(farr)
    assert not datum.HasField("label") and not datum.data
    back = datum_to_array(datum)
    assert back.dtype == np.float32
    assert np.array_equal(back, farr.astype(np.float32))


def test_array_to_datum_rejects_non_3d():
    with pytest.raises(ValueError, match="3-D"):
        array_to_datum(np.zeros((4, 4), np.uint8))


def test_decode_gives_a_zero_copy_view_of_raw_pixels():
    value = datum_bytes(1, 2, 2, data=b"\x01\x02\x03\x04", label=3)
    arr, label = decode(value)
    assert label == 3 and arr.tolist() == [[[1, 2], [3, 4]]]
    assert not arr.flags.writeable and arr.base is not None  # a view of `value`
    arr2, _ = decode(memoryview(bytearray(value)))
    assert np.array_equal(arr, arr2)


def test_decode_reads_packed_float_data():
    datum = Datum(channels=2, height=1, width=1)
    packed = b"\x08\x02\x10\x01\x18\x01\x32\x08" + np.array([1.5, -2], "<f4").tobytes()
    datum.ParseFromString(packed)
    assert list(datum.float_data) == [1.5, -2]
    arr, _ = decode(packed)
    assert arr.ravel().tolist() == [1.5, -2.0]


@pytest.mark.parametrize("bad", [b"\x22\x10abc", b"\x08", b"\xff" * 12, b"\x35\x00",
                                 datum_bytes(2, 2, 2, data=b"abc")])
def test_malformed_records_raise_one_error_type(bad):
    with pytest.raises(DatumDecodeError):
        decode(bad)


def test_mean_files_read_and_write_byte_identically(fixtures):
    for name in ("mean_raw_32x32", "mean_encoded_png_32x32"):
        path = fixtures / f"{name}.binaryproto"
        mean = caffe_lmdb.read_mean(path)
        want = np.load(fixtures / "expected" / f"{name}.npy")
        assert mean.shape == (3, 32, 32) and mean.dtype == np.float32
        assert np.array_equal(mean, want[0])
        assert caffe_lmdb.format.blob.mean_bytes(mean) == path.read_bytes()


def test_write_mean_round_trip(tmp_path):
    mean = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    caffe_lmdb.write_mean(mean, tmp_path / "m.binaryproto")
    assert np.array_equal(caffe_lmdb.read_mean(tmp_path / "m.binaryproto"), mean)
    (tmp_path / "junk").write_bytes(b"\xff\xff\xff")
    with pytest.raises(DatumDecodeError, match="junk"):
        caffe_lmdb.read_mean(tmp_path / "junk")


def test_blobproto_helpers_round_trip():
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    blob = caffe_lmdb.array_to_blobproto(arr, diff=-arr)
    assert list(blob.shape.dim) == [2, 3, 4, 5]
    assert np.array_equal(caffe_lmdb.blobproto_to_array(blob), arr)
    assert np.array_equal(caffe_lmdb.blobproto_to_array(blob, return_diff=True), -arr)
    legacy = codec.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    assert caffe_lmdb.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    arrays = [arr, np.ones((3,), np.float32)]
    back = caffe_lmdb.blobprotovector_str_to_arraylist(
        caffe_lmdb.arraylist_to_blobprotovector_str(arrays))
    assert len(back) == 2 and all(np.array_equal(a, b) for a, b in zip(arrays, back))


# --- the proto itself --------------------------------------------------------------------------

CAFFE_FIELDS = {
    # message: {field: (number, type, label, packed)}, from CAFFE_FORMAT.md
    "Datum": {"channels": (1, "int32", "optional", False), "height": (2, "int32", "optional", False),
              "width": (3, "int32", "optional", False), "data": (4, "bytes", "optional", False),
              "label": (5, "int32", "optional", False),
              "float_data": (6, "float", "repeated", False),
              "encoded": (7, "bool", "optional", False)},
    "BlobShape": {"dim": (1, "int64", "repeated", True)},
    "BlobProto": {"num": (1, "int32", "optional", False), "channels": (2, "int32", "optional", False),
                  "height": (3, "int32", "optional", False), "width": (4, "int32", "optional", False),
                  "data": (5, "float", "repeated", True), "diff": (6, "float", "repeated", True),
                  "shape": (7, "message", "optional", False),
                  "double_data": (8, "double", "repeated", True),
                  "double_diff": (9, "double", "repeated", True)},
    "BlobProtoVector": {"blobs": (1, "message", "repeated", False)},
}


def test_proto_matches_caffe_numbers_and_types():
    from google.protobuf.descriptor import FieldDescriptor as FD

    types = {FD.TYPE_INT32: "int32", FD.TYPE_INT64: "int64", FD.TYPE_BYTES: "bytes",
             FD.TYPE_FLOAT: "float", FD.TYPE_DOUBLE: "double", FD.TYPE_BOOL: "bool",
             FD.TYPE_MESSAGE: "message"}
    for message, fields in CAFFE_FIELDS.items():
        desc = getattr(codec, message).DESCRIPTOR
        assert desc.file.syntax == "proto2" if hasattr(desc.file, "syntax") else True
        assert desc.full_name == f"caffe_lmdb.{message}"
        assert {f.name for f in desc.fields} == set(fields)
        for name, (number, type_, label, packed) in fields.items():
            f = desc.fields_by_name[name]
            assert (f.number, types[f.type]) == (number, type_), name
            assert _is_repeated(f) == (label == "repeated"), name
            assert _is_packed(f) == packed, name


def _is_repeated(field):
    # protobuf >= 6 has is_repeated (and deprecates label); older runtimes only label
    if hasattr(field, "is_repeated"):
        return field.is_repeated
    return field.label == field.LABEL_REPEATED


def _is_packed(field):
    if hasattr(field, "is_packed"):
        return field.is_packed
    return field.GetOptions().packed  # proto2: packed only where the option says so


COEXIST = r"""
import sys
sys.path.insert(0, sys.argv[1])
import caffe_pb2                      # pycaffe's module: package "caffe", same messages
import caffe_lmdb
from caffe_lmdb.format.datum import BlobProto, Datum
theirs = caffe_pb2.Datum(channels=1, height=1, width=2, data=b"ab", label=-3, float_data=[1.5],
                         encoded=False)
ours = Datum()
ours.ParseFromString(theirs.SerializeToString())
assert ours.SerializeToString() == theirs.SerializeToString()
back = caffe_pb2.Datum.FromString(Datum(channels=3, label=4, encoded=True, data=b"x")
                                  .SerializeToString())
assert (back.channels, back.label, back.encoded, back.data) == (3, 4, True, b"x")
mean = caffe_pb2.BlobProto.FromString(caffe_lmdb.array_to_blobproto(
    __import__("numpy").ones((1, 2, 2, 2), "float32")).SerializeToString())
assert list(mean.data) == [1.0] * 8
again = BlobProto.FromString(mean.SerializeToString())
assert again.SerializeToString() == mean.SerializeToString()
assert caffe_pb2.Datum.DESCRIPTOR.full_name == sys.argv[2] + ".Datum"
print("ok")
"""


def _compile(proto_text, package, outdir, name):
    from grpc_tools import protoc

    src = proto_text.replace("package caffe_lmdb;", f"package {package};")
    (outdir / f"{name}.proto").write_text(src)
    assert protoc.main(["protoc", f"-I{outdir}", f"--python_out={outdir}",
                        str(outdir / f"{name}.proto")]) == 0


def _coexist(folder, package):
    from scratch_envs import run_with

    run = run_with([], COEXIST, folder, package)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


@pytest.mark.parametrize("package", ["caffe", "caffe_lmdb"])
def test_coexists_with_pycaffe_caffe_pb2(tmp_path, package):
    """A caffe_pb2 with the same messages (package `caffe`, as pycaffe's) loads beside ours and
    each parses the other's records. Our classes live in a descriptor pool of their own, so even
    a module compiled from our own file (package `caffe_lmdb`) cannot clash with them."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (the [test] extra) compiles it")
    from conftest import REPO

    _compile((REPO / "proto" / "datum.proto").read_text(), package, tmp_path, "caffe")
    _coexist(tmp_path, package)


@pytest.mark.parametrize("package", ["caffe", "caffe_lmdb"])
def test_coexists_with_a_caffe_pb2_of_protoc_3_21(tmp_path_factory, package):
    """pycaffe's caffe_pb2 as the protoc of protobuf 3.21 generates it (grpcio-tools 1.49.1,
    installed into a scratch folder; skipped when pip cannot fetch it)."""
    from conftest import REPO
    from scratch_envs import old_protoc_module

    folder = old_protoc_module(tmp_path_factory.mktemp("protoc321"),
                               (REPO / "proto" / "datum.proto").read_text(), package, "caffe")
    _coexist(folder, package)


def test_decode_batch_of_encoded_records_works_in_a_forked_child(fixtures):
    """The decoding threads do not survive fork: the child must make its own pool (it used to
    wait forever on the parent's)."""
    import os
    import time

    values = [v for _, v in read_lmdb(fixtures / "imageset_encoded_png_32x32")]
    parent, _ = decode_batch(values)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        child, _ = decode_batch(values)
        os._exit(0 if np.array_equal(parent, child) else 3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("decode_batch hung in a forked child")


def test_encoded_batch_errors_name_the_first_bad_record(fixtures):
    values = [v for _, v in read_lmdb(fixtures / "imageset_encoded_png_32x32")]
    keys = [k for k, _ in read_lmdb(fixtures / "imageset_encoded_png_32x32")]
    broken = datum_bytes(data=b"\x89PNG not really", label=0, encoded=True)
    values[5] = values[9] = broken
    with pytest.raises(DatumDecodeError, match=r"record 5 \(key"):
        decode_batch(values, keys=keys)


@pytest.mark.parametrize("kind", ["raw", "float"])
def test_large_uniform_batches_split_across_threads_agree_with_decode(kind):
    """Batches over 1 MiB are compared and copied on several threads; a record that breaks
    the shared layout in the last rows (valid protobuf, another parse) must still be caught."""
    rng = np.random.default_rng(1)
    if kind == "raw":
        arrays = rng.integers(0, 256, size=(600, 3, 40, 40), dtype=np.uint8)
        values = [caffe_lmdb.format.datum.array_to_datum_bytes(a, i % 300) for i, a in enumerate(arrays)]
    else:
        arrays = rng.standard_normal((600, 1024, 1, 1), dtype=np.float32)
        values = [datum_bytes(1024, 1, 1, float_data=a) for a in arrays]
    assert sum(map(len, values)) > 2 * batch._SPLIT_BYTES
    images, labels = decode_batch(values)
    assert np.array_equal(images, arrays)
    if kind == "raw":
        assert labels.tolist() == [i % 300 for i in range(600)]
    # same length, same header and tail, but two float values (10 bytes) replaced by other
    # fields: encoded = true (38 01), label 5 as a 2-byte varint (28 85 00), one float (35 ...)
    bad = bytearray(values[-1])
    at = len(bad) - 5 * 10 if kind == "float" else None
    if kind == "float":
        bad[at:at + 10] = b"\x38\x01\x28\x85\x00\x35\x00\x00\x80\x3f"
        values[-1] = bytes(bad)
        datum = Datum()
        datum.ParseFromString(values[-1])
        assert datum.encoded  # protobuf reads it as an encoded record
        with pytest.raises(DatumDecodeError, match="record 599"):
            decode_batch(values)
    else:
        # the tail's fields swapped (encoded first, then the label): same length, same header
        swapped = datum_bytes(3, 40, 40, data=arrays[-1].tobytes()) + b"\x38\x00" \
            + datum_bytes(label=-7)
        values[-1] = swapped[:len(values[-1])]
        assert len(swapped) > len(values[-1])  # a negative label takes 10 bytes: cut, so
        with pytest.raises(DatumDecodeError, match="record 599"):  # it is malformed
            decode_batch(values)
        values[-1] = datum_bytes(3, 40, 40, data=arrays[-1].tobytes()) + b"\x38\x00" \
            + datum_bytes(label=299)
        images, labels = decode_batch(values)
        assert labels[-1] == 299 and np.array_equal(images, arrays)


def test_an_encoded_bomb_is_refused_before_opencv_allocates_it():
    """A PNG header declaring 30,000 x 30,000 pixels: refused from its header (OpenCV would
    allocate 2.7 GB), unless max_pixels allows it."""
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)) \
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    bomb = datum_bytes(data=png, label=3, encoded=True)
    with pytest.raises(DatumDecodeError, match="30000 x 30000"):
        decode(bomb)
    with pytest.raises(DatumDecodeError, match=r"record 1\b.*30000 x 30000"):
        decode_batch([datum_bytes(data=_tiny_png(), label=0, encoded=True), bomb])
    with pytest.raises(DatumDecodeError, match="could not be decoded"):  # allowed, then fails
        decode(bomb, max_pixels=None)  # (the IDAT is far too short for the image)


def _tiny_png():
    import cv2

    return cv2.imencode(".png", np.zeros((2, 2, 3), np.uint8))[1].tobytes()


@pytest.mark.parametrize("record,value", [(0, 0), (7, 500), (15, 1023)])
def test_one_foreign_tag_in_a_float_run_is_not_read_as_a_float(record, value):
    """The vectorized float path checks the tag of every value: a record whose run holds one
    fixed32 of an unknown field (0x3d) where a float (0x35) should be, same length and header,
    is parsed as protobuf parses it (one float fewer: an error naming the record)."""
    arrays = np.random.default_rng(2).standard_normal((16, 1024, 1, 1), dtype=np.float32)
    values = [datum_bytes(1024, 1, 1, float_data=a) for a in arrays]
    images, _ = decode_batch(values)
    assert np.array_equal(images, arrays)
    bad = bytearray(values[record])
    at = len(bad) - 5 * (1024 - value)
    assert bad[at] == 0x35
    bad[at] = 0x3D
    values[record] = bytes(bad)
    datum = Datum()
    datum.ParseFromString(values[record])
    assert len(datum.float_data) == 1023
    with pytest.raises(DatumDecodeError, match=f"record {record}"):
        decode_batch(values)
