"""Property tests: the hand-written Datum parser agrees with the generated protobuf class.

For every input (valid records, records with unknown fields, repeated fields, packed floats,
mutated, truncated and random bytes) either both paths reject it (protobuf's DecodeError, ours
DatumDecodeError), or both give the same fields, the same array and the same label.
"""
import os
import struct

import google.protobuf
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caffe_lmdb.errors import DatumDecodeError
from caffe_lmdb.format import datum as codec
from caffe_lmdb.format.batch import decode_batch
from caffe_lmdb.format.datum import Datum, datum_bytes, decode, parse_datum

# CAFFE_LMDB_FUZZ_EXAMPLES raises the count for a long run (scripts or by hand).
SETTINGS = settings(max_examples=int(os.environ.get("CAFFE_LMDB_FUZZ_EXAMPLES", "400")),
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference(buf, color=None):
    """The plain protobuf path, with the same rules as decode (pycaffe's datum_to_array, plus
    encoded records decoded by OpenCV)."""
    datum = Datum()
    try:
        datum.ParseFromString(bytes(buf))
    except DecodeError as exc:
        raise DatumDecodeError(str(exc)) from exc
    if datum.encoded:
        import cv2

        if not datum.data:
            raise DatumDecodeError("encoded record has no data")
        flag = cv2.IMREAD_UNCHANGED if color is None else (
            cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), flag)
        if img is None:
            raise DatumDecodeError("undecodable image")
        return (img[None] if img.ndim == 2 else img.transpose(2, 0, 1)), datum.label
    shape = (datum.channels, datum.height, datum.width)
    if min(shape) < 0:
        raise DatumDecodeError("negative shape")
    if datum.data:
        arr = np.frombuffer(datum.data, np.uint8)
    else:
        arr = np.array(datum.float_data, np.float32)
    if arr.size != shape[0] * shape[1] * shape[2]:
        raise DatumDecodeError("size mismatch")
    return arr.reshape(shape), datum.label


def fields_of(buf):
    """The fields protobuf parses, in the form parse_datum reports them."""
    datum = Datum()
    datum.ParseFromString(bytes(buf))
    return dict(channels=datum.channels, height=datum.height, width=datum.width,
                label=datum.label, has_label=datum.HasField("label"),
                encoded=datum.encoded, has_encoded=datum.HasField("encoded"),
                data=bytes(datum.data) if datum.HasField("data") else None,
                floats=np.array(datum.float_data, np.float32).tobytes())


def our_fields(buf):
    f = parse_datum(buf)
    data = None if f.data is None else bytes(buf[f.data[0]:f.data[0] + f.data[1]])
    floats = codec.float_values(buf, f.floats, f.float_count).tobytes()
    return dict(channels=f.channels, height=f.height, width=f.width, label=f.label,
                has_label=f.has_label, encoded=f.encoded, has_encoded=f.has_encoded,
                data=data, floats=floats)


def _read_varint(buf, i):
    value = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            return None, i
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            return value, i


def _field0_in_group(buf):
    """True when a tag of field number 0 sits inside a group (protobuf < 7 rejects such bytes,
    protobuf 7 skips the tag, as our parser does)."""
    buf, i, depth = bytes(buf), 0, 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        if tag is None:
            return False
        if tag >> 3 == 0:
            return depth > 0
        kind = tag & 7
        if kind == 0:
            _, i = _read_varint(buf, i)
        elif kind == 1:
            i += 8
        elif kind == 5:
            i += 4
        elif kind == 2:
            n, i = _read_varint(buf, i)
            i += n or 0
        elif kind == 3:
            depth += 1
        elif kind == 4:
            depth -= 1
        else:
            return False
    return False


PROTOBUF_MAJOR = int(google.protobuf.__version__.split(".")[0])


def check_agrees(buf):
    for view in (buf, memoryview(buf)):
        try:
            expected_fields = fields_of(view)
        except DecodeError:
            if PROTOBUF_MAJOR < 7 and _field0_in_group(view):
                continue  # the one rule on which protobuf runtimes differ (see above)
            with pytest.raises(DatumDecodeError):
                parse_datum(view)
            with pytest.raises(DatumDecodeError):
                decode(view)
            continue
        assert our_fields(view) == expected_fields
        try:
            want = reference(view)
        except DatumDecodeError:
            with pytest.raises(DatumDecodeError):
                decode(view)
            continue
        got_arr, got_label = decode(view)
        assert got_label == want[1]
        assert got_arr.shape == want[0].shape
        assert got_arr.dtype == want[0].dtype
        assert got_arr.tobytes() == want[0].tobytes()


# --- strategies -----------------------------------------------------------------------------

int32s = st.integers(-(1 << 31), (1 << 31) - 1)
small_dims = st.integers(0, 5)


@st.composite
def valid_datums(draw):
    c, h, w = draw(small_dims), draw(small_dims), draw(small_dims)
    kind = draw(st.sampled_from(["raw", "float", "empty", "mismatch"]))
    label = draw(st.one_of(st.none(), int32s))
    encoded = draw(st.sampled_from([None, False]))
    n = c * h * w
    if kind == "raw":
        return datum_bytes(c, h, w, data=draw(st.binary(min_size=n, max_size=n)), label=label,
                           encoded=encoded)
    if kind == "float":
        vals = draw(st.lists(st.floats(width=32, allow_nan=False), min_size=n, max_size=n))
        return datum_bytes(c, h, w, label=label, float_data=np.array(vals, np.float32))
    if kind == "mismatch":
        return datum_bytes(c, h, w, data=draw(st.binary(max_size=8)), label=label)
    return datum_bytes(label=label, encoded=encoded)


def _varint(v):
    return codec.write_varint(v & ((1 << 64) - 1))


@st.composite
def raw_fields(draw):
    """Arbitrary field sequences: Datum's numbers and unknown ones, every wire type, odd
    encodings (overlong varints, packed floats, groups)."""
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        field = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 1000]))
        wire = draw(st.sampled_from([0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 7]))
        tag = _varint((field << 3) | wire)
        if wire == 0:
            payload = _varint(draw(st.integers(-(1 << 63), (1 << 64) - 1)))
        elif wire == 1:
            payload = draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            payload = draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            body = draw(st.binary(max_size=24))
            payload = _varint(len(body)) + body
        elif wire == 3:
            inner = draw(st.sampled_from([b"", b"\x08\x01", b"\x35abcd"]))
            close = draw(st.sampled_from([field, field, field + 1]))
            payload = inner + _varint((close << 3) | 4)
        else:
            payload = b""
        out += tag + payload
    return out


def mutate(data, buf):
    """Truncate, flip, insert or delete bytes of a valid record."""
    buf = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if not buf:
            break
        at = data.draw(st.integers(0, len(buf) - 1))
        if op == "truncate":
            del buf[at:]
        elif op == "flip":
            buf[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del buf[at]
    return bytes(buf)


# --- properties -----------------------------------------------------------------------------


@SETTINGS
@given(valid_datums())
def test_valid_records_agree(buf):
    check_agrees(buf)


@SETTINGS
@given(st.data(), valid_datums())
def test_mutated_records_agree(data, buf):
    check_agrees(mutate(data, buf))


@SETTINGS
@given(st.lists(st.one_of(valid_datums(), raw_fields()), min_size=1, max_size=3))
def test_concatenated_records_and_odd_fields_agree(parts):
    # protobuf merges concatenated messages (last scalar wins, repeated fields append)
    check_agrees(b"".join(parts))


@SETTINGS
@given(st.binary(max_size=64))
@example(b"\x35")                    # a float tag with no value
@example(b"\x35\x00\x00\x80\x3f\x35\x00")  # a run of floats cut short
@example(b"\x80" * 11)               # an overlong varint
@example(b"\x0c")                    # end-group with no group
@example(b"\x0b\x0c")                # an empty group
@example(b"\x0b\x14")                # a group closed by the wrong field
@example(b"\x32\x03abc")             # packed floats that are not whole floats
@example(b"\x22\x05ab")              # data shorter than its length
@example(b"\x08\xff\xff\xff\xff\x0f")  # channels = -1 (five-byte varint)
@example(b"\x0b\x00\x00\x0c")            # field 0 inside a group: protobuf skips it
@example(b"\x0b\x03\x0c")                # a group of field 0 inside a group: rejected
@example(b"\xb5\x00\x00\x00\x80\x3f")   # a float tag written as an overlong varint
def test_random_bytes_agree(buf):
    check_agrees(buf)


@SETTINGS
@given(st.data())
def test_header_cache_never_leaks_between_records(data):
    """Records that share a header prefix with an earlier one parse independently."""
    first = data.draw(valid_datums())
    check_agrees(first)
    second = data.draw(st.one_of(valid_datums(), st.just(mutate(data, first))))
    check_agrees(second)


def one_by_one(bufs, same_dtype=False):
    """``(singles, failure)``: each record decoded alone, ``(array, label)``, up to the first
    that fails (failure DatumDecodeError) or differs from the first in shape (or dtype, with
    ``same_dtype``; failure ValueError); failure None when all decode alike."""
    singles = []
    for buf in bufs:
        try:
            arr, label = decode(buf)
        except DatumDecodeError:
            return singles, DatumDecodeError
        if singles and (arr.shape != singles[0][0].shape
                        or (same_dtype and arr.dtype != singles[0][0].dtype)):
            return singles, ValueError
        singles.append((arr.copy(), label))
    return singles, None


@SETTINGS
@given(st.lists(valid_datums(), min_size=1, max_size=6))
def test_decode_batch_agrees_with_decode(bufs):
    # the batch fails on the first record, in order, that fails alone or differs in shape
    singles, failure = one_by_one(bufs)
    if failure is not None:
        with pytest.raises(failure):
            decode_batch(bufs)
        return
    dtypes = {a.dtype for a, _ in singles}
    out = None if len(dtypes) == 1 else np.empty((len(bufs),) + singles[0][0].shape, np.float32)
    images, labels = decode_batch(bufs, out=out)
    for i, (arr, label) in enumerate(singles):
        assert np.array_equal(images[i], arr)
        assert labels[i] == label


@SETTINGS
@given(st.lists(st.tuples(int32s, st.binary(min_size=12, max_size=12)), min_size=2, max_size=8),
       st.sampled_from([None, False]))
def test_vectorized_batch_labels(records, encoded):
    """The vectorized path decodes multi-byte (negative, large) labels exactly."""
    bufs = [datum_bytes(3, 2, 2, data=d, label=lab, encoded=encoded) for lab, d in records]
    images, labels = decode_batch(bufs)
    assert labels.tolist() == [lab for lab, _ in records]
    assert images.reshape(len(records), -1).tobytes() == b"".join(d for _, d in records)


@SETTINGS
@given(st.integers(0, 7), st.integers(0, 7), st.integers(0, 7), st.one_of(st.none(), int32s),
       st.sampled_from([None, False, True]), st.booleans())
def test_datum_bytes_equals_protobuf(c, h, w, label, encoded, floats):
    """The hand serializer writes exactly the bytes the protobuf class writes."""
    n = c * h * w
    datum = Datum(channels=c, height=h, width=w)
    kwargs = {}
    if floats:
        vals = np.arange(n, dtype=np.float32) / 3
        datum.float_data.extend(vals)
        kwargs["float_data"] = vals
    else:
        data = bytes(i % 251 for i in range(n))
        datum.data = data
        kwargs["data"] = data
    if label is not None:
        datum.label = label
    if encoded is not None:
        datum.encoded = encoded
    assert datum_bytes(c, h, w, label=label, encoded=encoded, **kwargs) \
        == datum.SerializeToString()


def test_unpacked_float_run_stops_at_a_non_float_tag():
    vals = np.linspace(-1, 1, 20).astype(np.float32)
    buf = datum_bytes(20, 1, 1, float_data=vals) + b"\x28\x05" + struct.pack("<Bf", 0x35, 2.0)
    arr_ref = np.append(vals, np.float32(2.0))
    f = parse_datum(buf)
    assert f.label == 5
    assert np.array_equal(codec.float_values(buf, f.floats, f.float_count), arr_ref)


def _runs_of_records(data):
    """Records of one shape in a few runs of one label size each (as a database sorted by
    label gives them), with perhaps one byte of one record changed."""
    sizes = st.sampled_from([(0, 127), (128, 16383), (16384, 2_000_000), None])
    runs = data.draw(st.lists(st.tuples(sizes, st.integers(1, 90), st.sampled_from([None, False])),
                              min_size=1, max_size=4))
    bufs = []
    for labels, count, encoded in runs:
        for _ in range(count):
            label = None if labels is None else data.draw(st.integers(*labels))
            pixels = data.draw(st.binary(min_size=12, max_size=12))
            bufs.append(datum_bytes(3, 2, 2, data=pixels, label=label, encoded=encoded))
    while len(bufs) < 64 * len(runs):  # few runs for their length: the run path's case
        bufs.append(bufs[-1])
    if data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(bufs) - 1))
        at = data.draw(st.integers(0, len(bufs[i]) - 1))
        changed = bytearray(bufs[i])
        changed[at] ^= data.draw(st.integers(1, 255))
        bufs[i] = bytes(changed)
    return bufs


@SETTINGS
@given(st.data())
def test_joined_runs_agree_with_decode(data):
    """Records joined by a ValueJoiner, in runs of different lengths (labels of 1, 2 and 3
    bytes, no label, encoded=false or absent), one byte perhaps changed: the batch equals the
    records decoded one by one, or fails on the first that fails alone or differs in shape."""
    from caffe_lmdb.format.batch import ValueJoiner

    bufs = _runs_of_records(data)
    batch_agrees_with_one_by_one(bufs, ValueJoiner().take(iter(bufs), len(bufs)))


def batch_agrees_with_one_by_one(bufs, values):
    """``values`` (the records ``bufs`` as the reader hands them over) decode as one batch to
    what ``bufs`` give one by one, or fail as the first that fails alone or differs."""
    from caffe_lmdb.format.batch import BatchDecoder

    singles, failure = one_by_one(bufs, same_dtype=True)
    if failure is not None:
        with pytest.raises(failure):
            BatchDecoder().decode(values)
        return
    images, labels = BatchDecoder().decode(values)
    assert labels.tolist() == [label for _, label in singles]
    assert np.array_equal(images, np.stack([arr for arr, _ in singles]))


def test_joined_runs_take_the_run_path(monkeypatch):
    """Records of labels 0..999 in order (runs of 1- and 2-byte labels) are decoded through a
    strided view per run: not gathered, not one by one, and right."""
    from caffe_lmdb.format import batch
    from caffe_lmdb.format.batch import BatchDecoder, ValueJoiner

    monkeypatch.setattr(batch._Stage, "gather", None)  # a gather would fail
    monkeypatch.setattr(batch, "decode", None)  # so would one by one
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (1000, 1, 4, 3), dtype=np.uint8)
    bufs = [datum_bytes(1, 4, 3, data=img.tobytes(), label=i) for i, img in enumerate(images)]
    got, labels = BatchDecoder().decode(ValueJoiner().take(iter(bufs), len(bufs)))
    assert labels.tolist() == list(range(1000))
    assert np.array_equal(got, images)


@pytest.mark.parametrize("tag", [0x35, 0x0D, 0x3D])
def test_float_runs_checked_in_every_part(tag):
    """Float records large enough to be decoded in parts (split across threads, each part a
    few rows at a time): a tag changed in a late record's run is seen, and the batch then
    gives what the records give one by one (or the same error)."""
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((300, 4096)).astype(np.float32)
    bufs = [datum_bytes(4096, 1, 1, float_data=row) for row in rows]
    bad = bytearray(bufs[277])
    at = len(bad) - 5 * 1000  # the tag of one of the last floats
    assert bad[at] == 0x35
    bad[at] = tag
    bufs[277] = bytes(bad)
    try:
        want = [decode(buf) for buf in bufs]
    except DatumDecodeError:
        with pytest.raises(DatumDecodeError, match="record 277"):
            decode_batch(bufs)
        return
    images, labels = decode_batch(bufs)
    assert np.array_equal(images, np.stack([arr for arr, _ in want]))
    assert labels.tolist() == [label for _, label in want]


@pytest.mark.parametrize("odd", [0, 69, 70, 71, 139])
@pytest.mark.parametrize("first_labels", [20000, 200])  # runs of 3- or 2-byte labels first
def test_joined_runs_see_a_record_of_another_shape(odd, first_labels):
    """A record of the same length but another shape (its head differs), anywhere among runs
    of labels of different sizes (a run's first record, the first record after a run of
    3-byte labels, the last record): the batch fails on it, never decodes it in the wrong
    shape."""
    from caffe_lmdb.format.batch import BatchDecoder, ValueJoiner

    labels = [first_labels + i for i in range(70)] + list(range(70))
    bufs = [datum_bytes(1, 2, 6, data=bytes(range(12)), label=label) for label in labels]
    before = bufs[odd]
    bufs[odd] = datum_bytes(1, 3, 4, data=bytes(range(12)), label=labels[odd])
    assert len(bufs[odd]) == len(before)  # the runs stay as they were
    singles, failure = one_by_one(bufs, same_dtype=True)
    assert failure is ValueError
    with pytest.raises(ValueError, match=f"record {odd or 1}\\b"):
        BatchDecoder().decode(ValueJoiner().take(iter(bufs), len(bufs)))


@pytest.mark.parametrize("garbage", [0x00, 0xFF, 0x28, 0x80])
def test_tails_parsed_as_words(garbage):
    """Caffe's tails (no label, a label of 1 to 3 bytes, each with or without ``38 00``),
    followed by any bytes (the next record, or whatever lies after a record in a file's
    map): the labels, the head's label for tails without one, None for what this path does
    not parse (a 4-byte label, a stray byte)."""
    from caffe_lmdb.format.batch import _tail_labels

    cases = [(b"", 9), (b"\x38\x00", 9), (b"\x28\x05", 5), (b"\x28\x05\x38\x00", 5),
             (b"\x28\x85\x01", 133), (b"\x28\xff\x7f\x38\x00", 16383),
             (b"\x28\x80\x80\x01", 16384), (b"\x28\xff\xff\x7f\x38\x00", 2097151)]
    for tail, label in cases:
        row = np.frombuffer(tail.ljust(8, bytes([garbage])), np.uint8)[None]
        got = _tail_labels(np.repeat(row, 3, 0), np.full(3, len(tail)), 9)
        assert got is not None and got.tolist() == [label] * 3, tail
        if label == 9:  # no label in the tail: the head's, when known
            assert _tail_labels(row, np.array([len(tail)]), None) is None
    for tail in [b"\x28\x80\x80\x80\x01", b"\x28\x05\x38", b"\x28", b"\x30\x05",
                 b"\x28\x05\x38\x01"]:
        row = np.frombuffer(tail.ljust(8, bytes([garbage])), np.uint8)[None]
        assert _tail_labels(row, np.array([len(tail)]), 9) is None, tail
