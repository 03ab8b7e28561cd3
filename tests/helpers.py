"""Small LMDBs for the reader tests, written directly with py-lmdb and the codec (the
project's writer is tested on its own)."""
import lmdb
import numpy as np

from caffe_lmdb.format.datum import array_to_datum_bytes, datum_bytes


def write_lmdb(path, items, map_size=1 << 26):
    """Write ``(key, value)`` pairs (bytes or str keys) into a new LMDB folder at ``path``."""
    env = lmdb.open(str(path), map_size=map_size)
    try:
        with env.begin(write=True) as txn:
            for key, value in items:
                txn.put(key.encode() if isinstance(key, str) else key, value)
    finally:
        env.close()
    return path


def images_db(path, n=10, shape=(3, 4, 5), keyfmt="%08d", seed=0, start=0):
    """An LMDB of n random uint8 records keyed ``keyfmt % i``, label = 3 * i + 1.

    Returns (path, images, labels) with images in key order of i."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + tuple(shape), dtype=np.uint8)
    labels = np.arange(start, start + n) * 3 + 1
    write_lmdb(path, [(keyfmt % (start + i), array_to_datum_bytes(images[i], int(labels[i])))
                      for i in range(n)])
    return path, images, labels


def float_db(path, array, keyfmt="%010d", label=None):
    """An LMDB of float_data records (extract_features style: no label) from an (N, C, H, W)
    array."""
    write_lmdb(path, [(keyfmt % i, datum_bytes(*a.shape, float_data=a, label=label))
                      for i, a in enumerate(np.asarray(array, np.float32))])
    return path


def read_all(db):
    """(position, label, image sum) of every record, read one by one (for process tests)."""
    return [(i, label, int(image.astype(np.int64).sum())) for i, (image, label)
            in enumerate(db)]


def read_shard(db, rank, world):
    """Labels of a shuffled shard, read with batches() in a worker process."""
    return [int(v) for _, y in db.batches(3, shuffle=True, seed=4, shard=(rank, world))
            for v in y]


def to_float(image):
    """A picklable transform for the DataLoader tests (spawn workers import it)."""
    return image.float() / 255
