"""Read-side commands: info, verify, export, features, compute-mean.

Each takes ``--backend lmdb|leveldb`` (default: detected from the folder), also in Caffe's
spellings (``-backend=leveldb``, ``--backend LEVELDB``), as compute_image_mean does.
"""
import os
import re

from .convert import backend_arg, with_progress


def register(sub):
    p = _command(sub, "info", _info, "entries, size, key pattern, gaps, record kinds, shapes, "
                 "labels of an LMDB")
    p.add_argument("--decode", choices=("sample", "all", "none"), default="sample",
                   help="encoded images decoded for their shapes: the first 200 (default), "
                   "all, or none")
    p.add_argument("--plot", metavar="STATS.png", help="also draw the label histogram, the "
                   "image sizes (height vs width) and, for float records, the value histogram "
                   "into this PNG (reads every record again)")

    p = _command(sub, "verify", _verify, "parse every record; exit 1 listing the problems "
                 "(unparsable records, several shapes, unpadded numeric keys)")
    p.add_argument("--no-decode", dest="decode", action="store_false",
                   help="do not decode encoded images (faster; their shapes go unchecked)")
    p.add_argument("--max-listed", type=int, default=20, help="problems listed (default 20)")

    p = _command(sub, "export", _export, "records back to image files plus a list file (the "
                 "inverse of convert-imageset), or to one .npz")
    p.add_argument("out", metavar="OUT", help="a new folder (or the .npz file with --npz)")
    p.add_argument("--npz", action="store_true",
                   help="write images (N,C,H,W), labels and keys into OUT.npz instead")
    p.add_argument("--label_map", "--label-map", dest="label_map", metavar="LABELMAP",
                   help="detection databases: names for the VOC XML files (labelmap.prototxt)")

    p = _command(sub, "features", _features_cmd,
                 "an extract_features LMDB to NumPy (.npy), streamed")
    p.add_argument("--out", metavar="FEATS.npy", help="write the (N, C, H, W) float32 array "
                   "here (without it, only the summary is printed)")
    p.add_argument("--flat", action="store_true", help="(N, C*H*W) rows instead")
    p.add_argument("--names-from", metavar="LISTFILE_OR_DB",
                   help="what the net's data layer read (its LMDB, or an ImageData list "
                   "file): writes FEATS.txt, line i = 'path label' of feature row i")

    p = _command(sub, "compute-mean", _compute_mean, "Caffe's compute_image_mean: the mean "
                 "image as .binaryproto (and/or .npy)")
    p.add_argument("out", nargs="?", metavar="OUT.binaryproto")
    p.add_argument("--npy", metavar="OUT.npy", help="also (or only) save the (C, H, W) mean")


def _command(sub, name, func, help):
    """A subcommand reading one database: DB, --quiet, and its function."""
    p = sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".")
    p.add_argument("db", metavar="DB")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--backend", type=backend_arg, default=None,
                   help="lmdb or leveldb (default: detected from the folder's files)")
    p.set_defaults(func=func)
    return p


_COMMANDS = ("info", "verify", "export", "features", "compute-mean")
_SINGLE_DASH = re.compile(r"^-(backend|quiet)(=.*)?$")


def preprocess(argv):
    """Caffe's single-dash spelling (``-backend=leveldb``) for this module's subcommands."""
    for i, tok in enumerate(argv):
        if not tok.startswith("-"):
            if tok in _COMMANDS:
                return argv[:i + 1] + [("-" + t) if _SINGLE_DASH.match(t) else t
                                       for t in argv[i + 1:]]
            return argv
    return argv


def _info(args):
    from ..tools import dbinfo as _inspect
    from ..tools.show import plot_stats

    report = with_progress(args, "info", lambda progress: _inspect.info(
        args.db, decode_images=args.decode, progress=progress, backend=args.backend))
    print(report)
    if args.plot:
        image = with_progress(args, "plot", lambda progress: plot_stats(
            args.db, out=args.plot, progress=progress))
        print(f"plots -> {args.plot} ({image.shape[1]} x {image.shape[0]} px)")
    return 0


def _verify(args):
    from ..tools import dbinfo as _inspect

    report = with_progress(args, "verify", lambda progress: _inspect.verify(
        args.db, decode_images=args.decode, progress=progress, max_listed=args.max_listed,
        backend=args.backend))
    print(report)
    if report.ok and report.incomplete:  # valid so far, but not what the conversion will give
        print(f"INCOMPLETE: {report.entries} records, no problems in them; {report.incomplete}")
        return 1
    if report.ok:
        print(f"OK: {report.entries} records, no problems")
        return 0
    print(f"FAILED: {report.problem_count} problems")
    return 1


def _export(args):
    from ..tools import dbinfo as _inspect

    n = with_progress(args, "export", lambda progress: _inspect.export(
        args.db, args.out, npz=args.npz, progress=progress, label_map=args.label_map,
        backend=args.backend))
    where = args.out if not args.npz or args.out.endswith(".npz") else args.out + ".npz"
    listing = "" if args.npz else f", list file {os.path.join(where, 'list.txt')}"
    print(f"{args.db} -> {where}: {n} records{listing}")
    return 0


def _features_cmd(args):
    from ..tools import features as _features

    if args.out:
        shape, indices = with_progress(args, "features", lambda progress: (
            _features.features_to_npy(args.db, args.out, flat=args.flat, progress=progress,
                                      backend=args.backend)))
        print(f"{args.db} -> {args.out}: float32 {shape}")
    else:
        shape, indices = _features.feature_shape(args.db, backend=args.backend)
        span = f"{indices[0]}..{indices[-1]}" if len(indices) else "none"
        print(f"{args.db}: {len(indices)} records of float32 {shape}, image indices {span}")
    if args.names_from:
        names = _features.feature_names(args.names_from, int(indices[-1]) + 1
                                        if len(indices) else 0)
        target = (os.path.splitext(args.out)[0] if args.out else args.db.rstrip("/")) + ".txt"
        with open(target, "w", encoding="utf-8", newline="\n") as f:
            for i in indices.tolist():
                name, label = names[i]
                f.write(f"{name} {label}\n")
        print(f"names of the {len(indices)} rows -> {target}")
    return 0


def _compute_mean(args):
    import numpy as np

    from ..format.blob import write_mean
    from ..tools.mean import channel_means, compute_mean

    if not args.out and not args.npy:
        args.out = "mean.binaryproto"
    mean = with_progress(args, "compute-mean", lambda progress: compute_mean(
        args.db, progress=progress, backend=args.backend))
    if args.out:
        write_mean(mean, args.out)
    if args.npy:
        np.save(args.npy, mean)
    print(f"{args.db}: mean of shape {mean.shape} (exact integer sums) -> "
          + ", ".join(p for p in (args.out, args.npy) if p))
    for c, value in enumerate(channel_means(mean)):
        print(f"mean_value channel [{c}]: {value:g}")
    return 0
