"""Contact sheets (caffe-lmdb show) and dataset plots (info --plot): pixels where they can be
known (tile colours in order, boxes at their coordinates, text regions), sizes, PNG output."""
import cv2
import numpy as np
import pytest
from helpers import float_db, write_lmdb

import caffe_lmdb
from caffe_lmdb.cli import main
from caffe_lmdb.errors import CaffeLMDBError, ListFileError, OptionError
from caffe_lmdb.format.datum import array_to_datum_bytes, datum_bytes
from caffe_lmdb.tools import show
from caffe_lmdb.tools.show import (
    HEADER,
    LINE,
    PAD,
    contact_sheet,
    dataset_stats,
    draw_boxes,
    draw_targets,
    find_labels,
    plot_stats,
    read_labels,
    sheet_size,
)

BG = np.array(show._BG, np.uint8)
TILE_BG = np.array(show._TILE_BG, np.uint8)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# distinct flat BGR colours
COLORS = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
          (10, 20, 30), (200, 100, 50), (90, 180, 240), (255, 255, 255), (0, 0, 0),
          (128, 64, 32), (33, 66, 99)]


def flat(color, h=8, w=8):
    """A (3, h, w) uint8 BGR record of one colour."""
    return np.broadcast_to(np.array(color, np.uint8)[:, None, None], (3, h, w)).copy()


def colour_db(path, colors, keys=None, shape=(8, 8), labels=None):
    keys = keys or [b"%08d" % i for i in range(len(colors))]
    labels = labels if labels is not None else [i % 3 for i in range(len(colors))]
    write_lmdb(path, [(k, array_to_datum_bytes(flat(c, *shape), int(lab)))
                      for k, c, lab in zip(keys, colors, labels, strict=True)])
    return str(path)


def cell_origin(j, columns, tile, lines):
    """Top-left corner of tile j's image area (the documented geometry)."""
    r, q = divmod(j, columns)
    return q * (tile + 2 * PAD) + PAD, HEADER + r * (tile + 2 * PAD + lines * LINE) + PAD


def centre(sheet, j, columns, tile, lines=3):
    x, y = cell_origin(j, columns, tile, lines)
    return sheet[y + tile // 2, x + tile // 2]


def text_region(sheet, j, columns, tile, line, lines=3):
    """The pixels of text line ``line`` (0-based) under tile j."""
    x, y = cell_origin(j, columns, tile, lines)
    top = y + tile + PAD + line * LINE
    return sheet[top:top + LINE, x:x + tile]


def inked(region):
    return int((np.abs(region.astype(int) - BG.astype(int)).sum(axis=2) > 60).sum())


# ---------------------------------------------------------------------------------------------
# Tiles in order, true colour
# ---------------------------------------------------------------------------------------------


def test_flat_colours_in_key_order(tmp_path):
    db = colour_db(tmp_path / "db", COLORS)
    sheet = contact_sheet(db, n=len(COLORS), tile=32, columns=5)
    for j, color in enumerate(COLORS):
        assert tuple(centre(sheet, j, 5, 32)) == color, j


def test_start_and_positions(tmp_path):
    db = colour_db(tmp_path / "db", COLORS)
    sheet = contact_sheet(db, n=4, start=6, tile=16, columns=4)
    assert [tuple(centre(sheet, j, 4, 16)) for j in range(4)] == COLORS[6:10]
    sheet = contact_sheet(db, positions=[12, 0, -1, 3], tile=16, columns=4)
    assert [tuple(centre(sheet, j, 4, 16)) for j in range(4)] == \
        [COLORS[12], COLORS[0], COLORS[12], COLORS[3]]
    # past the end: the sheet holds what there is
    sheet, info = contact_sheet(db, n=64, start=10, tile=16, return_info=True)
    assert info.positions == [10, 11, 12]


def test_unpadded_keys_show_in_cursor_order(tmp_path):
    """The classic mistake: keys str(i) come back as 0, 1, 10, 11, 12, 2, 3, ..."""
    colors = COLORS[:13]
    db = colour_db(tmp_path / "db", colors, keys=[str(i).encode() for i in range(13)])
    sheet = contact_sheet(db, n=13, tile=16, columns=13)
    order = [0, 1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [tuple(centre(sheet, j, 13, 16)) for j in range(13)] == [colors[i] for i in order]


def test_aspect_ratio_and_scaling(tmp_path):
    items = [(b"0", array_to_datum_bytes(flat((0, 0, 255), 4, 16), 0)),      # wide, tiny
             (b"1", array_to_datum_bytes(flat((0, 255, 0), 300, 100), 1)),   # tall, large
             (b"2", array_to_datum_bytes(flat((255, 0, 0), 7, 7), 2))]       # 64 // 7 = 9x
    write_lmdb(tmp_path / "db", items)
    tile = 64
    sheet = contact_sheet(str(tmp_path / "db"), tile=tile, columns=3)
    # wide 4x16 -> enlarged 4x (nearest): 16 rows x 64 columns, centred vertically
    x, y = cell_origin(0, 3, tile, 3)
    area = sheet[y:y + tile, x:x + tile]
    red = np.all(area == (0, 0, 255), axis=2)
    assert red.sum() == 16 * 64
    rows = np.flatnonzero(red.any(axis=1))
    assert rows[0] == 24 and rows[-1] == 39
    assert (area[0] == TILE_BG).all() and (area[-1] == TILE_BG).all()
    # tall 300x100 -> reduced to 64 x 21, aspect kept
    x, y = cell_origin(1, 3, tile, 3)
    green = np.all(sheet[y:y + tile, x:x + tile] == (0, 255, 0), axis=2)
    assert green.any(axis=1).sum() == 64 and green.any(axis=0).sum() == round(100 * 64 / 300)
    # 7x7 -> 63x63 (an integer factor, so every source pixel is 9x9)
    x, y = cell_origin(2, 3, tile, 3)
    blue = np.all(sheet[y:y + tile, x:x + tile] == (255, 0, 0), axis=2)
    assert blue.sum() == 63 * 63


def test_small_pixels_stay_sharp(tmp_path):
    """Nearest-neighbour enlargement: a 2x2 checker stays four flat blocks."""
    checker = np.zeros((3, 2, 2), np.uint8)
    checker[:, 0, 0] = checker[:, 1, 1] = 255
    write_lmdb(tmp_path / "db", [(b"0", array_to_datum_bytes(checker, 0))])
    sheet = contact_sheet(str(tmp_path / "db"), tile=32, columns=1)
    x, y = cell_origin(0, 1, 32, 3)
    area = sheet[y:y + 32, x:x + 32, 0]
    assert (area[:16, :16] == 255).all() and (area[:16, 16:] == 0).all()
    assert (area[16:, :16] == 0).all() and (area[16:, 16:] == 255).all()


def test_gray_and_encoded_records(tmp_path):
    gray = np.full((1, 6, 6), 77, np.uint8)
    png_color = cv2.imencode(".png", flat((10, 200, 30)).transpose(1, 2, 0))[1].tobytes()
    png_gray = cv2.imencode(".png", np.full((6, 6), 150, np.uint8))[1].tobytes()
    jpg = cv2.imencode(".jpg", flat((40, 90, 220), 16, 16).transpose(1, 2, 0),
                       [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    items = [(b"0", array_to_datum_bytes(gray, 0)),
             (b"1", datum_bytes(data=png_color, label=1, encoded=True)),
             (b"2", datum_bytes(data=png_gray, label=2, encoded=True)),
             (b"3", datum_bytes(data=jpg, label=3, encoded=True))]
    write_lmdb(tmp_path / "db", items)
    sheet, info = contact_sheet(str(tmp_path / "db"), tile=24, columns=4, return_info=True)
    assert not info.errors
    assert tuple(centre(sheet, 0, 4, 24)) == (77, 77, 77)
    assert tuple(centre(sheet, 1, 4, 24)) == (10, 200, 30)
    assert tuple(centre(sheet, 2, 4, 24)) == (150, 150, 150)
    assert np.abs(centre(sheet, 3, 4, 24).astype(int) - (40, 90, 220)).max() <= 3


def test_large_jpeg_decoded_reduced_keeps_colour_and_size_text(tmp_path):
    img = np.zeros((600, 800, 3), np.uint8)
    img[:, :400] = (0, 0, 255)
    img[:, 400:] = (255, 0, 0)
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    write_lmdb(tmp_path / "db", [(b"0", datum_bytes(data=jpg, label=0, encoded=True))])
    sheet, info = contact_sheet(str(tmp_path / "db"), tile=64, columns=1, return_info=True)
    x, y = cell_origin(0, 1, 64, 3)
    assert np.abs(sheet[y + 32, x + 10].astype(int) - (0, 0, 255)).max() <= 8
    assert np.abs(sheet[y + 32, x + 54].astype(int) - (255, 0, 0)).max() <= 8
    assert show._Record  # the size line reads the header's 800x600, not the reduced decode
    recs = [show._Record(0, b"0")]
    show._read_records(caffe_lmdb.open(str(tmp_path / "db")), recs, 64, "BGR")
    assert recs[0].size == "800x600 jpg" and recs[0].image.shape[:2] == (75, 100)


def test_rgb_channel_order(tmp_path):
    db = colour_db(tmp_path / "db", [(0, 0, 255)])
    sheet = contact_sheet(db, tile=16, channel_order="RGB")
    assert tuple(centre(sheet, 0, 1, 16)) == (255, 0, 0)


def test_same_pixels_as_caffe_decoded_fixture(fixtures):
    """The passthrough database (original files) and Caffe's raw decode of them give the same
    tiles: encoded records are decoded as Caffe does, gray PNGs shown in true gray."""
    a = contact_sheet(str(fixtures / "imageset_encoded_passthrough"), n=24, tile=96, columns=6)
    b = contact_sheet(str(fixtures / "imageset_raw_native"), n=24, tile=96, columns=6)
    assert a.shape == b.shape
    for j in range(24):
        x, y = cell_origin(j, 6, 96, 3)
        assert np.array_equal(a[y:y + 96, x:x + 96], b[y:y + 96, x:x + 96]), j


# ---------------------------------------------------------------------------------------------
# Text, size, PNG
# ---------------------------------------------------------------------------------------------


def test_text_regions(tmp_path):
    colors = COLORS[:6]
    db = colour_db(tmp_path / "db", colors, labels=[0, 1, 0, 1, 0, 1])
    sheet = contact_sheet(db, n=6, tile=64, columns=6, labels=["cat", "dog"])
    for j in range(6):
        for line in range(3):  # position + key, label, size
            assert inked(text_region(sheet, j, 6, 64, line)) > 10, (j, line)
    # the label line: the same text gives the same pixels, another label other pixels
    labels = [text_region(sheet, j, 6, 64, 1) for j in range(6)]
    assert np.array_equal(labels[0], labels[2]) and np.array_equal(labels[1], labels[3])
    assert not np.array_equal(labels[0], labels[1])
    # the class names are used: the label line differs from a sheet without names
    plain = contact_sheet(db, n=6, tile=64, columns=6, labels=False)
    assert not np.array_equal(text_region(plain, 0, 6, 64, 1), labels[0])
    # the key lines differ from tile to tile (positions and keys)
    assert not np.array_equal(text_region(sheet, 0, 6, 64, 0), text_region(sheet, 1, 6, 64, 0))


def test_png_of_documented_size(tmp_path):
    db = colour_db(tmp_path / "db", [COLORS[i % len(COLORS)] for i in range(70)])
    out = tmp_path / "sheet.png"
    sheet = contact_sheet(db, out=out)  # 64 tiles of 96: 8 x 8
    assert sheet.shape == (22 + 8 * (96 + 8 + 3 * 14), 8 * (96 + 8), 3) == (1190, 832, 3)
    assert sheet_size(64) == (832, 1190)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert np.array_equal(cv2.imread(str(out), cv2.IMREAD_UNCHANGED), sheet)
    assert not (tmp_path / "sheet.png.part").exists()
    sheet = contact_sheet(db, n=10, tile=40, columns=3)
    assert sheet.shape[:2] == (sheet_size(10, 40, 3)[1], sheet_size(10, 40, 3)[0])
    assert sheet.shape[:2] == (22 + 4 * (48 + 42), 3 * 48)


def test_shuffle_is_reproducible(tmp_path):
    db = colour_db(tmp_path / "db", [COLORS[i % len(COLORS)] for i in range(200)])
    a, info_a = contact_sheet(db, n=16, shuffle=True, seed=5, tile=16, return_info=True)
    b, info_b = contact_sheet(db, n=16, shuffle=True, seed=5, tile=16, return_info=True)
    c, info_c = contact_sheet(db, n=16, shuffle=True, seed=6, tile=16, return_info=True)
    assert np.array_equal(a, b) and info_a.positions == info_b.positions
    assert info_a.positions != info_c.positions
    assert info_a.positions == sorted(set(info_a.positions)) and len(info_a.positions) == 16
    assert info_a.positions != list(range(16))
    # without a seed, the seed drawn is reported and redraws the same sheet
    d, info_d = contact_sheet(db, n=16, shuffle=True, tile=16, return_info=True)
    again = contact_sheet(db, n=16, shuffle=True, seed=info_d.seed, tile=16)
    assert np.array_equal(d, again)


def test_reads_only_what_it_shows(tmp_path):
    """Records after those shown are not even parsed: garbage there does not matter."""
    items = [(b"%08d" % i, array_to_datum_bytes(flat(COLORS[i]), i)) for i in range(4)]
    items += [(b"%08d" % i, b"\xff garbage, not a Datum") for i in range(4, 50)]
    write_lmdb(tmp_path / "db", items)
    sheet, info = contact_sheet(str(tmp_path / "db"), n=4, tile=16, return_info=True)
    assert not info.errors
    assert [tuple(centre(sheet, j, 2, 16)) for j in range(4)] == COLORS[:4]


def test_broken_record_gets_an_error_tile(tmp_path):
    items = [(b"0", array_to_datum_bytes(flat(COLORS[0]), 0)),
             (b"1", datum_bytes(data=b"\xff\xd8\xff not really a jpeg", label=1, encoded=True)),
             (b"2", array_to_datum_bytes(flat(COLORS[2]), 2))]
    write_lmdb(tmp_path / "db", items)
    sheet, info = contact_sheet(str(tmp_path / "db"), tile=16, columns=3, return_info=True)
    assert [p for p, _k, _m in info.errors] == [1]
    assert tuple(centre(sheet, 0, 3, 16)) == COLORS[0]
    assert tuple(centre(sheet, 2, 3, 16)) == COLORS[2]
    assert "could not be decoded" in str(info)


# ---------------------------------------------------------------------------------------------
# Float records
# ---------------------------------------------------------------------------------------------


def test_float_heat_map(tmp_path):
    arr = np.zeros((2, 2, 4, 4), np.float32)
    arr[:, 1] = 10.0                      # channel 0 low, channel 1 high
    arr[1, 0, 0, 0] = np.nan
    float_db(tmp_path / "f", arr)
    sheet, info = contact_sheet(str(tmp_path / "f"), tile=36, columns=2, return_info=True)
    lines = 4  # + the value range
    assert sheet.shape[0] == HEADER + (36 + 8 + lines * LINE)
    x, y = cell_origin(0, 2, 36, lines)
    # the two channels side by side (grid 2 x 1, 1-pixel gap): 9 x 4 mosaic, enlarged 4x
    low = tuple(cv2.applyColorMap(np.array([[0]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0])
    high = tuple(cv2.applyColorMap(np.array([[255]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0])
    assert tuple(sheet[y + 10, x + 8]) == low
    assert tuple(sheet[y + 10, x + 28]) == high
    assert inked(text_region(sheet, 0, 2, 36, 3, lines)) > 5  # the range line
    # NaN is magenta, and the range says so
    x, y = cell_origin(1, 2, 36, lines)
    assert (np.all(sheet[y:y + 36, x:x + 36] == (255, 0, 255), axis=2)).sum() == 16
    recs = [show._Record(1, b"0000000001")]
    show._read_records(caffe_lmdb.open(str(tmp_path / "f")), recs, 36, "BGR")
    assert recs[0].value_range == "0..10 1 nan/inf" and recs[0].label is None


def test_float_bar_plot(tmp_path):
    values = np.array([1.0, -1.0, 2.0, 0.0], np.float32).reshape(1, 4, 1, 1)
    float_db(tmp_path / "f", values)
    sheet = contact_sheet(str(tmp_path / "f"), tile=32, columns=1)
    x, y = cell_origin(0, 1, 32, 4)
    area = sheet[y:y + 32, x:x + 32].astype(int)
    bar = np.array((235, 200, 120))

    def is_bar(px, py):
        return np.abs(area[py, px] - bar).max() < 10

    # value 2 reaches the top, value 1 the middle of the positive part, -1 goes below zero
    assert is_bar(2 * 8 + 3, 4) and not is_bar(0 * 8 + 3, 4)
    assert is_bar(0 * 8 + 3, 15) and not is_bar(1 * 8 + 3, 15)
    assert is_bar(1 * 8 + 3, 26) and not is_bar(0 * 8 + 3, 26)


def test_many_values_bar_plot_bins(tmp_path):
    values = np.zeros((1, 1000, 1, 1), np.float32)
    values[0, 500] = 5.0
    float_db(tmp_path / "f", values)
    img = show._bar_tile(values[0].ravel(), 32)
    tall = np.flatnonzero(np.all(img[3] == (235, 200, 120), axis=1))
    assert list(tall) == [16]


# ---------------------------------------------------------------------------------------------
# Boxes and targets
# ---------------------------------------------------------------------------------------------


def test_draw_boxes_at_coordinates():
    img = np.zeros((100, 200, 3), np.uint8)
    rows = np.array([[3, 0, 0.2, 0.3, 0.6, 0.8, 0]])
    draw_boxes(img, rows, {3: "bird"})
    color = show._box_color(3)
    # edges at x = 40 and 120, y = 30 and 80
    for px, py in ((40, 60), (120, 60), (80, 30), (80, 80), (120, 75)):
        assert tuple(img[py, px]) == color, (px, py)
    assert not img[60:75, 60:110].any()          # inside, away from the name: untouched
    assert not img[:25].any() and not img[85:].any() and not img[:, 125:].any()
    assert img[32:42, 41:70].any()              # the name, in the top-left corner


def test_difficult_boxes_are_dashed():
    solid = draw_boxes(np.zeros((100, 100, 3), np.uint8), [[1, 0, 0.1, 0.1, 0.9, 0.9, 0]],
                       text=False)
    dashed = draw_boxes(np.zeros((100, 100, 3), np.uint8), [[1, 0, 0.1, 0.1, 0.9, 0.9, 1]],
                        text=False)
    top_solid = solid[10, 10:91].any(axis=1)
    top_dashed = dashed[10, 10:91].any(axis=1)
    assert top_solid.all()
    assert 0.4 < top_dashed.mean() < 0.8
    left = dashed[10:91, 10].any(axis=1)
    assert 0.4 < left.mean() < 0.8


def test_draw_boxes_checks_shape_and_clips():
    img = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="rows of"):
        draw_boxes(img, np.zeros((2, 3)))
    draw_boxes(img, np.zeros((0, 7)))
    draw_boxes(img, [[0, 0, -0.5, -0.5, 1.5, 1.5, 0]], text=False)  # clipped to the edges
    assert img[0].any() and img[9].any() and img[:, 0].any() and img[:, 9].any()


class _DetectionDB:
    """What a reader of AnnotatedDatum records would offer: db[i] and boxes(i)."""

    def __init__(self, db, boxes):
        self.db, self._boxes = db, boxes
        self.path = db.path

    def keys(self):
        return self.db.keys()

    def __getitem__(self, i):
        return self.db[i]

    def boxes(self, i):
        return self._boxes[i]

    def close(self):
        self.db.close()


def test_sheet_draws_detection_boxes(tmp_path):
    db = caffe_lmdb.open(colour_db(tmp_path / "db", [(0, 0, 0), (0, 0, 0)], shape=(16, 32)))
    boxes = {0: np.array([[2, 0, 0.25, 0.25, 0.75, 0.75, 0]]), 1: np.zeros((0, 7))}
    sheet, info = contact_sheet(_DetectionDB(db, boxes), tile=64, columns=2, labels=False,
                                return_info=True)
    assert not info.errors
    # 16 x 32 enlarged 2x to 32 x 64, centred: image rows 16..47
    x, y = cell_origin(0, 2, 64, 3)
    image = sheet[y + 16:y + 48, x:x + 64]
    color = show._box_color(2)
    assert tuple(image[16, 16]) == color and tuple(image[16, 48]) == color   # left, right
    assert tuple(image[20, 32]) != color
    x, y = cell_origin(1, 2, 64, 3)
    assert not sheet[y + 16:y + 48, x:x + 64].any()


def test_targets_box_and_landmarks_in_pixels(tmp_path):
    """A hand-written face database: 24x24 crops, targets x1 y1 x2 y2 + 5 (x, y) points."""
    keys = [b"%08d" % i for i in range(2)]
    colour_db(tmp_path / "db", [(0, 0, 0), (0, 0, 0)], keys=keys, shape=(24, 24))
    t = np.array([4, 5, 20, 21, 8, 9, 16, 9, 12, 13, 9, 17, 15, 17], np.float32)
    write_lmdb(tmp_path / "t", [(keys[0], datum_bytes(14, 1, 1, float_data=t))])
    sheet, info = contact_sheet(str(tmp_path / "db"), targets=str(tmp_path / "t"), tile=96,
                                columns=2, return_info=True)
    assert info.targets_found == 1
    # 14 numbers at this width take 3 lines (record 1 shows "targets: none")
    lines = (sheet.shape[0] - HEADER - 104) // LINE
    assert lines == 3 + len(show._wrap(t, 96))
    x, y = cell_origin(0, 2, 96, lines)
    area = sheet[y:y + 96, x:x + 96]
    green = (0, 255, 0)
    assert tuple(area[60, 16]) == green and tuple(area[60, 80]) == green   # x1 = 4, x2 = 20 (x4)
    assert tuple(area[20, 40]) == green and tuple(area[84, 40]) == green   # y1 = 5, y2 = 21
    for (px, py), color in zip(t[4:].reshape(5, 2) * 4, show._LANDMARK_COLORS, strict=True):
        assert tuple(area[int(py), int(px)]) == color
    assert inked(text_region(sheet, 0, 2, 96, 3, lines)) > 10   # the numbers
    assert inked(text_region(sheet, 1, 2, 96, 3, lines)) > 10   # "targets: none"


def test_targets_normalized_auto(tmp_path):
    img = np.zeros((40, 40, 3), np.uint8)
    assert draw_targets(img, [0.25, 0.25, 0.75, 0.75])
    assert tuple(img[20, 10]) == (0, 255, 0) and tuple(img[20, 30]) == (0, 255, 0)
    img = np.zeros((40, 40, 3), np.uint8)
    assert draw_targets(img, [0.25, 0.25, 0.75, 0.75], coords="pixels", scale=40)
    assert tuple(img[20, 10]) == (0, 255, 0)
    assert not draw_targets(img, [1, 2, 3])                     # neither 4 nor 14 numbers
    xxyy = np.zeros((40, 40, 3), np.uint8)
    draw_targets(xxyy, [0, 0, 1, 1] + [5, 10, 15, 20, 25, 30, 30, 30, 30, 30],
                 landmarks="xxyy")
    assert tuple(xxyy[30, 5]) == show._LANDMARK_COLORS[0]


def test_targets_from_another_database_is_an_error(tmp_path):
    db = colour_db(tmp_path / "db", COLORS[:3])
    float_db(tmp_path / "t", np.zeros((3, 4, 1, 1)))   # keys %010d, not %08d
    with pytest.raises(CaffeLMDBError, match="none of the keys"):
        contact_sheet(db, targets=str(tmp_path / "t"))


# ---------------------------------------------------------------------------------------------
# Labels files
# ---------------------------------------------------------------------------------------------


def test_labels_file_one_name_per_line(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nbird with space\n")
    assert read_labels(tmp_path / "labels.txt") == {0: "cat", 1: "dog", 3: "bird with space"}
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ListFileError, match="no class names"):
        read_labels(tmp_path / "empty.txt")


def test_labelmap_fixture(fixtures):
    names = read_labels(fixtures / "ssd" / "labelmap.prototxt")
    assert names == {0: "background", 1: "Cat", 2: "Dog", 3: "Bird", 4: "Person",
                     5: "Sports ball"}


def test_labelmap_parsing(tmp_path):
    path = tmp_path / "map.prototxt"
    path.write_text('# a comment\nitem {\n  name: "a"  # trailing\n  label: 0\n}\n'
                    "item { label: 7 name: 'b' }\nitem {\n  name: \"c\"\n}\n")
    with pytest.raises(ListFileError, match=r"map.prototxt:7: item without a label"):
        read_labels(path)
    path.write_text('item { name: "a" label: 0 }\nitem { name: "b" label: zero }\n')
    with pytest.raises(ListFileError, match=r":2: label 'zero' is not an integer"):
        read_labels(path)
    path.write_text('item { name: "a" label: 0 }\nitem { name: "b" label: 7 }\n')
    assert read_labels(path) == {0: "a", 7: "b"}


def test_labels_found_beside_the_database(tmp_path):
    db = colour_db(tmp_path / "db", COLORS[:2])
    assert find_labels(db) is None
    (tmp_path / "labels.txt").write_text("beside\n")
    assert find_labels(db) == str(tmp_path / "labels.txt")
    (tmp_path / "db" / "labels.txt").write_text("inside\n")
    assert find_labels(db) == str(tmp_path / "db" / "labels.txt")
    _sheet, info = contact_sheet(db, tile=16, return_info=True)
    assert info.labels_from == str(tmp_path / "db" / "labels.txt")
    _sheet, info = contact_sheet(db, tile=16, labels=False, return_info=True)
    assert info.labels_from is None


def test_bad_options(tmp_path):
    db = colour_db(tmp_path / "db", COLORS[:3])
    with pytest.raises(OptionError, match="tile"):
        contact_sheet(db, tile=8)
    with pytest.raises(OptionError, match="start 3 is out of range"):
        contact_sheet(db, start=3)
    with pytest.raises(OptionError, match="position 5"):
        contact_sheet(db, positions=[5])
    with pytest.raises(OptionError, match="n must be"):
        contact_sheet(db, n=0)
    with pytest.raises(OptionError, match=r"\.png"):
        contact_sheet(db, out=tmp_path / "sheet.txt")
    assert not (tmp_path / "sheet.txt").exists()


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def test_dataset_stats_and_plot(tmp_path):
    png = cv2.imencode(".png", np.zeros((30, 50, 3), np.uint8))[1].tobytes()
    items = [(b"%03d" % i, array_to_datum_bytes(flat(COLORS[0], 8, 12), i % 2 + 4))
             for i in range(9)]
    items.append((b"100", datum_bytes(data=png, label=4, encoded=True)))
    items.append((b"101", datum_bytes(1, 10**5, 10**5, label=6)))   # a header without pixels
    items.append((b"102", datum_bytes(3, 4, 4, data=b"short", label=6)))
    write_lmdb(tmp_path / "db", items)
    stats = dataset_stats(str(tmp_path / "db"))
    assert stats.labels == {4: 6, 5: 4, 6: 2} and stats.sizes == {(8, 12): 9, (30, 50): 1}
    assert stats.unreadable == 2
    assert stats.value_hist is None
    out = tmp_path / "stats.png"
    img = plot_stats(str(tmp_path / "db"), out=out)
    assert img.shape == (300, 840, 3) and out.read_bytes()[:8] == PNG_MAGIC
    # label 4 (6 records) has a bar taller than label 5 (4 records), and 6 (2 records)
    x0, y0, x1, y1 = show._PLOT
    bar = np.all(img[:, :420] == (235, 200, 120), axis=2)
    third = (x1 - x0) // 3
    heights = [bar[:, x0 + k * third:x0 + (k + 1) * third].any(axis=1).sum() for k in range(3)]
    assert heights[0] > heights[1] > heights[2] > 0
    assert abs(heights[1] / heights[0] - 4 / 6) < 0.05
    assert abs(heights[2] / heights[0] - 2 / 6) < 0.05


def test_float_value_histogram(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.normal(size=(20, 3, 2, 2)).astype(np.float32)
    arr[3, 0, 0, 0] = np.inf
    float_db(tmp_path / "f", arr)
    stats = dataset_stats(str(tmp_path / "f"))
    finite = arr[np.isfinite(arr)]
    assert stats.float_records == 20 and stats.value_nonfinite == 1
    assert stats.value_min == finite.min() and stats.value_max == finite.max()
    assert stats.value_hist.sum() == finite.size == stats.value_count
    assert stats.without_label == 20 and stats.sizes == {(2, 2): 20}
    assert plot_stats(stats).shape == (300, 1260, 3)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_cli_show(tmp_path, capsys):
    db = colour_db(tmp_path / "db", [COLORS[i % len(COLORS)] for i in range(30)])
    out = tmp_path / "sheet.png"
    assert main(["show", db, "--out", str(out), "-n", "9", "--shuffle", "--seed", "4",
                 "--tile", "32"]) == 0
    printed = capsys.readouterr().out
    assert "9 of 30 records shown (9 at random (seed 4))" in printed and str(out) in printed
    sheet = cv2.imread(str(out))
    _a, info = contact_sheet(db, n=9, shuffle=True, seed=4, tile=32, return_info=True)
    assert np.array_equal(sheet, _a)
    assert main(["show", db, "--seed", "4", "--out", str(out)]) == 1
    assert "add --shuffle" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "caffe-lmdb: no LMDB" in capsys.readouterr().err


def test_cli_info_plot(tmp_path, capsys):
    db = colour_db(tmp_path / "db", COLORS[:5])
    out = tmp_path / "stats.png"
    assert main(["info", db, "--plot", str(out), "--quiet"]) == 0
    assert f"plots -> {out} (840 x 300 px)" in capsys.readouterr().out
    assert cv2.imread(str(out)).shape == (300, 840, 3)
