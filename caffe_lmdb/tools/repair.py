"""The repairs as ``caffe_lmdb.rekey`` and ``caffe_lmdb.import_raw`` offer them: the writing
(:mod:`caffe_lmdb.write.repair`), then a :func:`~caffe_lmdb.tools.dbinfo.verify` of what was
written, whose result goes into the summary (``verify: OK (...)``); problems found there raise
:class:`~caffe_lmdb.errors.VerifyError` (the databases are kept as written)."""
from __future__ import annotations

import os
import time

from ..errors import VerifyError
from ..write import repair as _write
from ..write.summary import Summary
from .dbinfo import verify as verify_db

__all__ = ["rekey", "import_raw"]


def rekey(src, dst, width: int = 8, skip_other: bool = False, *, verify: bool = True,
          **options) -> Summary:
    """Copy the LMDB ``src`` to ``dst`` with keys ``%0{width}d`` of its keys' numbers, in
    numeric order, values unchanged (``caffe-lmdb rekey SRC DST``), then verify ``dst``
    (``verify=False``: no verify). See :func:`caffe_lmdb.write.repair.rekey`."""
    summary = _write.rekey(src, dst, width, skip_other, **options)
    if verify:
        _verify(summary, summary.path)
    return summary


def import_raw(src, dst, shape, layout: str = "HWC", labels=None, skip_bad: bool = False, *,
               width: int = 8, verify: bool = True, **options) -> Summary:
    """Turn a database of raw pixel values, with labels and targets in companion keys, into
    Datum records (``caffe-lmdb import-raw SRC DST --shape H,W,C``), then verify what was
    written (``verify=False``: no verify). See :func:`caffe_lmdb.write.repair.import_raw`."""
    summary = _write.import_raw(src, dst, shape, layout, labels, skip_bad, width=width,
                                **options)
    if verify:
        _verify(summary, summary.path, summary.targets_path)
    return summary


def _verify(summary, *paths):
    t0 = time.perf_counter()
    said = []
    for path in paths:
        if path is None:
            continue
        report = verify_db(path, decode_images=False)
        if not report.ok:
            shown = "; ".join(str(p) for p in report.problems[:3])
            raise VerifyError(f"{path} was written ({report.entries} records) but verify finds "
                              f"{report.problem_count} problems: {shown} (caffe-lmdb verify "
                              f"{path} lists them)", report)
        said.append(f"{report.entries} records in {os.path.basename(path.rstrip(os.sep))}")
    seconds = time.perf_counter() - t0
    summary.extra["verify"] = f"OK ({', '.join(said)}; {seconds:.1f} s)"
    summary.seconds += seconds
