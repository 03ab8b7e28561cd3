"""The ``merge`` command: ``caffe-lmdb merge OUT IN1 IN2 ...`` (see :mod:`caffe_lmdb.merging`)."""
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

    help_ = ("copy every record that can still be read from a damaged (or LMDB 1.0) database "
             "into a new LMDB 0.9 database, in order, and report what was lost")
    p = sub.add_parser("salvage", help=help_, description=help_ + (
        ". Run 'caffe-lmdb verify DB' first to see what is damaged. OUT is a new folder."))
    p.add_argument("db", metavar="DB", help="the LMDB folder to read")
    p.add_argument("out", metavar="OUT", help="the new LMDB folder to write")
    flag(p, "overwrite", "replace an existing OUT")
    p.set_defaults(func=_salvage)


def _merge(args):
    from ..write.merge import merge

    summary = with_progress(args, "merge", lambda progress: merge(
        args.out, args.inputs, overwrite=args.overwrite, progress=progress))
    if not args.quiet:
        print(summary)
    return 0


def _salvage(args):
    from ..write.salvage import salvage

    report = salvage(args.db, args.out, overwrite=args.overwrite)
    print(report)
    return 0
