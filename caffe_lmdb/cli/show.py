"""The show command: a contact sheet of a database's records, as a PNG."""
from ..errors import OptionError


def register(sub):
    help_ = ("a contact sheet of records (image, position, key, label) as a PNG; reads only "
             "the records it shows")
    p = sub.add_parser("show", help=help_, description=help_[:1].upper() + help_[1:] + ".")
    p.add_argument("db", metavar="DB")
    p.add_argument("--out", default="sheet.png", metavar="SHEET.png",
                   help="the image to write (default sheet.png; replaced if it exists)")
    p.add_argument("-n", type=int, default=64, help="records to show (default 64)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--start", type=int, default=0, metavar="K",
                       help="the first position shown (key order, as Caffe reads; default 0)")
    which.add_argument("--shuffle", action="store_true",
                       help="n records at random instead (shown in position order)")
    p.add_argument("--seed", type=int, help="seed of --shuffle (printed when not given)")
    p.add_argument("--labels", metavar="FILE", help="class names: one per line (line i names "
                   "label i, as convert-folder's labels.txt) or an SSD labelmap.prototxt; "
                   "default: labels.txt or labelmap.prototxt in or beside DB; 'none': numbers")
    p.add_argument("--targets", metavar="DB", help="a companion LMDB of float records under "
                   "the same keys (convert-imageset --targets): numbers under each tile, "
                   "4 (box) or 14 (box + 5 landmarks) drawn on the image")
    p.add_argument("--coords", choices=("auto", "pixels", "normalized"), default="auto",
                   help="units of the targets' coordinates (auto: normalized when all are "
                   "within 0..1)")
    p.add_argument("--tile", type=int, default=96, help="side of each image tile in pixels "
                   "(default 96)")
    p.add_argument("--columns", type=int, help="tiles per row (default: a square grid)")
    p.add_argument("--rgb", action="store_true", help="the records hold RGB, not Caffe's BGR "
                   "(convert_cifar_data's databases)")
    p.set_defaults(func=_show)


def _show(args):
    from ..tools.show import contact_sheet

    if args.seed is not None and not args.shuffle:
        raise OptionError("--seed chooses the records of --shuffle: add --shuffle (or drop "
                          "--seed)")
    labels = False if args.labels == "none" else args.labels
    sheet, info = contact_sheet(
        args.db, n=args.n, start=args.start, shuffle=args.shuffle, seed=args.seed,
        labels=labels, targets=args.targets, tile=args.tile, columns=args.columns,
        channel_order="RGB" if args.rgb else "BGR", coords=args.coords, out=args.out,
        return_info=True)
    height, width = sheet.shape[:2]
    print(f"{info} -> {args.out} ({width} x {height} px)")
    if info.targets_found and info.targets_found < len(info.positions):
        print(f"note: {len(info.positions) - info.targets_found} of the records shown have no "
              f"record in {args.targets}")
    for position, _key, message in info.errors[:5]:
        print(f"  record {position}: {message}")
    return 0
