"""``caffe_lmdb.torch``: PyTorch support. Importing it imports torch (an optional extra);
``import caffe_lmdb`` alone never does. See :mod:`caffe_lmdb.dataset`."""
from .tools.dataset import DatumDataset, detection_collate

__all__ = ["DatumDataset", "detection_collate"]
