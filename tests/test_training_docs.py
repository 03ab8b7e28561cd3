"""docs/training.md: every python snippet runs, in order, in an empty folder."""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "training.md"


def test_training_doc_snippets_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{DOC.name} snippet {i + 1}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message says which snippet
            raise AssertionError(f"snippet {i + 1} of {DOC} fails: {exc!r}\n{block}") from exc
