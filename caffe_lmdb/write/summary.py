"""What a conversion (or a merge) did, as its tools print it."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..messages import human_bytes

__all__ = ["Summary"]


@dataclass
class Summary:
    """What a conversion did. ``written``: records in the database; ``skipped``: the
    :class:`~caffe_lmdb.encode.Skip` of every sample that gave no record (with its reason);
    ``bytes``: bytes of record values written; ``seconds``: this run's wall time."""
    path: str
    total: int = 0
    written: int = 0
    skipped: list = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    resumed_from: int = 0
    targets_path: str | None = None
    log_path: str | None = None
    file_bytes: int = 0
    map_grown: int = 0
    extra: dict = field(default_factory=dict)
    backend: str = "lmdb"

    @property
    def images_per_second(self):
        done = self.total - self.resumed_from
        return done / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self):
        lines = [f"{self.path}: {self.written} records written, {len(self.skipped)} skipped, "
                 f"{human_bytes(self.bytes)} of records ({human_bytes(self.file_bytes)} "
                 f"{'data.mdb' if self.backend == 'lmdb' else 'of LevelDB files'}), "
                 f"{self.seconds:.2f} s"
                 + (f" (resumed at sample {self.resumed_from})" if self.resumed_from else "")]
        if self.targets_path:
            lines.append(f"  targets (float_data, same keys): {self.targets_path}")
        for skip in self.skipped[:10]:
            lines.append(f"  skipped {skip.where}: {skip.reason}")
        if len(self.skipped) > 10:
            lines.append(f"  ... {len(self.skipped) - 10} more")
        if self.skipped and self.log_path:
            lines.append(f"  every skipped sample is listed in {self.log_path}")
        for name, value in self.extra.items():
            lines.append(f"  {name}: {value}")
        return "\n".join(lines)
