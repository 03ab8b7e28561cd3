"""The ``caffe-lmdb`` command: a thin layer over the Python API.

Each group of subcommands lives in its own module with a ``register(subparsers)`` function that
adds its parsers and sets ``func`` (a function of the parsed arguments returning an exit code).
"""
import argparse
import os
import sys

from .. import __version__
from ..errors import CaffeLMDBError
from . import convert as _convert
from . import mean as _mean
from . import merge as _merge
from . import migrate as _migrate
from . import read as _read
from . import repair as _repair
from . import show as _show

GROUPS = [_mean, _convert, _read, _merge, _show, _migrate, _repair]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="caffe-lmdb",
        description="Read and write Caffe's LMDB datasets (Datum records).")
    parser.add_argument("--version", action="version", version=f"caffe-lmdb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    for group in GROUPS:  # a group may accept other spellings (e.g. Caffe's gflags)
        argv = getattr(group, "preprocess", lambda a: a)(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args) or 0
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # piped into head, which has what it wanted: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit cannot fail again
        return 141
    except (CaffeLMDBError, OSError) as exc:  # OSError: a missing input file, a full disk...
        print(f"caffe-lmdb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print(f"caffe-lmdb: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
