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


class _Unused:
    """Takes every call made to build a command's arguments, and keeps nothing."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self


class _OneCommand:
    """The subcommands, for a run that needs the arguments of one command only (None: of
    none, e.g. ``caffe-lmdb --help``): every command is still listed with its help, but the
    others' arguments are not built (that took a fifth of the start-up of ``--help``)."""

    def __init__(self, sub, wanted):
        self._sub, self._wanted = sub, wanted

    def add_parser(self, name, **kwargs):
        parser = self._sub.add_parser(name, **kwargs)
        return parser if name == self._wanted else _Unused()


def build_parser(command=""):
    """The parser of the command line. ``command``: "" for every command in full; a command
    name (or None) to build only that command's arguments."""
    parser = argparse.ArgumentParser(
        prog="caffe-lmdb",
        description="Read and write Caffe's LMDB datasets (Datum records).")
    parser.add_argument("--version", action="version", version=f"caffe-lmdb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    target = sub if command == "" else _OneCommand(sub, command)
    for group in GROUPS:
        group.register(target)
    return parser


def _command_of(argv):
    """The command an argument list runs: its first word that is not an option (None when
    there is none, "" when options come first: then everything is built)."""
    for word in argv:
        if not word.startswith("-"):
            return word
        if word not in ("-h", "--help"):
            return ""
    return None


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    for group in GROUPS:  # a group may accept other spellings (e.g. Caffe's gflags)
        argv = getattr(group, "preprocess", lambda a: a)(argv)
    parser = build_parser(_command_of(argv))
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
