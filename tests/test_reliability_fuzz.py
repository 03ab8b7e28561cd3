"""Fuzzing: generated and mutated inputs for the record decoder, verify, the list-file parser
and the MNIST/CIFAR parsers. Only the tool's documented exceptions may come out, and every
result is checked against an independent oracle, so a silent wrong answer fails too:

* decoder: ``decode`` and ``parse_datum`` against the protobuf classes (the checks of
  test_decode_property.py), and ``decode_batch`` against decoding one record at a time;
* verify: the records it reports are exactly those the protobuf reference rejects;
* list files: an accepted line means what Caffe's ``atoi`` of the text after the last space
  means (the path, the label); a rejected one is a ListFileError naming its line;
* MNIST/CIFAR: every sample produced is the bytes of the file at its place (and its key).

Inputs come from seeded generators (mutations of real Caffe records, of valid files, and
random bytes). CI runs a few thousand; scripts/soak.py runs >= 100,000 per target with the same
functions (``FUZZERS``) and prints the counts.
"""
import collections
import gzip
import io
import os
import random
import re
import shutil
import struct
import time
import zlib

import cv2
import lmdb
import numpy as np
import pytest
from conftest import LMDB_FIXTURES, read_lmdb
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decode_property import check_agrees, fields_of, reference

from caffe_lmdb.errors import (
    CaffeLMDBError,
    DatumDecodeError,
    ImageReadError,
    KeyTooLongError,
    ListFileError,
    NotADatumDBError,
    ShapeMismatchError,
    SourceFormatError,
)
from caffe_lmdb.format import datum as codec
from caffe_lmdb.format.batch import decode_batch
from caffe_lmdb.format.datum import datum_bytes, decode
from caffe_lmdb.format.imagesize import check_image
from caffe_lmdb.tools.dbinfo import verify
from caffe_lmdb.write.sources import CifarSource, ListFileSource, MnistSource, parse_list_line

# --------------------------------------------------------------------------------------------
# Seeds and mutations
# --------------------------------------------------------------------------------------------


def synthetic_seeds():
    """Records of every kind the codec meets, made here (no fixtures needed)."""
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    seeds = [
        datum_bytes(3, 9, 11, data=img.transpose(2, 0, 1).tobytes(), label=3, encoded=False),
        datum_bytes(1, 28, 28, data=rng.bytes(784), label=7),             # MNIST style
        datum_bytes(3, 32, 32, data=rng.bytes(3072), label=0),            # CIFAR style
        datum_bytes(10, 1, 1, float_data=rng.standard_normal(10)),        # features
        datum_bytes(2, 3, 4, float_data=rng.standard_normal(24), label=-5),
        datum_bytes(label=1),
        b"\x08\x02\x10\x01\x18\x02\x32\x08" + np.float32([1, 2]).tobytes(),  # packed floats
    ]
    for ext in (".png", ".jpg", ".bmp", ".webp"):
        seeds.append(datum_bytes(data=cv2.imencode(ext, img)[1].tobytes(), label=2,
                                 encoded=True))
    seeds.append(datum_bytes(data=cv2.imencode(".png", img[:, :, 0])[1].tobytes(), label=4,
                             encoded=True))
    return seeds


def fixture_seeds(fixtures_dir):
    """A few records of each database written by the real Caffe tools."""
    seeds = []
    for name in LMDB_FIXTURES:
        pairs = read_lmdb(os.path.join(fixtures_dir, name))
        seeds += [v for _, v in pairs[:: max(1, len(pairs) // 6)]]
    return seeds


def mutate(rng, data):
    """1 to 4 random edits of ``data``: flips, byte values, inserts, deletes, truncation,
    duplicated or spliced ranges, varint fields set to odd values."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        at = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(at, len(buf) - 1)] = rng.choice([0, 0xFF, 0x80, 0x7F, rng.randrange(256)])
        elif op == 2:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del buf[at:at + rng.randint(1, 16)]
        elif op == 4:
            del buf[at:]
        elif op == 5 and buf:
            a = rng.randrange(len(buf))
            buf[at:at] = buf[a:a + rng.randint(1, 32)]
        elif op == 6:  # a scalar field (channels, height, width, label, encoded) set anew
            field = rng.choice([1, 2, 3, 5, 7])
            value = rng.choice([0, 1, 2, -1, 1 << 31, (1 << 31) - 1, 1 << 40, rng.randrange(64)])
            buf += bytes([field << 3]) + codec.write_varint(value & ((1 << 64) - 1))
        elif op == 7:  # an unknown field, a group, a fixed64
            buf += rng.choice([b"\x80\x01\x05", b"\x83\x01\x84\x01", b"\x91\x01" + bytes(8),
                               b"\xfa\x3e\x02ab"])
        else:
            buf = bytearray(bytes(buf[:at]) + bytes(rng.choice([b"\x35", b"\x22\x05", b"\x0b"])))
    return bytes(buf)


_BOMB = 4_000_000  # pixels: a mutated encoded record declaring more is not decoded (see below)


def _decodes_cheaply(buf):
    """False for an encoded record whose image declares more than _BOMB pixels, or is a PNG
    with a chunk longer than itself: OpenCV would allocate it, up to 3 or 4 GB (the reader has
    no such check: docs/reliability.md, known limits)."""
    try:
        f = codec.parse_datum(buf)
    except DatumDecodeError:
        return True
    if not f.encoded or not f.data:
        return True
    try:
        check_image(bytes(buf[f.data[0]:f.data[0] + f.data[1]]), _BOMB)
    except ImageReadError:
        return False
    return True


def decoder_input(rng, seeds):
    """A record to decode: mostly a mutated seed, sometimes two spliced, sometimes noise."""
    while True:
        kind = rng.random()
        if kind < 0.75:
            buf = mutate(rng, rng.choice(seeds))
        elif kind < 0.9:
            a, b = rng.choice(seeds), rng.choice(seeds)
            buf = a[:rng.randrange(len(a) + 1)] + b[rng.randrange(len(b) + 1):]
        else:
            buf = rng.randbytes(rng.randrange(64))
        if _decodes_cheaply(buf):
            return buf


# --------------------------------------------------------------------------------------------
# Targets: each ``fuzz_<target>(rng, n, ctx)`` feeds n inputs and returns how many it fed
# --------------------------------------------------------------------------------------------


def check_decoder(buf, notes=None):
    check_agrees(buf)  # decode and parse_datum agree with protobuf, or both reject
    for color in (True, False):
        try:
            decode(buf, color)
        except DatumDecodeError:
            pass


def fuzz_decoder(rng, n, ctx):
    for _ in range(n):
        check_decoder(decoder_input(rng, ctx["seeds"]), ctx["notes"])
    return n


def _one_at_a_time(bufs):
    """(decoded records, None), or (the records before it, the error type decode_batch must
    raise): DatumDecodeError for the first record that fails alone, ShapeMismatchError for the
    first that differs from record 0 in shape or dtype, whichever comes first."""
    done = []
    for buf in bufs:
        try:
            arr, label = decode(buf)
        except DatumDecodeError:
            return done, DatumDecodeError
        if done and (arr.shape, arr.dtype) != (done[0][0].shape, done[0][0].dtype):
            return done, ShapeMismatchError
        done.append((np.array(arr), label))
    return done, None


def check_batch(bufs):
    """decode_batch equals decoding one at a time, bit for bit, or raises what that meets
    first (see _one_at_a_time)."""
    singles, failure = _one_at_a_time(bufs)
    try:
        images, labels = decode_batch(bufs)
    except CaffeLMDBError as exc:
        assert failure is not None and isinstance(exc, failure), (failure, exc)
        return
    assert failure is None, f"decode_batch accepted what fails alone: {failure}"
    for i, (arr, label) in enumerate(singles):
        assert images[i].tobytes() == arr.tobytes() and labels[i] == label, f"record {i} differs"


_LABELS_VARINTS = [None, 0, 1, 127, 128, 300, 1 << 20, (1 << 31) - 1, -1, -300, -(1 << 31)]
_TAILS = [b"", b"", b"", b"\x28\x05", b"\x38\x00", b"\x80\x01\x07", b"\xfa\x3e\x00"]


def variant(rng, seed):
    """A valid record of the seed's shape written another way: other pixels or floats, a label
    of another varint length (or none), with or without ``encoded = false``, an unknown field
    or a repeated label at the end (protobuf: the last one wins)."""
    datum = codec.Datum()
    datum.ParseFromString(seed)
    shape = (datum.channels, datum.height, datum.width)
    label = rng.choice(_LABELS_VARINTS)
    if datum.data:
        data = rng.randbytes(len(datum.data)) if rng.random() < 0.5 else datum.data
        buf = datum_bytes(*shape, data=data, label=label, encoded=rng.choice([None, False]))
    else:
        floats = np.array(datum.float_data, np.float32) * np.float32(rng.uniform(-2, 2))
        buf = datum_bytes(*shape, float_data=floats, label=label)
    return buf + rng.choice(_TAILS)


def fuzz_batch(rng, n, ctx):
    """Batches from one seed: valid variants of it (one shape, byte layouts that differ, which
    the vectorized path of decode_batch has to line up) and mutants of it."""
    plain = [s for s in ctx["seeds"] if not codec.parse_datum(s).encoded]
    fed = 0
    while fed < n:
        seed = rng.choice(ctx["seeds"])
        size = rng.randint(2, 12)
        if seed in plain and rng.random() < 0.6:
            bufs = [variant(rng, seed) for _ in range(size)]
            if rng.random() < 0.3:
                bufs[rng.randrange(size)] = mutate(rng, rng.choice(bufs))
            check_batch(bufs)
            fed += size
            continue
        bufs = [seed if rng.random() < 0.6 else mutate(rng, seed) for _ in range(size)]
        bufs = [b for b in bufs if _decodes_cheaply(b)] or [seed]
        check_batch(bufs)
        fed += len(bufs)
    return fed


def _write_db(path, items):
    shutil.rmtree(path, ignore_errors=True)  # a fresh database, whatever a past run left
    env = lmdb.open(path, map_size=1 << 28)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    env.close()


def fuzz_verify(rng, n, ctx, per_db=500):
    """Databases of mutated records (and odd keys): verify never raises but for a first record
    that is not a Datum (NotADatumDBError), and lists exactly the records protobuf rejects."""
    fed, round_ = 0, 0
    while fed < n:
        count = min(per_db, n - fed)
        items = {}
        for i in range(count):
            key = b"%08d" % i
            if rng.random() < 0.05:  # unpadded numbers, odd bytes, long keys
                key = rng.choice([b"%d" % i, bytes(rng.randrange(1, 256) for _ in range(
                    rng.randint(1, 40))), b"%08d_" % i + b"x" * rng.randint(1, 400)])
            items[key] = decoder_input(rng, ctx["seeds"])
        first_valid = rng.random() < 0.9
        keys = sorted(items)
        if first_valid:
            items[keys[0]] = rng.choice(ctx["seeds"][:4])
        path = os.path.join(ctx["tmp"], f"verify{round_}")
        round_ += 1
        _write_db(path, items.items())
        bad = set()
        for key, value in items.items():
            try:
                reference(value)
            except DatumDecodeError:
                bad.add(key)
                continue
            codec.parse_datum(value)  # protobuf accepts it: so must the codec
        try:
            report = verify(path, max_listed=count + 10)
        except NotADatumDBError:
            assert keys[0] in bad or not first_valid, "a valid first record was refused"
        else:
            str(report)  # the report prints, whatever the keys hold
            flagged = {p.key for p in report.problems if p.kind in ("parse", "decode")}
            assert flagged == bad, (sorted(flagged ^ bad)[:5])
            assert report.entries == len(items)
        fed += count
        shutil.rmtree(path)
    return fed


# -- list files --------------------------------------------------------------------------------


def caffe_atoi(text):
    """C's atoi as Caffe applies it to the text after the last space."""
    m = re.match(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)", text)
    return int(m.group(1)) if m else 0


_LINE_PARTS = [b"cat/img 001.jpg", b"a.png", b"dir with  spaces/b.JPEG", b"\xff\xfe.jpg",
               b"x" * 600, b"", b"-", b"#comment"]
_LABELS = [b"0", b"7", b"-3", b"+4", b"007", b"1_000", b"1.5", b"0x10", b"2147483648",
           b"-2147483648", b" ", b"", b"\t5", b"5\t", b"\xd9\xa3", b"1e3", b"nan", b"\x00",
           b"999999999", b"2147483647", b"0000000012", b"5\r"]


def list_line(rng):
    """A list-file line (bytes, no newline) and the number of target values to parse."""
    targets = rng.choice([0, 0, 0, 1, 2])
    if rng.random() < 0.2:
        return rng.randbytes(rng.randrange(40)).replace(b"\n", b""), \
            targets
    fields = [rng.choice(_LINE_PARTS), rng.choice(_LABELS)]
    fields += [rng.choice([b"0.5", b"-1e-3", b"inf", b"1_0", b"x", b"3"]) for _ in range(
        targets if rng.random() < 0.8 else rng.randint(0, 3))]
    line = rng.choice([b" ", b"  ", b"\t"]).join(fields) if rng.random() < 0.1 else \
        b" ".join(fields)
    if rng.random() < 0.2:
        line = mutate(rng, line).replace(b"\n", b"")
    return line + (b"\r" if rng.random() < 0.1 else b""), targets


def check_list_line(raw, targets):
    """Accepted: the path and label Caffe's convert_imageset reads (find_last_of(' '), atoi),
    never a silent disagreement; rejected: ListFileError with the file and line."""
    try:
        path, label, values = parse_list_line(raw, ("list.txt", 9), targets)
    except ListFileError as exc:
        assert exc.lineno == 9 and str(exc).startswith("list.txt:9: ")
        return False
    line = raw.rstrip(b"\r")
    head = line
    for _ in range(targets):  # our extension: K float fields after the label
        head, _, value = head.rpartition(b" ")
        assert b"_" not in value
    cut = head.rindex(b" ")
    assert path == head[:cut] and path, (raw, path)
    assert label == caffe_atoi(head[cut + 1:]), (raw, label)
    assert -(1 << 31) <= label < (1 << 31)
    assert (values is None) == (targets == 0)
    return True


def fuzz_list_lines(rng, n, ctx):
    for _ in range(n):
        check_list_line(*list_line(rng))
    return n


def fuzz_list_files(rng, n, ctx, lines_per_file=(1, 30)):
    """Whole list files: a ListFileError names the first bad line, or every line becomes a
    sample with key %08d_<path>. Returns the number of lines fed."""
    fed, path = 0, os.path.join(ctx["tmp"], "list.txt")
    while fed < n:
        lines = []
        for _ in range(rng.randint(*lines_per_file)):
            raw, _ = list_line(rng) if rng.random() < 0.3 else (
                rng.choice(_LINE_PARTS[:3]) + b" " + rng.choice(_LABELS[:5]), 0)
            lines.append(raw)
        text = b"\n".join(lines) + rng.choice([b"", b"\n", b"\n\n", b"\r\n"])
        with open(path, "wb") as f:
            f.write(text)
        fed += len(lines)
        kept = text.split(b"\n")
        while kept and not kept[-1].strip():
            kept.pop()
        first_bad = None
        for i, raw in enumerate(kept):
            try:
                parse_list_line(raw, (path, i + 1))
            except ListFileError:
                first_bad = i + 1
                break
        try:
            source = ListFileSource(ctx["tmp"], path)
        except ListFileError as exc:
            assert exc.lineno == first_bad, (exc.lineno, first_bad)
            continue
        except KeyTooLongError as exc:
            assert first_bad is None and "--index_keys" in str(exc)
            continue
        assert first_bad is None
        samples = list(source.samples())
        assert len(samples) == len(source) == len(kept)
        for i, (sample, raw) in enumerate(zip(samples, kept)):
            want_path = raw.rstrip(b"\r").rpartition(b" ")[0]
            assert sample.key == b"%08d_" % i + want_path
            assert sample.label == parse_list_line(raw, (path, i + 1))[1]
    return fed


# -- MNIST and CIFAR ---------------------------------------------------------------------------


def _maybe_damage(rng, data):
    r = rng.random()
    if r < 0.3:
        return data
    if r < 0.5:
        return data[:rng.randrange(len(data) + 1)]
    if r < 0.6:
        return data + rng.randbytes(rng.randint(1, 50))
    return mutate(rng, data)


def _gzipped(rng, data):
    if rng.random() < 0.7:
        return data
    packed = gzip.compress(data, mtime=0)
    return _maybe_damage(rng, packed) if rng.random() < 0.5 else packed


def _inflate(data):
    """What a streaming gunzip (Python's gzip module, as the parser uses) gets out of data
    before any damage: the bytes as the parser reads them."""
    if data[:2] != b"\x1f\x8b":
        return data
    out = []
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        while True:  # a byte at a time: keep all that comes before the damage
            try:
                byte = f.read(1)
            except (OSError, EOFError, zlib.error):
                break
            if not byte:
                break
            out.append(byte)
    return b"".join(out)


def _mnist_pair(rng):
    n, rows, cols = rng.randint(0, 12), rng.randint(0, 9), rng.randint(0, 9)
    header = [2051, n, rows, cols]
    if rng.random() < 0.4:  # a header field set anew: huge counts, huge images, wrong magic
        header[rng.randrange(4)] = rng.choice([0, 1, 2049, 2050, 60000, 65535, 1 << 31,
                                               (1 << 32) - 1, rng.randrange(1 << 32)])
    images = struct.pack(">IIII", *header) + rng.randbytes(n * rows * cols)
    lheader = [2049, n if rng.random() < 0.9 else rng.randrange(20)]
    labels = struct.pack(">II", *lheader) + rng.randbytes(n)
    return _gzipped(rng, _maybe_damage(rng, images)), _gzipped(rng, _maybe_damage(rng, labels))


def check_mnist(images_path, labels_path):
    """SourceFormatError, or samples that are the files' bytes: image i is the rows x cols
    bytes at 16 + i * rows * cols, its label the byte at 8 + i, its key %08d."""
    try:
        source = MnistSource(images_path, labels_path)
        samples = []
        for sample in source.samples():
            samples.append(sample)
    except SourceFormatError:
        return False
    with open(images_path, "rb") as f:
        images = _inflate(f.read())
    with open(labels_path, "rb") as f:
        labels = _inflate(f.read())
    size = source.rows * source.cols
    assert len(samples) == len(source) == source.count
    for i, s in enumerate(samples):
        assert s.key == b"%08d" % i and s.shape == (1, source.rows, source.cols)
        assert s.data == images[16 + i * size:16 + (i + 1) * size]
        assert s.label == labels[8 + i]
    return True


def fuzz_mnist(rng, n, ctx):
    images_path = os.path.join(ctx["tmp"], "images-idx3-ubyte")
    labels_path = os.path.join(ctx["tmp"], "labels-idx1-ubyte")
    for _ in range(n):
        images, labels = _mnist_pair(rng)
        with open(images_path, "wb") as f:
            f.write(images)
        with open(labels_path, "wb") as f:
            f.write(labels)
        check_mnist(images_path, labels_path)
    return n


def check_cifar(folder, split):
    """SourceFormatError, or samples that are the files' bytes: record j of batch file k is
    the 3073 bytes at 3073 * j, label first, key %05d of k * 10000 + j."""
    try:
        source = CifarSource(folder, split)
        samples = list(source.samples())
    except SourceFormatError:
        return False
    assert len(samples) == len(source)
    i = 0
    for k, path in enumerate(source.files):
        with open(path, "rb") as f:
            data = f.read()
        for j in range(len(data) // 3073):
            s = samples[i]
            assert s.index == i and s.key == b"%05d" % (k * 10000 + j)
            assert s.label == data[3073 * j] and s.data == data[3073 * j + 1:3073 * (j + 1)]
            i += 1
    assert i == len(samples)
    return True


def fuzz_cifar(rng, n, ctx):
    folder = os.path.join(ctx["tmp"], "cifar")
    os.makedirs(folder, exist_ok=True)
    for _ in range(n):
        split = "test" if rng.random() < 0.8 else "train"
        names = ["test_batch.bin"] if split == "test" else [f"data_batch_{k}.bin"
                                                            for k in range(1, 6)]
        for name in os.listdir(folder):
            os.remove(os.path.join(folder, name))
        for name in names:
            if rng.random() < 0.03:
                continue  # a missing batch file
            records = rng.randint(0, 3)
            data = rng.randbytes(3073 * records)
            if rng.random() < 0.3:
                data = _maybe_damage(rng, data)
            with open(os.path.join(folder, name), "wb") as f:
                f.write(data)
        check_cifar(folder, split)
    return n


FUZZERS = {
    "decoder": fuzz_decoder,
    "decode_batch": fuzz_batch,
    "verify": fuzz_verify,
    "list_lines": fuzz_list_lines,
    "list_files": fuzz_list_files,
    "mnist": fuzz_mnist,
    "cifar": fuzz_cifar,
}


def run_fuzzer(name, n, seed, tmp, seeds):
    """Feed ``n`` inputs to one target; returns (inputs fed, seconds, notes: a Counter of
    known divergences met)."""
    os.makedirs(tmp, exist_ok=True)
    notes = collections.Counter()
    t0 = time.perf_counter()
    fed = FUZZERS[name](random.Random(f"{name}:{seed}"), n,
                        {"seeds": seeds, "tmp": tmp, "notes": notes})
    return fed, time.perf_counter() - t0, notes


# --------------------------------------------------------------------------------------------
# The CI run: a few thousand inputs per target (scripts/soak.py: >= 100,000)
# --------------------------------------------------------------------------------------------

FUZZ_SEED = int(os.environ.get("CAFFE_LMDB_FUZZ_SEED", "5"))
CI_COUNTS = {"decoder": 10_000, "decode_batch": 5000, "verify": 5000, "list_lines": 20_000,
             "list_files": 5000, "mnist": 2000, "cifar": 2000}


@pytest.fixture(scope="module")
def seeds(fixtures):
    return synthetic_seeds() + fixture_seeds(fixtures)


@pytest.mark.parametrize("name", list(FUZZERS))
def test_fuzz(name, seeds, tmp_path):
    fed, _, _ = run_fuzzer(name, CI_COUNTS[name], FUZZ_SEED, str(tmp_path), seeds)
    assert fed >= CI_COUNTS[name]


@settings(max_examples=int(os.environ.get("CAFFE_LMDB_FUZZ_EXAMPLES", "300")), deadline=None)
@given(st.binary(max_size=40), st.integers(0, 2))
def test_list_lines_property(raw, targets):
    check_list_line(raw.replace(b"\n", b""), targets)


# --------------------------------------------------------------------------------------------
# What the fuzzers found (each fails without its fix)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [b"1_000", b"1_0", b"+1_2"])
def test_a_label_python_reads_but_caffe_does_not_is_an_error(label):
    """int() accepts "1_000" (1000) where Caffe's atoi reads 1: a silent disagreement."""
    with pytest.raises(ListFileError, match="is not an integer"):
        parse_list_line(b"cat.jpg " + label, ("list.txt", 3))
    with pytest.raises(ListFileError, match="not all numbers"):
        parse_list_line(b"cat.jpg 1 2_5", ("list.txt", 3), targets=1)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("header, message", [
    ((2051, 60000, 65535, 65535), "too large for a Datum"),   # was a MemoryError
    ((2051, 3, 1 << 31, 0), "too large for a Datum"),         # was a ValueError mid-conversion
    ((2051, 1000, 28, 28), "declares 1000 images of 28 x 28"),  # found only after writing
])
def test_mnist_headers_that_do_not_fit_the_file(tmp_path, header, message):
    images = _write(tmp_path / "i", struct.pack(">IIII", *header) + bytes(784 * 2))
    labels = _write(tmp_path / "l", struct.pack(">II", 2049, header[1]) + bytes(2))
    with pytest.raises(SourceFormatError, match=message):
        MnistSource(images, labels)


def test_a_damaged_gzip_is_a_source_format_error(tmp_path):
    """zlib.error, EOFError and BadGzipFile came out as they were."""
    good = gzip.compress(struct.pack(">IIII", 2051, 50, 28, 28) + bytes(50 * 784), mtime=0)
    labels = _write(tmp_path / "l", struct.pack(">II", 2049, 50) + bytes(50))
    damaged = {"cut": good[:len(good) // 2], "flipped": good[:30] + bytes([good[30] ^ 0x55])
               + good[31:], "not gzip": b"\x1f\x8b" + b"\x00" * 40}
    for name, data in damaged.items():
        images = _write(tmp_path / name, data)
        with pytest.raises(SourceFormatError, match="gzip|ends inside|not an MNIST"):
            list(MnistSource(images, labels).samples())


def test_a_missing_list_file_is_one_line_from_the_command(tmp_path, capsys):
    from caffe_lmdb.cli import main

    assert main(["convert-imageset", f"{tmp_path}/", str(tmp_path / "nope.txt"),
                 str(tmp_path / "db")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("caffe-lmdb: ") and "nope.txt" in err and err.count("\n") == 1


def test_a_one_byte_value_0x80_is_described_not_a_crash(tmp_path):
    """describe_bytes read a second byte that was not there: verify (and open, when it was the
    first record) raised IndexError."""
    from caffe_lmdb.format.sniff import describe_bytes

    assert describe_bytes(b"\x80") == "binary data starting 80"
    _write_db(str(tmp_path / "db"), [(b"0", datum_bytes(1, 1, 1, data=b"x", label=0)),
                                     (b"1", b"\x80")])
    report = verify(str(tmp_path / "db"))
    assert [(p.kind, p.key) for p in report.problems] == [("parse", b"1")]
    _write_db(str(tmp_path / "first"), [(b"0", b"\x80")])
    with pytest.raises(NotADatumDBError, match="binary data starting 80"):
        verify(str(tmp_path / "first"))


@pytest.mark.parametrize("record", [
    # float_data tag 0x35 written as a two-byte varint (b5 00): protobuf reads it as the same tag
    "080110011801" "b500" "00004018",
    "080210011801" "b500" "0000803f" "35" "00000040",
])
def test_a_long_float_tag_does_not_poison_the_header_cache(record):
    """The header cache kept the bytes before the float tag assuming a one-byte tag: after a
    record with a longer (overlong) tag, the next records with the same start were parsed from
    the middle of the tag ("invalid field number 0") though protobuf accepts them."""
    buf = bytes.fromhex(record)
    for _ in range(3):  # the first parse fills the cache, the next ones use it
        check_agrees(buf)


def test_field_zero_in_a_group_is_treated_as_protobuf_does():
    """Inside an unknown group, Python's protobuf (upb) skips a field-0 tag of a scalar wire
    type and rejects one that opens or closes a group; the codec follows it (C++ protobuf,
    which Caffe uses, rejects them all: such records never come from Caffe's tools)."""
    for record in ("0800" "0b" "0000" "0c", "2801" "8301" "01" "0000000000000000" "8401",
                   "0b" "0561626364" "0c", "0b" "020161" "0c"):
        buf = bytes.fromhex(record)
        fields_of(buf)  # upb accepts
        codec.parse_datum(buf)
        check_decoder(buf)
    for record in ("0b" "03" "0c", "0b" "04" "0c", "0000"):
        buf = bytes.fromhex(record)
        with pytest.raises(DecodeError):
            fields_of(buf)
        with pytest.raises(DatumDecodeError):
            codec.parse_datum(buf)
