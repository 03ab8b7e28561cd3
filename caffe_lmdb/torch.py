"""``caffe_lmdb.torch``: PyTorch support. Importing it imports torch (an optional extra);
``import caffe_lmdb`` alone never does. See :mod:`caffe_lmdb.tools.dataset`."""
from .tools.dataset import DatumDataset, collate, detection_collate

__all__ = ["DatumDataset", "collate", "detection_collate", "from_prototxt"]


def from_prototxt(text_or_path, phase="train", *, layer=None, root=None, seed=None, level=None,
                  stages=None, **loader_options):
    """A torch DataLoader over the Data layer of a Caffe net in ``phase``: its database, its
    batch_size and its transform_param (see :func:`caffe_lmdb.from_prototxt`);
    ``loader_options`` go to DataLoader (num_workers, shuffle, ...)."""
    from .tools.prototxt import from_prototxt as data_layer

    return data_layer(text_or_path, phase, layer=layer, root=root, seed=seed, level=level,
                      stages=stages).dataloader(**loader_options)
