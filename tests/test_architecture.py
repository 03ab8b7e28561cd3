"""The package's layout is a contract: imports go one way, and no module reaches into another
module's private names. Walked from the source, so a new module is checked without being
listed here.

Layers, lowest first (a module may import its own layer and the layers below it):

    errors, messages      the exceptions and how keys and sizes read in messages
    format, storage       what a record is (bytes <-> arrays); the storage engines
    read                  DatumDB: lazy reads over a storage engine through the batch decoder
    write                 sources -> encode -> executors -> sink (merge reads its inputs)
    tools                 consumers: PyTorch, features, mean, info/verify/export
    cli                   argument parsing over the layers above, public names only
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "caffe_lmdb"

LAYERS = {"errors": 0, "messages": 0, "lazy": 0, "format": 1, "storage": 1, "read": 2, "write": 3,
          "tools": 4, "cli": 5, "torch": 5, "__init__": 6}
# format and storage share a level but do not import each other
APART = {("format", "storage"), ("storage", "format")}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        rel = path.relative_to(PACKAGE).with_suffix("")
        yield path, ["caffe_lmdb", *rel.parts]


def _layer(parts):
    """Layer name of a module given as its dotted parts (caffe_lmdb, ...)."""
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path, parts):
    """(imported module parts, imported names, line) of every package import in a module."""
    tree = ast.parse(path.read_text(), str(path))
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "caffe_lmdb":
                target = node.module.split(".")
            else:
                continue
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "caffe_lmdb":
                    yield alias.name.split("."), [], node.lineno


def _violations():
    found = []
    for path, parts in _modules():
        here = _layer(parts)
        for target, names, line in _imports(path, parts):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            if len(target) == 1:  # from caffe_lmdb import X
                subs = [n for n in names
                        if (PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").exists()]
                targets = [["caffe_lmdb", n] for n in subs] or [target]
            else:
                targets = [target]
            for t in targets:
                there = _layer(t)
                if here == there:
                    continue
                if there == "__init__" and here in ("cli", "write"):
                    continue  # the public API (cli) and __version__ (ray workers' check)
                if LAYERS.get(there, 99) > LAYERS[here] or (here, there) in APART:
                    found.append(f"{where}: {here} imports {'.'.join(t)} (layer {there})")
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{where}: imports the private name {name} from "
                                 f"{'.'.join(target)}")
        found += _private_attributes(path)
    return found


def _private_attributes(path):
    """``module._name`` where ``module`` was imported from the package."""
    tree = ast.parse(path.read_text(), str(path))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith(
                "caffe_lmdb")):
            modules.update(a.asname or a.name for a in node.names)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in modules and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: uses the private "
                       f"name {node.value.id}.{node.attr}")
    return out


def test_imports_follow_the_layers_and_no_private_name_crosses_a_module():
    assert _violations() == []


@pytest.mark.parametrize("source, message", [
    ("from ..read.reader import DatumDB\n", "format imports caffe_lmdb.read.reader"),
    ("from .datum import _varint\n", "private name _varint"),
    ("from . import datum\nx = datum._header\n", "private name datum._header"),
])
def test_the_checker_sees_a_violation(tmp_path, monkeypatch, source, message):
    fake = tmp_path / "caffe_lmdb"
    (fake / "format").mkdir(parents=True)
    (fake / "format" / "bad.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert any(message in v for v in _violations())
