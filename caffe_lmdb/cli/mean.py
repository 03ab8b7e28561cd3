"""Mean-file commands: mean-to-npy and npy-to-mean (NumPy and the mean-file code are imported
when a command runs, not to build the parser)."""
from ..errors import SourceFormatError


def register(sub):
    help_ = "convert a .binaryproto mean file to a .npy array"
    p = sub.add_parser("mean-to-npy", help=help_, description=help_[:1].upper() + help_[1:] + ".")
    p.add_argument("mean", help="input .binaryproto")
    p.add_argument("npy", help="output .npy, shape (C, H, W), float32")
    p.set_defaults(func=_mean_to_npy)
    help_ = "convert a (C, H, W) .npy array to a .binaryproto"
    p = sub.add_parser("npy-to-mean", help=help_, description=help_[:1].upper() + help_[1:] + ".")
    p.add_argument("npy", help="input .npy")
    p.add_argument("mean", help="output .binaryproto")
    p.set_defaults(func=_npy_to_mean)


def _mean_to_npy(args):
    import numpy as np

    from ..format.blob import read_mean

    arr = read_mean(args.mean)
    np.save(args.npy, arr)
    print(f"{args.mean} -> {args.npy}: shape {arr.shape}, per-channel means "
          + ", ".join(f"{v:g}" for v in arr.reshape(arr.shape[0], -1).mean(axis=1)))
    return 0


def _npy_to_mean(args):
    import numpy as np

    from ..format.blob import write_mean
    from ..format.sniff import describe_bytes

    try:
        arr = np.load(args.npy, allow_pickle=False)
    except (ValueError, EOFError) as exc:
        with open(args.npy, "rb") as f:
            head = f.read(64)
        raise SourceFormatError(f"{args.npy} is not a .npy array file (it looks like "
                                f"{describe_bytes(head)}): give the (C, H, W) mean saved with "
                                f"numpy.save ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf":
        raise SourceFormatError(f"{args.npy} does not hold one numeric array")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise SourceFormatError(f"{args.npy} holds an array of shape {arr.shape}: a mean "
                                "file needs (C, H, W)")
    if arr.shape[2] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        raise SourceFormatError(
            f"{args.npy} holds an array of shape {arr.shape}, which looks like H x W x C "
            "(channels last): Caffe's mean is C x H x W; save arr.transpose(2, 0, 1) instead")
    write_mean(arr, args.mean)
    print(f"{args.npy} -> {args.mean}: shape {arr.shape}")
    return 0
