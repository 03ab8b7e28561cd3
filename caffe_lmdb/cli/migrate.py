"""The ``migrate`` command: ``caffe-lmdb migrate SRC DST`` (see :mod:`caffe_lmdb.write.migrate`)."""
from .convert import backend_arg, flag, with_progress


def register(sub):
    help_ = "copy a LevelDB into a new LMDB, or an LMDB into a new LevelDB, key for key"
    p = sub.add_parser("migrate", help=help_, description=help_ + (
        ". Keys and values are copied unchanged and in order, the LMDB map grows as needed, an "
        "interrupted run finishes with --resume, and DST is compared with SRC record for record "
        "at the end."))
    p.add_argument("src", metavar="SRC", help="the database to copy (LevelDB or LMDB folder)")
    p.add_argument("dst", metavar="DST", help="the new database folder")
    p.add_argument("--backend", type=backend_arg, default=None,
                   help="engine of DST: lmdb or leveldb (default: the other one than SRC's)")
    flag(p, "resume", "finish an interrupted migration into DST")
    flag(p, "overwrite", "replace an existing DST")
    flag(p, "quiet", "no progress bar and no summary (errors are still printed)")
    p.set_defaults(func=_migrate)


def _migrate(args):
    from ..write.migrate import migrate

    summary = with_progress(args, "migrate", lambda progress: migrate(
        args.src, args.dst, backend=args.backend, resume=args.resume, overwrite=args.overwrite,
        progress=progress))
    if not args.quiet:
        print(summary)
    return 0
