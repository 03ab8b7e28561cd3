"""Repair commands: ``rekey`` and ``import-raw`` (see :mod:`caffe_lmdb.write.repair`)."""
import sys


def register(sub):
    help_ = ("copy a database whose keys are numbers without zero padding (read as 0, 1, 10, "
             "100, ...) with keys %%0Nd in numeric order, values unchanged")
    p = sub.add_parser("rekey", help=help_, description=help_ + ".")
    p.add_argument("src", metavar="SRC", help="the LMDB to repair (only read)")
    p.add_argument("dst", metavar="DST", help="the new LMDB folder")
    p.add_argument("--width", type=int, default=8, metavar="N",
                   help="digits of the new keys (default 8; 10 for extract_features output)")
    p.add_argument("--skip-other", action="store_true",
                   help="leave out keys that are not numbers (default: stop, naming them)")
    _common(p)
    p.set_defaults(func=_rekey)

    help_ = ("turn a database of raw pixel values (numeric keys, values like "
             "cv2.imread(path).tobytes()) into Caffe Datum records, keys %%08d in numeric order, "
             "labels and targets taken from companion keys")
    p = sub.add_parser("import-raw", help=help_, description=help_ + ".", epilog=(
        "--labels SPEC: comma-separated items, a bare item being the companion key pattern "
        "('{}' stands for the sample key's digits), others format=F (text, the default, or "
        "int8/uint8/int16/int32/int64/float32/float64, little-endian) and db=PATH (the LMDB "
        "holding the companion keys; pattern '{}' there by default). Examples: '{}_' (key 17_ "
        "holds 'label,x1 y1 x2 y2,...' for sample 17), '{}_,format=int32', 'db=labels_lmdb'. "
        "The first field is the label; the others go to DST_targets (float_data records under "
        "the same keys, as convert-imageset --targets writes)."))
    p.add_argument("src", metavar="SRC", help="the LMDB of raw values (only read)")
    p.add_argument("dst", metavar="DST", help="the new LMDB folder (and DST_targets)")
    p.add_argument("--shape", required=True, metavar="H,W,C",
                   help="the shape of every value, e.g. 12,12,3")
    p.add_argument("--layout", default="HWC", type=str.upper, choices=("HWC", "CHW"),
                   help="byte order of a value: HWC (interleaved, as cv2.imread gives; the "
                        "default) or CHW (planar)")
    p.add_argument("--labels", default=None, metavar="SPEC",
                   help="where the labels (and targets) are: see below")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip and count bad samples (wrong size, no companion, unparsable "
                        "label) and stray keys, instead of stopping at the first")
    p.add_argument("--width", type=int, default=8, metavar="N",
                   help="digits of the new keys (default 8)")
    _common(p)
    p.set_defaults(func=_import_raw)


def _common(p):
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run of the same command")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not verify DST when it is written")
    p.add_argument("--map_size", "--map-size", dest="map_size", type=int, default=None,
                   metavar="BYTES", help="initial LMDB map size (it grows by itself when full)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar and no summary (errors are still printed)")


def _options(args):
    opts = {"overwrite": args.overwrite, "resume": args.resume, "verify": args.verify}
    if args.map_size:
        opts["map_size"] = args.map_size
    return opts


def _run(args, what, call):
    """Run with a progress bar on a terminal; print the summary."""
    bar = None
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="rec", desc=what, disable=None, dynamic_ncols=True,
                   leave=False)

        def progress(done, total):
            if bar.total != total:
                bar.total = total
                bar.refresh()
            bar.update(done - bar.n)

    try:
        summary = call(progress)
    except KeyboardInterrupt:
        print("caffe-lmdb: interrupted; the database keeps every record written so far: run "
              "the same command with --resume to finish it", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    if not args.quiet:
        print(summary)
    return 0


def _rekey(args):
    from .. import rekey  # imported when the command runs: --help stays light

    return _run(args, "rekey", lambda progress: rekey(
        args.src, args.dst, width=args.width, skip_other=args.skip_other, progress=progress,
        **_options(args)))


def _import_raw(args):
    from .. import import_raw

    return _run(args, "import-raw", lambda progress: import_raw(
        args.src, args.dst, args.shape, layout=args.layout, labels=args.labels,
        skip_bad=args.skip_bad, width=args.width, progress=progress, **_options(args)))

