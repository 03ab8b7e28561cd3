"""Start-up: ``import caffe_lmdb`` and the command line's parser import nothing heavy.

Each check runs in a fresh interpreter, since this test process has imported everything."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("cv2", "torch", "ray", "tqdm", "google.protobuf")


def _imported_after(code):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    probe = f"{code}\nimport sys\nprint('MODULES:', ' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, check=True).stdout  # after --help's text, if any
    return set(out.rsplit("MODULES:", 1)[1].split())


def _heavy(modules, extra=()):
    return sorted(m for m in modules for h in HEAVY + tuple(extra)
                  if m == h or m.startswith(h + "."))


def test_import_caffe_lmdb_imports_nothing_heavy():
    modules = _imported_after("import caffe_lmdb")
    assert "caffe_lmdb" in modules
    assert _heavy(modules) == []


@pytest.mark.parametrize("name", ["open", "DatumDB", "write_arrays", "DatumWriter",
                                  "compute_mean", "read_features", "decode_batch", "merge",
                                  "RayExecutor", "convert_imageset"])
def test_public_names_import_only_what_they_use(name):
    # reading, writing arrays, means, features: no OpenCV, no protobuf runtime, no tqdm
    modules = _imported_after(f"import caffe_lmdb\ncaffe_lmdb.{name}")
    assert _heavy(modules) == []


def test_the_protobuf_classes_are_there_when_asked_for():
    modules = _imported_after("import caffe_lmdb\nd = caffe_lmdb.Datum(channels=1)\n"
                              "assert d.SerializeToString() == b'\\x08\\x01'")
    assert "google.protobuf" in modules


def test_every_public_name_resolves():
    import caffe_lmdb

    for name in caffe_lmdb.__all__:
        assert getattr(caffe_lmdb, name) is not None, name
    assert set(caffe_lmdb.__all__) <= set(dir(caffe_lmdb))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        caffe_lmdb.nope  # noqa: B018


def test_the_cli_parser_imports_neither_numpy_nor_heavy_modules():
    modules = _imported_after("from caffe_lmdb.cli import build_parser\nbuild_parser()")
    assert _heavy(modules, extra=("numpy", "lmdb")) == []


def test_help_of_every_command_runs_without_heavy_modules():
    from caffe_lmdb.cli import build_parser

    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and isinstance(a.choices, dict))
    for name in [None, *sub.choices]:
        argv = ["--help"] if name is None else [name, "--help"]
        code = ("import sys\nfrom caffe_lmdb.cli import main\n"
                f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass")
        modules = _imported_after(code)
        assert _heavy(modules, extra=("numpy",)) == [], name


def test_the_parser_of_one_command_is_the_full_parser_s(capsys):
    """main() builds only the arguments of the command it runs: that command's help (and so its
    arguments) must be the full parser's, and the top-level help must list every command."""
    from caffe_lmdb.cli import build_parser, main

    full = build_parser()
    sub = next(a for a in full._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert capsys.readouterr().out == parser.format_help(), name
    with pytest.raises(SystemExit):
        main(["--help"])
    assert capsys.readouterr().out == full.format_help()
    one = build_parser("info")
    assert next(a for a in one._actions if a.dest == "command").choices.keys() == \
        sub.choices.keys()
