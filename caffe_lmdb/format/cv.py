"""OpenCV, imported on first use (readers of raw records never need it), and the two array
moves every image path shares."""
from __future__ import annotations

from types import ModuleType

import numpy as np

__all__ = ["cv2", "hwc_to_chw", "planar", "place"]


def cv2() -> ModuleType:
    """The cv2 module (imported on the first call)."""
    import cv2 as module

    return module


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """OpenCV's H x W (x C) image as a (C, H, W) view."""
    if img.ndim == 2:
        return img[None, :, :]
    return img.transpose(2, 0, 1)


def planar(img: np.ndarray) -> np.ndarray:
    """OpenCV's H x W (x C) image as a new C-contiguous (C, H, W) array (what a raw record
    stores): split by OpenCV above 4,096 pixels (a fifth of NumPy's transposing copy at
    300 x 300), by NumPy below (where a call costs more than the copy)."""
    chw = hwc_to_chw(img)
    if chw.shape[0] == 1 or chw.shape[1] * chw.shape[2] < 4096:
        return np.ascontiguousarray(chw)
    out = np.empty(chw.shape, img.dtype)
    place(chw, out)
    return out


def place(chw: np.ndarray, dest: np.ndarray, reverse: bool = False) -> None:
    """Copy a decoded (C, H, W) image (a view of OpenCV's H x W x C array) into ``dest``, a
    (C, H, W) slot, with the channel axis reversed when ``reverse``. For C > 1 cv2.split
    writes each plane straight into ``dest``, far faster than NumPy's transposing copy."""
    c = chw.shape[0]
    hwc = chw.transpose(1, 2, 0)
    if c > 1 and chw.size and dest.dtype == chw.dtype and hwc.flags.c_contiguous \
            and dest.flags.c_contiguous:
        planes = [dest[i] for i in (range(c - 1, -1, -1) if reverse else range(c))]
        cv2().split(hwc, planes)
    else:
        dest[...] = chw[::-1] if reverse else chw
