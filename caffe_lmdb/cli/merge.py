"""The ``merge`` command: ``caffe-lmdb merge OUT IN1 IN2 ...`` (see :mod:`caffe_lmdb.merging`)."""
from ..write.merge import merge
from .convert import flag, with_progress


def register(sub):
    help_ = "concatenate LMDBs whose key ranges follow each other into one, in key order"
    p = sub.add_parser("merge", help=help_, description=help_ + (
        ". Every key of IN2 must come after every key of IN1 (and so on): overlapping or "
        "out-of-order ranges are refused. Parts made with 'convert-imageset --shard=K/N' merge "
        "into the database one conversion would have written. OUT appears only when the merge "
        "is complete."))
    p.add_argument("out", metavar="OUT", help="the merged LMDB folder to create")
    p.add_argument("inputs", nargs="+", metavar="IN", help="LMDB folders, in key order")
    flag(p, "overwrite", "replace an existing OUT (only once the merge is complete)")
    flag(p, "quiet", "no progress bar and no summary (errors are still printed)")
    p.set_defaults(func=_merge)


def _merge(args):
    summary = with_progress(args, "merge", lambda progress: merge(
        args.out, args.inputs, overwrite=args.overwrite, progress=progress))
    if not args.quiet:
        print(summary)
    return 0
