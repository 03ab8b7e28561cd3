"""docs/reliability.md: every row of the "What happens when ..." table names tests that exist."""
import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"


def _table_rows():
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## What happens when ...", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and
            not line.startswith("| ... |") and not line.startswith("|---")]


def _functions(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_row_names_existing_tests():
    rows = _table_rows()
    assert len(rows) >= 40
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[1]
        named = 0
        current = None
        # "tests/x.py::test_a[param]; ::test_b" -- a bare ::name refers to the last file named
        for file_part, name in re.findall(r"(tests/[\w.]+\.py)?::(test_\w+)", cell):
            current = file_part or current
            assert current is not None, row
            assert name in _functions(REPO / current), f"{current}::{name} does not exist"
            named += 1
        assert named, f"no test named in: {row[:80]}"
