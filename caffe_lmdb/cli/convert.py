"""Converter commands: convert-imageset, convert-annoset, convert-mnist, convert-cifar,
convert-folder, labelmap, demo.

Caffe's flags are accepted in gflags' spellings: ``-gray``, ``--gray``, ``--gray=true``,
``--nogray``, ``--resize_height=256``, ``--resize_height 256``, ``-resize_height=256``.
"""
import argparse
import os
import re
import sys

from ..errors import CaffeLMDBError
from ..format import DEFAULT_MAX_PIXELS
from ..write.defaults import DEFAULT_TIMEOUT, default_workers

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "sample_data")

# Caffe's flag names (and ours) for the gflags-style normalization of argv
_BOOL_FLAGS = {"gray", "shuffle", "check_size", "encoded", "overwrite", "resume", "strict",
               "index_keys", "quiet", "check_label"}
_VALUE_FLAGS = {"resize_height", "resize_width", "encode_type", "backend", "seed", "workers",
                "ray_address", "shard",
                "targets", "timeout", "executor", "map_size", "max_pixels",
                "anno_type", "label_type", "label_map_file", "min_dim", "max_dim"}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}
_FLAG = re.compile(r"^--?([A-Za-z][A-Za-z0-9_-]*)(?:=(.*))?$", re.S)


def _api():
    """The converters, imported when a command runs (not to build the parser: ``--help`` must
    stay fast)."""
    from ..write import convert

    return convert


class _UsageError(CaffeLMDBError):
    pass


def gflags_argv(argv):
    """Rewrite gflags spellings into argparse's: ``-name`` -> ``--name``, ``--name=true`` ->
    ``--name``, ``--name=false`` and ``--noname`` -> ``--no-name``. Unknown tokens pass."""
    out = []
    argv = list(argv)
    for i, tok in enumerate(argv):
        if tok == "--":
            out.extend(argv[i:])
            break
        m = _FLAG.match(tok)
        if not m:
            out.append(tok)
            continue
        name, value = m.group(1).replace("-", "_"), m.group(2)
        negated = name.startswith("no") and name[2:] in _BOOL_FLAGS and name not in _BOOL_FLAGS
        base = name[2:] if negated else name
        if base in _BOOL_FLAGS:
            if value is None:
                on = not negated
            elif value.lower() in _TRUE | _FALSE and not negated:
                on = value.lower() in _TRUE
            else:
                raise _UsageError(f"flag --{name} takes no value or true/false, not {value!r}")
            out.append(f"--{base}" if on else f"--no-{base}")
        elif name in _VALUE_FLAGS:
            out.append(f"--{name}" if value is None else f"--{name}={value}")
        else:
            out.append(tok)
    return out


def flag(parser, name, help_):
    """--name (and a hidden --no-name) as a boolean option."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(f"--{name}", dest=name, action="store_true", help=help_)
    group.add_argument(f"--no-{name}", dest=name, action="store_false", help=argparse.SUPPRESS)


def _common(p):
    """Flags of every converter: output handling, workers, progress."""
    flag(p, "overwrite", "replace an existing output database")
    flag(p, "resume", "finish an interrupted conversion of the same inputs and options")
    flag(p, "quiet", "no progress bar and no summary (errors are still printed)")
    p.add_argument("--backend", type=backend_arg, default="lmdb",
                   help="lmdb (default) or leveldb, in Caffe's spellings too (--backend leveldb, "
                        "-backend=leveldb, LEVELDB)")
    p.add_argument("--map_size", type=int, default=None, metavar="BYTES",
                   help="initial LMDB map size (it grows by itself when full)")
    p.add_argument("--workers", type=_positive, default=None,
                   help=f"parallel workers (default: all cores, here {default_workers()}; "
                        "with --executor=ray: the cluster's CPUs)")
    p.add_argument("--executor", default=None, choices=("local", "thread", "process", "ray"),
                   help="local = thread (the default: fastest on one machine, OpenCV releases "
                        "the GIL), process (isolates decoder crashes), or ray (encode on a Ray "
                        "cluster, write here; see docs/cluster.md)")
    p.add_argument("--ray-address", "--ray_address", dest="ray_address", default=None,
                   metavar="ADDRESS", help="the Ray cluster to join (e.g. auto, "
                   "ray://head:10001; default $RAY_ADDRESS, else a local instance); implies "
                   "--executor=ray")
    p.add_argument("--shard", type=_shard, default=None, metavar="K/N",
                   help="convert only the K-th of N parts (K = 0 .. N-1), keeping the keys of "
                        "the whole conversion; join the parts with 'caffe-lmdb merge'")


def _image_flags(p):
    flag(p, "gray", "decode images as one gray channel")
    flag(p, "shuffle", "shuffle the order of the samples (reproducible with --seed)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="seed of --shuffle's permutation (0 or more)")
    p.add_argument("--resize_height", type=int, default=0, metavar="H",
                   help="resize images to H x W (both must be > 0)")
    p.add_argument("--resize_width", type=int, default=0, metavar="W")
    flag(p, "check_size", "fail when records differ in shape (raw records; with convert-annoset "
         "encoded ones too, which carry their shape)")
    flag(p, "encoded", "store the encoded image (the file's own bytes when possible)")
    p.add_argument("--encode_type", default="", metavar="TYPE",
                   help="encode as this type (jpg, png, ...); implies --encoded")
    flag(p, "index_keys", "keys %%08d only, without the path (for paths too long for LMDB)")
    flag(p, "strict", "stop at the first unreadable image instead of skipping it")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="skip an image whose decoding takes longer (default %(default)g)")
    p.add_argument("--max_pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="skip, unread, an image whose header declares more pixels (a "
                        "decompression bomb?); 0: no limit (default %(default)d)")


# name -> (help, positionals as (dest, metavar), image flags?, the API call)
_CONVERTERS = {
    "convert-imageset": (
        "Caffe's convert_imageset: ROOTFOLDER/ + LISTFILE ('path label' lines) to an LMDB",
        [("root", "ROOTFOLDER/"), ("list_file", "LISTFILE"), ("db", "DB_NAME")], True,
        lambda a, opts: _api().convert_imageset(a.root, a.list_file, a.db,
                                                targets=a.targets, **opts)),
    "convert-annoset": (
        "SSD-Caffe's convert_annoset: ROOTFOLDER/ + LISTFILE ('image annotation' lines, or "
        "'image label' with --anno_type=classification) to an LMDB of AnnotatedDatum",
        [("root", "ROOTFOLDER/"), ("list_file", "LISTFILE"), ("db", "DB_NAME")], True,
        lambda a, opts: _annoset().convert_annoset(
            a.root, a.list_file, a.db, anno_type=a.anno_type, label_type=a.label_type,
            label_map_file=a.label_map_file or None, check_label=a.check_label,
            min_dim=a.min_dim, max_dim=a.max_dim, **opts)),
    "convert-folder": (
        "a folder of class subfolders to an LMDB (labels by sorted class name)",
        [("root", "ROOT"), ("db", "DB")], True,
        lambda a, opts: _api().convert_folder(a.root, a.db, **opts)),
    "convert-mnist": (
        "Caffe's convert_mnist_data: MNIST idx files (gzipped or not) to an LMDB",
        [("images", "IMAGES"), ("labels", "LABELS"), ("db", "DB")], False,
        lambda a, opts: _api().convert_mnist(a.images, a.labels, a.db, **opts)),
    "convert-cifar": (
        "Caffe's convert_cifar_data: CIFAR-10 binary batches to train and test LMDBs",
        [("input", "INPUT_FOLDER"), ("output", "OUTPUT_FOLDER")], False,
        lambda a, opts: _api().convert_cifar(a.input, a.output, **opts)),
}


def register(sub):
    for name, (help_, positionals, images, call) in _CONVERTERS.items():
        p = sub.add_parser(name, help=help_, description=help_ + ".")
        for dest, metavar in positionals:
            p.add_argument(dest, metavar=metavar)
        if name == "convert-cifar":
            p.add_argument("db_type", nargs="?", default=None, metavar="DB_TYPE",
                           help="lmdb or leveldb (Caffe's third argument; optional)")
        if images:
            _image_flags(p)
        if name == "convert-annoset":
            _annoset_flags(p)
        if name == "convert-imageset":
            p.add_argument("--targets", type=int, default=0, metavar="K",
                           help="lines are 'path label v1 .. vK': also write the K values to a "
                                "float LMDB DB_NAME_targets with the same keys")
        _common(p)
        p.set_defaults(func=_converter(name, images, call))

    p = sub.add_parser("labelmap", help="write a label map (labelmap.prototxt) from a class "
                       "list", description="Write an SSD-Caffe label map from a class list "
                       "(one class a line; 'name display name' sets a display name).")
    p.add_argument("classes", metavar="CLASSES", help="text file, one class a line ('-': stdin)")
    p.add_argument("out", metavar="LABELMAP", help="the label map to write")
    p.add_argument("--background", default="none_of_the_above",
                   help="name of label 0 (default %(default)s, display name 'background')")
    p.add_argument("--no-background", dest="background", action="store_const", const=None,
                   help="no background item: the first class gets label 0")
    flag(p, "overwrite", "replace an existing file")
    p.set_defaults(func=_labelmap)

    help_ = "convert the sample images shipped with caffe_lmdb and print the summary"
    p = sub.add_parser("demo", help=help_, description=help_ + (
        ": the main job on 36 small images (3 classes), into OUT (default sample_lmdb)."))
    p.add_argument("out", nargs="?", default="sample_lmdb", metavar="OUT")
    p.add_argument("--workers", type=_positive, default=None,
                   help="parallel workers (default: all cores)")
    flag(p, "overwrite", "replace OUT if it exists")
    flag(p, "quiet", "no progress bar")
    p.set_defaults(func=_demo)


def _annoset():
    from ..write import annoset  # the SSD fork's tool

    return annoset


def _annoset_flags(p):
    p.add_argument("--anno_type", default="detection", choices=("detection", "classification"),
                   help="detection: 'image annotation' lines; classification: 'image label' "
                        "(default %(default)s)")
    p.add_argument("--label_type", default="xml", choices=("xml", "json", "txt"),
                   help="annotation files: VOC XML, COCO-style JSON or 'label xmin ymin xmax "
                        "ymax' TXT (default %(default)s)")
    p.add_argument("--label_map_file", default="", metavar="FILE",
                   help="LabelMap prototxt: names of the annotations -> labels (xml, json)")
    flag(p, "check_label", "fail on a name given twice in the label map")
    p.add_argument("--min_dim", type=int, default=0, metavar="N",
                   help="scale images whose short side is below N up to it (0: off)")
    p.add_argument("--max_dim", type=int, default=0, metavar="N",
                   help="scale images whose long side is above N down to it (0: off)")


def _labelmap(args):
    if os.path.exists(args.out) and not args.overwrite:
        raise _UsageError(f"{args.out} exists; use --overwrite to replace it")
    if args.classes == "-":
        lines = sys.stdin.read().splitlines()
    else:
        with open(args.classes, encoding="utf-8") as f:
            lines = f.read().splitlines()
    items = _annoset().write_labelmap(args.out, lines, background=args.background)
    print(f"{args.out}: {len(items)} labels ({items[0][0]} = {items[0][1]} .. "
          f"{items[-1][0]} = {items[-1][1]})" if items else f"{args.out}: no labels")
    return 0


def _progress(args, what):
    """A tqdm bar on a terminal (done/total, rate, ETA); nothing when quiet or piped."""
    if args.quiet or not sys.stderr.isatty():  # (tqdm draws nothing when piped anyway)
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="img", desc=what, disable=None, dynamic_ncols=True, leave=False)

    def update(done, total):
        if bar.total != total:
            bar.total = total
            bar.refresh()
        bar.update(done - bar.n)

    return update, bar


def with_progress(args, what, call):
    """Run call(progress) with a progress bar unless --quiet; on Ctrl-C say how to resume."""
    update, bar = _progress(args, what)
    try:
        return call(update)
    except KeyboardInterrupt:
        if getattr(args, "resume", None) is not None:  # main() prints it, once
            raise KeyboardInterrupt("interrupted; the database keeps every record converted "
                                    "so far: run the same command with --resume to finish "
                                    "it") from None
        raise
    finally:
        if bar is not None:
            bar.close()


def backend_arg(text):
    """argparse type of --backend: lmdb or leveldb, any case (Caffe writes LMDB, LEVELDB)."""
    from ..storage.base import backend_name  # (imports typing: not for --help)

    try:
        return backend_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_backend(args):
    """The backend to write: convert-cifar's DB_TYPE argument, else --backend."""
    db_type = getattr(args, "db_type", None)
    if db_type is None:
        return args.backend
    from ..storage.base import backend_name

    try:
        backend = backend_name(db_type)
    except ValueError as exc:
        raise _UsageError(f"DB_TYPE: {exc}") from None
    if args.backend != "lmdb" and args.backend != backend:
        raise _UsageError(f"DB_TYPE {db_type} and --backend={args.backend} disagree")
    return backend


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value} (the shuffle's "
                                         "generator takes non-negative seeds)")
    return value


def _shard(text):
    try:
        return _api().parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _executor(args):
    """The executor the flags ask for (None: the converter's default)."""
    if args.ray_address and args.executor not in (None, "ray"):
        raise _UsageError(f"--ray-address applies to --executor=ray, not {args.executor}")
    if args.executor == "ray" or args.ray_address:
        from ..write.ray import RayExecutor  # ray itself is imported when first used

        return RayExecutor(args.workers, address=args.ray_address)
    return args.executor


def _options(args, images):
    """The API keywords the parsed flags stand for."""
    opts = dict(overwrite=args.overwrite, resume=args.resume)
    if args.map_size:
        opts["map_size"] = args.map_size
    if args.shard:
        opts["shard"] = args.shard
    if args.workers:
        opts["workers"] = args.workers
    executor = _executor(args)
    if executor is not None:
        opts["executor"] = executor
    if images:
        opts.update(gray=args.gray, shuffle=args.shuffle, seed=args.seed,
                    resize_height=args.resize_height, resize_width=args.resize_width,
                    check_size=args.check_size, encoded=args.encoded,
                    encode_type=args.encode_type, index_keys=args.index_keys,
                    strict=args.strict,
                    timeout=args.timeout or None, max_pixels=args.max_pixels)
    return opts


def _converter(name, images, call):
    """The command function: check the backend, convert with a progress bar, print the
    summary (or summaries: convert-cifar writes two databases)."""
    def command(args):
        opts = _options(args, images)
        opts["backend"] = _check_backend(args)
        result = with_progress(args, name, lambda progress: call(args, dict(opts,
                                                                             progress=progress)))
        if not args.quiet:
            for summary in (result if isinstance(result, tuple) else [result]):
                print(summary)
        return 0

    return command


def _demo(args):
    out = args.out
    root = SAMPLE_DIR + os.sep
    summary = with_progress(args, "demo", lambda progress: _api().run(
        _demo_source(root), out, job="demo", workers=args.workers, overwrite=args.overwrite,
        progress=progress))
    print(summary)
    print(f"Caffe reads it with: data_param {{ source: \"{out}\" backend: LMDB "
          "batch_size: 12 }")
    return 0


def _demo_source(root):
    """The shipped sample list, marked so that a later demo run may replace its output (the
    class is made when the demo runs: building the parser imports no converter)."""
    from ..write.sources import ListFileSource

    class DemoSource(ListFileSource):
        def fingerprint(self):
            return {**super().fingerprint(), "demo": True}

    return DemoSource(root, os.path.join(root, "list.txt"))


def preprocess(argv):
    """gflags spellings -> argparse, for this module's subcommands only."""
    for i, tok in enumerate(argv):
        if not tok.startswith("-"):
            if tok in _COMMANDS:
                try:
                    return argv[:i + 1] + gflags_argv(argv[i + 1:])
                except _UsageError as exc:
                    print(f"caffe-lmdb: {exc}", file=sys.stderr)
                    raise SystemExit(2) from None
            return argv
    return argv


_COMMANDS = ("convert-imageset", "convert-annoset", "convert-folder", "convert-mnist",
             "convert-cifar", "demo",
             "compute-mean")  # compute-mean: as Caffe's scripts call compute_image_mean
