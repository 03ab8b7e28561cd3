"""The hand-written database of scripts/make_handwritten_lmdb.py, for the repair tests."""
import importlib.util
import pathlib

_SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "make_handwritten_lmdb.py"
_spec = importlib.util.spec_from_file_location("make_handwritten_lmdb", _SCRIPT)
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)


def handwritten_lmdb(path, n=3000, **options):
    """Write the seed post's database at ``path``; returns the arrays it was made from."""
    return maker.make_handwritten_lmdb(path, n, **options)
