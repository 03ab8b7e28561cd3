"""The exceptions caffe_lmdb raises.

Every error the tool raises on purpose derives from :class:`CaffeLMDBError`, and also from the
built-in type a Python user would expect (``ValueError`` for bad data, ``OSError`` for files), so
``except ValueError`` keeps working. Messages name the file, line or key at fault, and the fix.
"""
from .messages import show_key


class CaffeLMDBError(Exception):
    """Root of every error raised by caffe_lmdb."""


class DatumDecodeError(CaffeLMDBError, ValueError):
    """Bytes that are not a valid Datum record, or a record whose fields disagree.

    ``key`` is the LMDB key of the record when known.
    """

    def __init__(self, message, key=None):
        self.key = key
        if key is not None:
            message = f"record {show_key(key)}: {message}"
        super().__init__(message)


class ShapeMismatchError(CaffeLMDBError, ValueError):
    """Records that must share one shape (a batch, a mean, a feature array) do not."""


class ImageReadError(CaffeLMDBError, OSError):
    """An image file that is missing or that OpenCV cannot decode."""

    def __init__(self, message, path=None):
        self.path = path
        super().__init__(message)


class ImageTooLargeError(ImageReadError):
    """An image whose header declares more pixels than the converter's ``max_pixels`` (a
    decompression bomb?). ``size`` is the declared (width, height)."""

    def __init__(self, message, path=None, size=None):
        self.size = size
        super().__init__(message, path)


class WriteError(CaffeLMDBError, OSError):
    """The database (or its resume state) could not be written: a full disk, a file size
    limit, an I/O error. The database keeps every record committed before the failure."""

    @classmethod
    def failed(cls, path, exc, entries):
        """The error for a write the disk refused, saying what the database still holds."""
        return cls(f"could not write to {path} ({exc}): the disk may be full, or a file size "
                   f"limit reached. The database keeps the {entries} records committed before;"
                   " make room and run the same command with --resume to finish it")


class ListFileError(CaffeLMDBError, ValueError):
    """A line of a Caffe list file (``path label``) that cannot be parsed."""

    def __init__(self, message, path=None, lineno=None):
        self.path = path
        self.lineno = lineno
        if path is not None and lineno is not None:
            message = f"{path}:{lineno}: {message}"
        super().__init__(message)


class SourceFormatError(CaffeLMDBError, ValueError):
    """An input dataset file (MNIST idx, CIFAR batch, ...) that is not in the expected format."""


class OutputExistsError(CaffeLMDBError, FileExistsError):
    """The output database already exists and neither overwrite nor resume was asked for."""


class KeyTooLongError(CaffeLMDBError, ValueError):
    """A key longer than LMDB's limit (511 bytes by default)."""


class NotADatumDBError(CaffeLMDBError, ValueError):
    """A path that is not an LMDB of Datum records (a missing folder, a data.mdb file, ...)."""


class OutputPathError(CaffeLMDBError, ValueError):
    """An output path that cannot hold a new LMDB: a file, or a folder inside an existing LMDB."""


class DuplicateKeyError(CaffeLMDBError, ValueError):
    """A key written twice to one database (the first value is kept)."""


class ResumeError(CaffeLMDBError, ValueError):
    """A conversion that cannot be resumed: no saved state, or different inputs or options."""


class WorkerError(CaffeLMDBError, RuntimeError):
    """A worker died or timed out while processing an item, and the caller asked to stop."""


class EncodeError(CaffeLMDBError, ValueError):
    """An image that cannot be encoded as asked (e.g. an encode type OpenCV does not write).

    A setting error, not a bad input file: converters stop on it rather than skip the image.
    """


class MissingDependencyError(CaffeLMDBError, ImportError):
    """An optional extra (e.g. ``ray``) that a feature needs is not installed; the message
    names the ``pip install`` command."""


class ClusterError(CaffeLMDBError, RuntimeError):
    """A cluster (Ray) cannot run the work: no connection, a node without caffe_lmdb, or
    workers that cannot read the input files (they must be on storage every node mounts)."""


class KeyRangeError(CaffeLMDBError, ValueError):
    """Databases to merge whose key ranges overlap or come out of order. ``first`` and
    ``second`` are the two databases, ``last_key`` the first one's last key and ``first_key``
    the second one's first key."""

    def __init__(self, message, first=None, second=None, last_key=None, first_key=None):
        self.first, self.second = first, second
        self.last_key, self.first_key = last_key, first_key
        super().__init__(message)


class OptionError(CaffeLMDBError, ValueError):
    """Options that are out of range or contradict each other (e.g. ``--shard`` with
    ``--shuffle`` but no ``--seed``)."""


class AnnotationError(CaffeLMDBError, ValueError):
    """An annotation file (VOC XML, COCO-style JSON, TXT) or a label map that cannot be used:
    malformed, a coordinate that is not a number, a name missing from the label map. ``path``
    and ``lineno`` (when known) name the place."""

    def __init__(self, message, path=None, lineno=None):
        self.path = path
        self.lineno = lineno
        if path is not None:
            message = f"{path}{f':{lineno}' if lineno else ''}: {message}"
        super().__init__(message)


class LMDBFormatError(CaffeLMDBError, ValueError):
    """An LMDB in the 1.0 data format (py-lmdb 3's second engine) where Caffe's format is
    needed: Caffe links LMDB 0.9, which cannot open such a file (MDB_INVALID)."""


class DamagedDBError(CaffeLMDBError, OSError):
    """A database whose data.mdb is damaged (LMDB reports a corrupted page): the message names
    the file and what to do (``caffe-lmdb verify``, ``caffe-lmdb salvage``)."""


class NothingWrittenError(CaffeLMDBError, ValueError):
    """A conversion whose every sample was skipped: no database is left behind, and the
    message says what was probably wrong (a wrong root folder, ...)."""


class DatabaseLockedError(CaffeLMDBError, OSError):
    """A database another process holds open where the engine admits one process at a time
    (LevelDB's LOCK file): the message names the LOCK file."""


class VerifyError(CaffeLMDBError, ValueError):
    """A database was written (by a repair: rekey, import-raw) but verify finds problems in
    it; ``report`` is verify's DBInfo. The database is kept as written."""

    def __init__(self, message, report=None):
        self.report = report
        super().__init__(message)
