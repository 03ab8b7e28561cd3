"""format.image.decoded_shape: the shape a full decode gives, found with a reduced decode.

The converters store JPEGs as they are (--encoded) and decode them only to check them and, for
SSD's convert-annoset, to write their channels, height and width. decoded_shape must agree
with a full decode on every image: sizes that are not multiples of 8, gray and colour files,
EXIF rotations, damaged files."""
import struct

import cv2
import numpy as np
import pytest

from caffe_lmdb.errors import ImageReadError
from caffe_lmdb.format.image import decoded_shape, encode_image, read_file, read_image


def jpeg(h, w, channels=3, quality=90, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels == 1 else (h, w, channels)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def with_orientation(blob, orientation):
    """The JPEG with an EXIF APP1 segment holding only the Orientation tag."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return blob[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + blob[2:]


def full(blob, gray=False):
    img, _, _ = read_image(blob, gray=gray)
    return (img.shape[0], img.shape[1], 1 if img.ndim == 2 else img.shape[2])


@pytest.mark.parametrize("gray", [False, True])
def test_agrees_with_a_full_decode_on_many_sizes(gray):
    rng = np.random.default_rng(1)
    sizes = [(1, 1), (7, 9), (8, 8), (9, 8), (17, 33), (375, 500), (500, 375), (64, 65)]
    sizes += [tuple(int(v) for v in rng.integers(1, 300, 2)) for _ in range(20)]
    for k, (h, w) in enumerate(sizes):
        for channels in (1, 3):
            blob = jpeg(h, w, channels, seed=k)
            shape, data, name = decoded_shape(blob, gray=gray)
            assert shape == full(blob, gray), (h, w, channels)
            assert data == blob and name is None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotation_as_opencv_applies_it(orientation):
    for h, w in [(40, 100), (100, 40), (57, 61), (64, 64)]:
        blob = with_orientation(jpeg(h, w), orientation)
        assert decoded_shape(blob)[0] == full(blob), (h, w, orientation)


def test_a_file_path_is_read_once_and_named(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg(30, 50))
    shape, data, name = decoded_shape(str(path))
    assert shape == (30, 50, 3) and data == path.read_bytes() and name == str(path)
    other = jpeg(20, 10)
    shape, data, name = decoded_shape(str(path), data=other)  # data given: the file not read
    assert shape == (20, 10, 3) and data == other


def test_jpegs_are_not_decoded_in_full(monkeypatch):
    """The reduced decode answers for JPEGs, rotated ones included (else no gain)."""
    import caffe_lmdb.format.image as image

    def refuse(*args, **kwargs):
        raise AssertionError("decoded in full")

    monkeypatch.setattr(image, "read_image", refuse)
    assert decoded_shape(jpeg(375, 500))[0] == (375, 500, 3)
    assert decoded_shape(jpeg(375, 500), gray=True)[0] == (375, 500, 1)
    assert decoded_shape(with_orientation(jpeg(40, 100), 6))[0] == (100, 40, 3)
    assert decoded_shape(with_orientation(jpeg(40, 100), 3))[0] == (40, 100, 3)


def test_damaged_files_fail_or_pass_as_a_full_decode_does():
    blob = jpeg(120, 90)
    cases = [blob[:2] + b"\x00" * 50, blob[:40], blob[:len(blob) // 2], b"\xff\xd8\xff" + blob[3:],
             blob[:200] + bytes(300) + blob[500:], b"not an image", blob[:-2]]
    for k, case in enumerate(cases):
        try:
            want = full(case)
        except ImageReadError:
            with pytest.raises(ImageReadError):
                decoded_shape(case)
            continue
        assert decoded_shape(case)[0] == want, k


def test_encoded_pass_through_is_unchanged(tmp_path):
    """convert_imageset --encoded: the file's bytes, checked; a damaged file still refused."""
    path = tmp_path / "b.jpg"
    path.write_bytes(jpeg(45, 70))
    value = encode_image(str(path), 3, encode=True)
    assert path.read_bytes() in value
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))
    with pytest.raises(ImageReadError):
        encode_image(str(bad), 3, encode=True)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 200_000, 3 << 20])
def test_read_file_returns_every_byte(tmp_path, size):
    """read_file asks for 64 KiB first, then the rest by the file's size: files on either
    side of that boundary come back whole; a missing file is an ImageReadError naming it."""
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    assert read_file(path) == data
    with pytest.raises(ImageReadError, match="missing.jpg"):
        read_file(tmp_path / "missing.jpg")
