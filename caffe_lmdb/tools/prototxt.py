"""The input of a Caffe Data layer, read from the net's own file (a train_val.prototxt).

``caffe_lmdb.from_prototxt("train_val.prototxt", phase="train")`` parses the net with protobuf's
text format over proto/caffe_net.proto (Caffe's names and field numbers for the messages
involved; every other field of the file is skipped), keeps the layers Caffe would keep in that
phase (its NetStateRule ``include`` / ``exclude`` rules), and returns the Data layer's input:
:class:`DataLayerInput`, with the database, the batch size and the :class:`Transform`.

Relative paths (``data_param.source``, ``transform_param.mean_file``): Caffe opens them relative
to its working directory. So does this, first; when a path is not found there, it tries the
prototxt's folder, and says which was used (``DataLayerInput.paths``, and a warning when it is not
where Caffe would look). ``root=`` resolves them against a folder of your choice instead.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaffeLMDBError, NotADatumDBError
from .transform import Transform

__all__ = ["DataLayerInput", "PrototxtError", "from_prototxt", "parse_net"]

_INPUT_TYPES = ("Data", "ImageData", "AnnotatedData", "HDF5Data", "Input", "MemoryData",
                "WindowData", "DummyData", "Python")


_READER_OPTIONS = ("channel_order", "layout", "dtype", "color", "readahead", "lock")
#: The layers that read a Caffe database: BVLC's Data and SSD-Caffe's AnnotatedData.
_DB_LAYERS = ("Data", "AnnotatedData")


class PrototxtError(CaffeLMDBError, ValueError):
    """A net file that cannot be read, or has no usable Data layer for the phase asked."""


class PathFallbackWarning(UserWarning):
    """A relative path of a prototxt was found relative to the prototxt's folder, not to the
    working directory where Caffe looks for it."""


def _pb2():
    from ..format.proto import messages

    return messages()


def parse_net(text_or_path: str | os.PathLike) -> tuple[Any, str | None]:
    """``(NetParameter, path or None)`` of a prototxt file, or of prototxt text."""
    from google.protobuf import text_format

    path = None
    if isinstance(text_or_path, os.PathLike) or (
            isinstance(text_or_path, str) and "{" not in text_or_path
            and "\n" not in text_or_path):
        path = os.fspath(text_or_path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PrototxtError(f"cannot read the prototxt {path}: {exc.strerror}") from exc
    else:
        text = text_or_path
    net = _pb2().NetParameter()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        where = path or "prototxt text"
        raise PrototxtError(f"{where}:{exc} (Caffe's text format: "
                            "`field: value` and `message {{ ... }}`)") from exc
    if len(net.layers) and not len(net.layer):
        raise PrototxtError(f"{path or 'the prototxt'} uses Caffe's deprecated V1 format "
                            "(`layers { type: DATA ... }`): upgrade it first with Caffe's "
                            "upgrade_net_proto_text tool")
    return net, path


@dataclass
class DataLayerInput:
    """What a Caffe Data layer feeds the net in one phase, ready to iterate.

    ``source`` is the resolved database path, ``backend`` ``"LMDB"`` or ``"LEVELDB"`` (Caffe's
    default when unset), ``transform`` the layer's transform_param as a :class:`Transform` for
    ``phase``; ``include`` / ``exclude`` are the layer's rules as dicts; ``paths`` says where
    each relative path was found."""

    name: str
    phase: str
    source: str
    backend: str
    batch_size: int
    transform: Transform
    rand_skip: int = 0
    tops: list[str] = field(default_factory=list)
    include: list[dict] = field(default_factory=list)
    exclude: list[dict] = field(default_factory=list)
    prototxt: str | None = None
    paths: dict[str, str] = field(default_factory=dict)

    def open(self, **options: Any):
        """The database, as :func:`caffe_lmdb.open` opens it (``options`` are its options).
        Its engine must be the layer's ``backend``, as Caffe requires."""
        from ..read.reader import open as open_db

        db = open_db(self.source, **options)
        found = str(getattr(db, "backend", "lmdb")).upper()
        if found != self.backend:
            db.close()
            default = " (Caffe's default when data_param sets no backend)" \
                if self.backend == "LEVELDB" else ""
            raise NotADatumDBError(
                f"layer {self.name!r} reads {self.source} with backend {self.backend}{default}, "
                f"but it is an {found} database, which Caffe would fail to open: add "
                f"`backend: {found}` to the layer's data_param")
        return db

    def batches(self, shuffle: bool = False, seed: int | None = None, drop_last: bool = False,
                shard: tuple[int, int] | None = None, epoch: int | None = None,
                **options: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(data, labels)`` batches of ``batch_size``: data float32 (N, C, crop, crop) as the
        layer's ``data`` top, labels int64. One pass in key order by default (Caffe's order;
        Caffe itself wraps around forever); ``shuffle``, ``shard`` and the rest as in
        :meth:`DatumDB.batches`."""
        db = self.open(**options)
        yield from db.batches(self.batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                              shard=shard, epoch=epoch, transform=self.transform)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.batches()

    def dataset(self, **kwargs: Any):
        """A torch :class:`~caffe_lmdb.torch.DatumDataset` with this transform."""
        from .dataset import DatumDataset

        reader = {k: kwargs.pop(k) for k in list(kwargs) if k in _READER_OPTIONS}
        return DatumDataset(self.open(**reader), transform=self.transform, **kwargs)

    def dataloader(self, **kwargs: Any):
        """A torch DataLoader of :meth:`dataset` with the layer's batch_size (``kwargs`` go to
        DataLoader: num_workers, shuffle, ...); a detection database (an AnnotatedData layer's)
        is collated with :func:`~caffe_lmdb.torch.detection_collate`."""
        from torch.utils.data import DataLoader

        from .dataset import collate, detection_collate

        dataset = self.dataset()
        kwargs.setdefault("batch_size", self.batch_size)
        kwargs.setdefault("collate_fn", detection_collate if dataset.detection else collate)
        return DataLoader(dataset, **kwargs)


def from_prototxt(text_or_path: str | os.PathLike, phase: str = "train", *,
                  layer: str | None = None, root: str | os.PathLike | None = None,
                  seed: int | None = None, level: int | None = None,
                  stages: Sequence[str] | None = None) -> DataLayerInput:
    """The input of the Data layer a net (a train_val.prototxt path, or its text) has in
    ``phase`` (``"train"`` or ``"test"``).

    The layers are filtered as Caffe does for that NetState (the file's own ``state`` level
    and stages, or ``level`` / ``stages``); ``layer`` picks a Data layer by name when several
    are active. ``seed`` seeds the transform's random stream. Relative paths are resolved
    against ``root`` when given, else the working directory, else the prototxt's folder."""
    phase_key = str(phase).lower()
    if phase_key not in ("train", "test"):
        raise ValueError(f"phase must be 'train' or 'test', not {phase!r}")
    pb = _pb2()
    net, path = parse_net(text_or_path)
    where = path or "the prototxt"
    state = pb.NetState()
    state.CopyFrom(net.state)
    state.phase = pb.TRAIN if phase_key == "train" else pb.TEST
    if level is not None:
        state.level = int(level)
    if stages is not None:
        del state.stage[:]
        state.stage.extend(stages)

    active = [lp for lp in net.layer if _included(lp, state, where)]
    if layer is not None:
        named = [lp for lp in net.layer if lp.name == layer]
        if not named:
            raise PrototxtError(f"{where} has no layer named {layer!r} (layers: "
                                f"{', '.join(repr(lp.name) for lp in net.layer) or 'none'})")
        if named[0] not in active:
            raise PrototxtError(f"layer {layer!r} of {where} is not part of the net in phase "
                                f"{phase_key.upper()} (its include/exclude rules leave it out)")
        chosen = named[0]
        if chosen.type not in _DB_LAYERS:
            raise PrototxtError(f"layer {layer!r} of {where} is a {chosen.type!r} layer; only "
                                "Data and AnnotatedData layers read a Caffe database")
    else:
        data = [lp for lp in active if lp.type in _DB_LAYERS]
        if not data:
            others = [f"{lp.name!r} ({lp.type})" for lp in active
                      if lp.type in _INPUT_TYPES and lp.type not in _DB_LAYERS]
            raise PrototxtError(
                f"{where} has no Data layer in phase {phase_key.upper()}"
                + (f"; its inputs are {', '.join(others)}, which do not read a Caffe "
                   "database of Datum records" if others else ""))
        if len(data) > 1:
            raise PrototxtError(f"{where} has {len(data)} Data layers in phase "
                                f"{phase_key.upper()} ({', '.join(repr(lp.name) for lp in data)})"
                                ": pick one with layer=")
        chosen = data[0]

    dp, tp = chosen.data_param, chosen.transform_param
    if not dp.HasField("source"):
        raise PrototxtError(f"Data layer {chosen.name!r} of {where} has no data_param.source")
    if dp.batch_size <= 0:
        raise PrototxtError(f"Data layer {chosen.name!r} of {where} has batch_size "
                            f"{dp.batch_size}; Caffe needs batch_size > 0 (data_param "
                            "{ batch_size: N })")
    legacy = [f for f in ("scale", "mean_file", "crop_size", "mirror", "force_encoded_color")
              if dp.HasField(f)]
    if legacy:
        warnings.warn(f"Data layer {chosen.name!r} of {where} sets data_param "
                      f"{', '.join(legacy)}: Caffe ignores these deprecated fields in a `layer` "
                      "(it moves them only from V1 `layers`); so does this reader: put them in "
                      "transform_param", stacklevel=2)
    paths: dict[str, str] = {}
    base = os.path.dirname(os.path.abspath(path)) if path else None
    source = _resolve(dp.source, "source", root, base, where, paths)
    mean_file = None
    if tp.HasField("mean_file"):
        mean_file = _resolve(tp.mean_file, "mean_file", root, base, where, paths)
    ssd = _ssd_options(chosen, tp, where)
    transform = Transform(
        crop_size=tp.crop_size, mirror=tp.mirror, mean_file=mean_file,
        mean_value=list(tp.mean_value) or None, scale=tp.scale, force_color=tp.force_color,
        force_gray=tp.force_gray, phase=phase_key, seed=seed, **ssd)
    backend = pb.DataParameter.DB.Name(dp.backend)
    return DataLayerInput(
        name=chosen.name, phase=phase_key, source=source, backend=backend,
        batch_size=int(dp.batch_size), transform=transform, rand_skip=int(dp.rand_skip),
        tops=list(chosen.top), include=[_rule(r) for r in chosen.include],
        exclude=[_rule(r) for r in chosen.exclude], prototxt=path, paths=paths)


def _unsupported(layer, field_name: str, where, why: str = "") -> PrototxtError:
    return PrototxtError(
        f"layer {layer.name!r} of {where} sets {field_name}, which is not supported yet"
        f"{why}: caffe_lmdb would give other data than SSD-Caffe; remove it from the prototxt "
        "(or transform with your own code, e.g. DatumDataset(..., joint_transform=...))")


def _ssd_options(layer, tp, where) -> dict:
    """The Transform options of SSD-Caffe's transform_param fields (resize_param WARP with one
    interp_mode, emit_constraint); any other field that changes the data is refused."""
    for name in ("distort_param", "expand_param", "noise_param"):
        if tp.HasField(name):
            raise _unsupported(layer, f"transform_param.{name}", where)
    for name in ("crop_h", "crop_w"):
        if getattr(tp, name):
            raise _unsupported(layer, f"transform_param.{name}", where, " (use crop_size)")
    if len(layer.annotated_data_param.batch_sampler):
        raise _unsupported(layer, "annotated_data_param.batch_sampler", where,
                           " (SSD's random sampled crops)")
    options: dict = {}
    if tp.HasField("resize_param"):
        rp = tp.resize_param
        kind = type(rp)
        mode = kind.Resize_mode.Name(rp.resize_mode)
        if mode != "WARP":
            raise _unsupported(layer, f"transform_param.resize_param.resize_mode {mode}", where,
                               " (only WARP is)")
        if not (rp.height > 0 and rp.width > 0):
            raise PrototxtError(f"layer {layer.name!r} of {where}: resize_param needs height "
                                "and width > 0 (SSD-Caffe: \"Check failed: "
                                "param_.resize_param().height() > 0\")")
        modes = [kind.Interp_mode.Name(m) for m in rp.interp_mode]
        if len(modes) > 1:
            raise _unsupported(
                layer, f"transform_param.resize_param with {len(modes)} interp_modes "
                f"({', '.join(modes)})", where,
                " (SSD-Caffe picks one per image from Caffe's global random stream, which "
                "cannot be reproduced: list one)")
        options["resize"] = (int(rp.height), int(rp.width))
        options["interp_mode"] = modes[0] if modes else "LINEAR"
    if tp.HasField("emit_constraint"):
        ec = tp.emit_constraint
        options["emit_constraint"] = type(ec).EmitType.Name(ec.emit_type)
        options["emit_overlap"] = ec.emit_overlap
    return options


def _rule(rule) -> dict:
    out: dict = {}
    if rule.HasField("phase"):
        out["phase"] = _pb2().Phase.Name(rule.phase)
    for name in ("min_level", "max_level"):
        if rule.HasField(name):
            out[name] = getattr(rule, name)
    for name in ("stage", "not_stage"):
        if len(getattr(rule, name)):
            out[name] = list(getattr(rule, name))
    return out


def _meets(state, rule) -> bool:
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _included(lp, state, where) -> bool:
    """Caffe's Net::FilterNet for one layer: with include rules, kept when one is met; else
    kept unless an exclude rule is met."""
    if len(lp.include) and len(lp.exclude):
        raise PrototxtError(f"layer {lp.name!r} of {where} has both include and exclude rules; "
                            "Caffe refuses that (\"Specify either include rules or exclude "
                            "rules; not both\")")
    if len(lp.include):
        return any(_meets(state, r) for r in lp.include)
    return not any(_meets(state, r) for r in lp.exclude)


def _resolve(value: str, what: str, root, base, where, paths) -> str:
    """A path of the prototxt, resolved as Caffe does (working directory), then against the
    prototxt's folder; records which one was used in ``paths``."""
    if os.path.isabs(value):
        paths[what] = f"{value} (absolute)"
        return value
    if root is not None:
        full = os.path.join(os.fspath(root), value)
        if not os.path.exists(full):
            raise PrototxtError(f"{what} {value!r} of {where} is not in root={os.fspath(root)!r} "
                                f"({full} does not exist)")
        paths[what] = f"{full} (relative to root)"
        return full
    cwd = os.getcwd()
    if os.path.exists(value):
        full = os.path.join(cwd, value)
        paths[what] = f"{full} (relative to the working directory, as Caffe)"
        return full
    if base is not None:
        full = os.path.join(base, value)
        if os.path.exists(full):
            paths[what] = f"{full} (relative to the prototxt's folder)"
            warnings.warn(f"{what} {value!r} of {where} is not in the working directory {cwd}, "
                          f"where Caffe looks for it; using {full}, relative to the prototxt's "
                          "folder", PathFallbackWarning, stacklevel=3)
            return full
    tried = f"the working directory {cwd}" + (f" nor in the prototxt's folder {base}"
                                              if base else "")
    raise PrototxtError(f"{what} {value!r} of {where} is not found in {tried}: run from the "
                        "folder Caffe runs from, or pass root=")
