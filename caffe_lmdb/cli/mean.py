"""Mean-file commands: mean-to-npy and npy-to-mean."""
import numpy as np

from ..format.blob import read_mean, write_mean


def register(sub):
    p = sub.add_parser("mean-to-npy", help="convert a .binaryproto mean file to a .npy array")
    p.add_argument("mean", help="input .binaryproto")
    p.add_argument("npy", help="output .npy, shape (C, H, W), float32")
    p.set_defaults(func=_mean_to_npy)
    p = sub.add_parser("npy-to-mean", help="convert a (C, H, W) .npy array to a .binaryproto")
    p.add_argument("npy", help="input .npy")
    p.add_argument("mean", help="output .binaryproto")
    p.set_defaults(func=_npy_to_mean)


def _mean_to_npy(args):
    arr = read_mean(args.mean)
    np.save(args.npy, arr)
    print(f"{args.mean} -> {args.npy}: shape {arr.shape}, per-channel means "
          + ", ".join(f"{v:g}" for v in arr.reshape(arr.shape[0], -1).mean(axis=1)))
    return 0


def _npy_to_mean(args):
    arr = np.load(args.npy)
    write_mean(arr, args.mean)
    print(f"{args.npy} -> {args.mean}: shape {arr.shape}")
    return 0
