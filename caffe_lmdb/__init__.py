"""caffe_lmdb: read and write Caffe's LMDB datasets of Datum records.

The codec (arrays and images to and from Datum bytes) is byte-identical to Caffe's C++ tools;
see the README for the converters and readers.
"""
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
from .read.reader import DatumDB, open  # noqa: A001 (caffe_lmdb.open, as lmdb.open)
from .tools.features import (
    FeatureKeyWarning,
    feature_names,
    features_to_npy,
    read_features,
    write_features,
)
from .tools.mean import channel_means, compute_mean
from .tools.prototxt import DataLayerInput, PrototxtError, from_prototxt
from .tools.repair import import_raw, rekey  # write.repair, then verify
from .tools.show import contact_sheet, plot_stats  # OpenCV is imported when they draw
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
from .write.ray import RayExecutor  # ray itself is imported only when it is used
from .write.repair import FieldSpec
from .write.salvage import SalvageReport, salvage

__version__ = "0.1.0"

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
