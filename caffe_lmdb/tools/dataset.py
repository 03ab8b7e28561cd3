"""PyTorch map-style Dataset over a Caffe LMDB (import it as ``caffe_lmdb.torch``).

This is the only module of the package that imports torch (an optional extra:
``pip install "caffe_lmdb[torch]"``); ``import caffe_lmdb`` never does.

``DatumDataset`` works with ``torch.utils.data.DataLoader`` and any number of workers under
``fork`` and ``spawn``: the underlying :class:`~caffe_lmdb.reader.DatumDB` pickles as its path
and options and reopens in each worker. It also implements ``__getitems__``, which
DataLoader (torch >= 2.1) calls with a whole batch of indices: their values are then read in
key order in one transaction and decoded together instead of one by one.
"""
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ShapeMismatchError
from ..messages import show_key
from ..read.reader import DatumDB
from ..read.reader import open as open_db

__all__ = ["DatumDataset", "collate", "detection_collate"]


def collate(samples):
    """DataLoader's collate_fn for DatumDataset: a batch that __getitems__ already made as one
    tensor (a caffe_lmdb.Transform's output, in shared memory inside a worker) is passed on as
    it is, without default_collate's copy; anything else goes to default_collate."""
    from torch.utils.data import default_collate

    if samples and isinstance(samples[0], tuple) and len(samples[0]) == 2:
        first = samples[0][0]
        base = getattr(first, "_base", None)
        if isinstance(first, torch.Tensor) and base is not None and base.dim() == first.dim() + 1 \
                and len(base) == len(samples) and base.is_contiguous() and all(
                    s[0]._base is base and s[0].storage_offset() == j * first.numel()
                    for j, s in enumerate(samples)):
            labels = [s[1] for s in samples]
            if all(isinstance(v, int) for v in labels):
                return base, torch.tensor(labels, dtype=torch.int64)
    return default_collate(samples)


def _shared_empty(shape, dtype):
    """An array whose memory is a torch shared-memory storage (what a DataLoader worker hands to
    the main process without a copy)."""
    n = int(np.prod(shape))
    try:
        storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(n)
        tensor = torch.empty(0, dtype=torch.float32).new(storage).view(shape)
    except (AttributeError, RuntimeError, TypeError):  # another torch: a plain array
        return np.empty(shape, dtype)
    return tensor.numpy()


class _InSharedMemory:
    """A Transform whose batches are written straight into shared memory (DataLoader
    workers); everything else is the Transform's."""

    def __init__(self, transform):
        self.transform = transform

    def transform_values(self, values, keys=None, **options):
        options["alloc"] = _shared_empty
        return self.transform.transform_values(values, keys, **options)


class DatumDataset(Dataset):
    """``dataset[i]`` is the i-th record of the LMDB in key order (Caffe's order), as
    ``(image, label)``: image a tensor (C, H, W) (or as the reader's options say: ``layout``,
    ``channel_order``, ``dtype``, ``color``), label an int.

    Parameters
    ----------
    db : path or :class:`~caffe_lmdb.reader.DatumDB`; ``**options`` are passed to
        :func:`caffe_lmdb.open` when a path is given.
    transform : applied to each record before the batch is collated, so records may differ in
        size when it makes them one. A :class:`caffe_lmdb.Transform` (Caffe's transform_param)
        decodes and transforms a whole batch on the worker's share of the cores (cores //
        num_workers threads, so workers do not oversubscribe the machine), each DataLoader
        worker drawing from its own random stream; any other callable (e.g. torchvision
        transforms v2) gets each image tensor.
    same_shape : samples of one batch must have one shape (default_collate stacks them): a
        batch that does not raises ShapeMismatchError naming both keys. False for a collate_fn
        that takes mixed shapes.
    target_transform : callable applied to the target.
    companion : path or DatumDB of a float LMDB with the same keys (the ``DB_targets`` that
        convert-imageset ``--targets`` writes, one float_data record per image). Its record
        with the image's key, flattened to a (K,) float tensor, becomes the target: samples
        are ``(image, targets)``, or ``(image, label, targets)`` with ``keep_label=True``.
        Records are matched by key, not by position; a key missing from the companion raises
        KeyError naming it.
    to_tensor : False keeps images as NumPy arrays.

    Detection databases (SSD-Caffe's AnnotatedDatum records, ``db.kind == "annotated"``):
    samples are ``(image, boxes, labels)``, boxes a (N, 4) float32 tensor ``xmin, ymin, xmax,
    ymax`` (normalized as stored, or in pixels of the image with ``pixels=True``) and labels
    the (N,) int64 group labels; batch them with :func:`detection_collate`. A
    :class:`caffe_lmdb.Transform` crops and mirrors the boxes with their image (SSD-Caffe's
    transformer: boxes outside the crop dropped, the others clipped to it; ``pixels=True``
    then gives pixels of the transformed image). Any other ``transform`` of the image alone
    would move the pixels away from their boxes, so it is refused there: pass
    ``joint_transform(image, boxes, labels) -> (image, boxes, labels)`` instead (it is applied
    after a Transform when both are given).

    A LevelDB (which admits one process) is read through its LMDB cache, made here once (see
    :meth:`~caffe_lmdb.read.reader.DatumDB.use_lmdb_cache`), so that ``fork`` and ``spawn``
    workers read it as they read an LMDB.
    """

    def __init__(self, db, transform=None, target_transform=None, companion=None,
                 keep_label=False, to_tensor=True, joint_transform=None, pixels=False,
                 same_shape=True, **options):
        self.db = db if isinstance(db, DatumDB) else open_db(db, **options)
        if options and isinstance(db, DatumDB):
            raise ValueError("pass reader options to caffe_lmdb.open, or a path here")
        self.db.use_lmdb_cache()  # a LevelDB: workers read its LMDB cache (no-op for an LMDB)
        self.companion = None
        if companion is not None:
            self.companion = companion if isinstance(companion, DatumDB) else open_db(companion)
            self.companion.use_lmdb_cache()
            if len(self.companion) != len(self.db):
                raise ValueError(f"{self.companion.path} has {len(self.companion)} records and "
                                 f"{self.db.path} {len(self.db)}: a companion holds one record "
                                 "per image, under the same keys")
        self.detection = self.db.kind == "annotated"
        moves_boxes = hasattr(transform, "transform_values") and hasattr(transform,
                                                                         "transform_boxes")
        if self.detection and ((transform is not None and not moves_boxes)
                               or target_transform is not None):
            raise ValueError(f"{self.db.path} holds detection records (AnnotatedDatum): a "
                             "transform of the image alone would leave the boxes behind; "
                             "pass joint_transform(image, boxes, labels) instead, or a "
                             "caffe_lmdb.Transform (it moves the boxes with the image)")
        if joint_transform is not None and not self.detection:
            raise ValueError("joint_transform applies to detection databases (AnnotatedDatum "
                             "records); use transform and target_transform")
        self.joint_transform = joint_transform
        self.pixels = pixels
        self.transform = transform
        self.target_transform = target_transform
        self.keep_label = keep_label
        self.to_tensor = to_tensor
        self.same_shape = same_shape

    def set_epoch(self, epoch):
        """Derive the transform's random stream from (seed, epoch) (a Transform's; call it
        before each epoch, as with DistributedSampler, for reproducible epochs)."""
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)

    def _batch_transform(self):
        """The transform when it works on whole batches (a caffe_lmdb.Transform), else None."""
        t = self.transform
        if t is None or not hasattr(t, "transform_values"):
            return None
        if hasattr(t, "enter_worker"):
            t.enter_worker()  # this DataLoader worker's own random stream
        return t

    def __len__(self):
        return len(self.db)

    def __repr__(self):
        extra = f", companion={self.companion.path!r}" if self.companion is not None else ""
        return f"DatumDataset({self.db.path!r}{extra}) with {len(self)} records"

    def __getitem__(self, i):
        if self.detection:
            t = self._batch_transform()
            if t is not None:
                images, _, boxes = self.db.read([i], transform=t, boxes=True, pixels=self.pixels)
                return self._detection(images[0], boxes[0])
            image, _ = self.db[i]
            return self._detection(image, self.db.boxes(int(i), pixels=self.pixels))
        t = self._batch_transform()
        if t is not None:
            images, labels = self.db.read([i], transform=t)
            image, label = images[0], int(labels[0])
        else:
            image, label = self.db[i]
        targets = None
        if self.companion is not None:
            key = self.db.keys()[i]
            found = self.companion.get(key)
            if found is None:
                raise KeyError(self._missing(key))
            targets = found[0]
        return self._sample(image, label, targets, transformed=t is not None)

    def __getitems__(self, indices):
        """A batch of samples (DataLoader's batched fetch): values read in key order in one
        transaction and decoded together."""
        t = self._batch_transform()
        if t is None and self.transform is not None:  # any callable: record by record
            samples = [self[i] for i in indices]
            if self.same_shape:
                self._check_shapes(indices, samples)
            return samples
        if self.detection:
            images, _, boxes = self.db.read(indices, transform=t, boxes=True, pixels=self.pixels)
            return [self._detection(images[j], rows) for j, rows in enumerate(boxes)]
        plain = t is not None and self.to_tensor and self.companion is None \
            and self.target_transform is None and self.db.layout == "CHW" \
            and self.db.channel_order == "BGR" and self.db.dtype is None
        if plain:  # one batch tensor; its samples are views of it (see collate)
            worker = torch.utils.data.get_worker_info() is not None
            images, labels = self.db.read(indices, transform=_InSharedMemory(t) if worker else t)
            batch = images.base  # the shared-memory tensor itself, so it is not copied again
            if not (isinstance(batch, torch.Tensor) and tuple(batch.shape) == images.shape
                    and batch.data_ptr() == images.ctypes.data):
                batch = torch.from_numpy(images)
            return [(batch[j], int(labels[j])) for j in range(len(images))]
        images, labels = self.db.read(indices, transform=t)
        targets = None
        if self.companion is not None:
            keys = self.db.keys().take(np.where(np.asarray(indices) < 0,
                                                np.asarray(indices) + len(self.db), indices))
            positions = []
            for key in keys:
                try:
                    positions.append(self.companion.index(key))
                except KeyError:
                    raise KeyError(self._missing(key)) from None
            targets, _ = self.companion.read(positions)
        return [self._sample(images[j], int(labels[j]),
                             None if targets is None else targets[j], transformed=True)
                for j in range(len(images))]

    def _detection(self, image, rows):
        boxes = np.ascontiguousarray(rows[:, 2:6], np.float32)
        labels = rows[:, 0].astype(np.int64)
        if self.to_tensor:
            image, boxes, labels = (torch.from_numpy(image), torch.from_numpy(boxes),
                                    torch.from_numpy(labels))
        if self.joint_transform is not None:
            return self.joint_transform(image, boxes, labels)
        return image, boxes, labels

    def _check_shapes(self, indices, samples):
        shapes = [getattr(s[0], "shape", None) for s in samples]
        for j, shape in enumerate(shapes):
            if shape is not None and shapes[0] is not None and tuple(shape) != tuple(shapes[0]):
                keys = self.db.keys()
                raise ShapeMismatchError(
                    f"record {show_key(keys[indices[j]])} has shape {tuple(shape)} after the "
                    f"transform, but the batch's first record ({show_key(keys[indices[0]])}) "
                    f"has {tuple(shapes[0])}: samples of one batch must have one shape to be "
                    "collated: make the transform give one size (a crop or a resize, e.g. "
                    "caffe_lmdb.Transform(crop_size=...)), use batch_size=1, or pass "
                    "same_shape=False with a collate_fn that takes mixed shapes")

    def _missing(self, key):
        return f"{self.companion.path} has no record with key {show_key(key)} of {self.db.path}"

    def _sample(self, image, label, targets, transformed=False):
        if self.to_tensor:
            image = torch.from_numpy(image)
        if self.transform is not None and not transformed:
            image = self.transform(image)
        if targets is None:
            target = label
        else:
            target = np.ascontiguousarray(targets, np.float32).reshape(-1)
            if self.to_tensor:
                target = torch.from_numpy(target)
        if self.target_transform is not None:
            target = self.target_transform(target)
        if targets is not None and self.keep_label:
            return image, label, target
        return image, target


def detection_collate(batch):
    """DataLoader ``collate_fn`` for detection samples ``(image, boxes, labels)``: images
    stacked into one tensor (a list when their shapes differ), boxes and labels as lists (one
    tensor per image: images hold different numbers of boxes)."""
    images, boxes, labels = zip(*batch, strict=True)
    if all(torch.is_tensor(im) for im in images) and len({tuple(im.shape) for im in images}) == 1:
        images = torch.stack(images)
    else:
        images = list(images)
    return images, list(boxes), list(labels)
