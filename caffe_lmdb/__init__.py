"""caffe_lmdb: read and write Caffe's LMDB datasets of Datum records.

The codec (arrays and images to and from Datum bytes) is byte-identical to Caffe's C++ tools;
see the README for the converters and readers.

``import caffe_lmdb`` imports only the exceptions: every other public name is imported from its
module the first time it is used (module-level ``__getattr__``), so that the command line and
scripts that use one part do not pay for the others (OpenCV, the protobuf classes, tqdm, torch
and Ray are imported only by the code that uses them).
"""
from __future__ import annotations

from importlib import import_module

from .errors import (
    CaffeLMDBError,
    DatumDecodeError,
    EncodeError,
    ImageReadError,
    ListFileError,
    NotADatumDBError,
    OutputExistsError,
    ShapeMismatchError,
)

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (some 5 ms)

# public name -> the module (relative to this package) that defines it
_LAZY = {
    "decode_batch": ".format.batch",
    **dict.fromkeys(("array_to_blobproto", "arraylist_to_blobprotovector_str",
                     "blobproto_to_array", "blobprotovector_str_to_arraylist", "read_mean",
                     "write_mean"), ".format.blob"),
    **dict.fromkeys(("BlobProto", "BlobProtoVector", "BlobShape", "Datum", "array_to_datum",
                     "datum_bytes", "datum_to_array", "decode"), ".format.datum"),
    **dict.fromkeys(("encode_image", "image_to_datum"), ".format.image"),
    **dict.fromkeys(("DatumWriter", "Summary", "convert_cifar", "convert_folder",
                     "convert_imageset", "convert_mnist", "write_arrays"), ".write.convert"),
    **dict.fromkeys(("FeatureKeyWarning", "feature_names", "features_to_npy", "read_features",
                     "write_features"), ".tools.features"),
    **dict.fromkeys(("channel_means", "compute_mean"), ".tools.mean"),
    "merge": ".write.merge",
    "migrate": ".write.migrate",
    **dict.fromkeys(("salvage", "SalvageReport"), ".write.salvage"),
    "RayExecutor": ".write.ray",  # ray itself is imported only when it is used
    **dict.fromkeys(("contact_sheet", "plot_stats"), ".tools.show"),
    "Transform": ".tools.transform",
    **dict.fromkeys(("from_prototxt", "DataLayerInput", "PrototxtError"), ".tools.prototxt"),
    **dict.fromkeys(("DatumDB", "open"), ".read.reader"),
    **dict.fromkeys(("rekey", "import_raw"), ".tools.repair"),  # write.repair, then verify
    "FieldSpec": ".write.repair",
}

__all__ = [
    "BlobProto", "BlobProtoVector", "BlobShape", "Datum",
    "array_to_blobproto", "array_to_datum", "arraylist_to_blobprotovector_str",
    "blobproto_to_array", "blobprotovector_str_to_arraylist", "datum_bytes", "datum_to_array",
    "decode", "decode_batch", "encode_image", "image_to_datum",
    "read_mean", "write_mean",
    "open", "DatumDB",
    "read_features", "features_to_npy", "write_features", "feature_names", "FeatureKeyWarning",
    "compute_mean", "channel_means",
    "convert_imageset", "convert_folder", "convert_mnist", "convert_cifar", "write_arrays",
    "DatumWriter", "Summary", "merge", "migrate", "salvage", "SalvageReport", "RayExecutor",
    "contact_sheet", "plot_stats", "Transform", "from_prototxt", "DataLayerInput", "PrototxtError",
    "rekey", "import_raw", "FieldSpec",
    "CaffeLMDBError", "DatumDecodeError", "EncodeError", "ImageReadError", "ListFileError",
    "NotADatumDBError", "OutputExistsError", "ShapeMismatchError",
]


#: subpackages and modules reachable as attributes (``caffe_lmdb.format.datum``), as when
#: this package imported them eagerly
_SUBMODULES = frozenset(("cli", "errors", "format", "messages", "read", "storage", "tools",
                         "torch", "write"))


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name in _SUBMODULES:
            return import_module(f".{name}", __name__)  # (the import sets the attribute)
        raise AttributeError(f"module 'caffe_lmdb' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see: the names imported eagerly
    from typing import Any

    from .format.batch import decode_batch
    from .format.blob import (
        array_to_blobproto,
        arraylist_to_blobprotovector_str,
        blobproto_to_array,
        blobprotovector_str_to_arraylist,
        read_mean,
        write_mean,
    )
    from .format.datum import (
        BlobProto,
        BlobProtoVector,
        BlobShape,
        Datum,
        array_to_datum,
        datum_bytes,
        datum_to_array,
        decode,
    )
    from .format.image import encode_image, image_to_datum
    from .read.reader import DatumDB, open  # noqa: A004
    from .tools.features import (
        FeatureKeyWarning,
        feature_names,
        features_to_npy,
        read_features,
        write_features,
    )
    from .tools.mean import channel_means, compute_mean
    from .tools.prototxt import DataLayerInput, PrototxtError, from_prototxt
    from .tools.repair import import_raw, rekey
    from .tools.show import contact_sheet, plot_stats
    from .tools.transform import Transform
    from .write.convert import (
        DatumWriter,
        Summary,
        convert_cifar,
        convert_folder,
        convert_imageset,
        convert_mnist,
        write_arrays,
    )
    from .write.merge import merge
    from .write.migrate import migrate
    from .write.ray import RayExecutor
    from .write.repair import FieldSpec
    from .write.salvage import SalvageReport, salvage
