"""Site datasets: what the site declares in its config, and loading it into NumPy arrays.

The daemon uses this module to check a job's expected schema against what the site exposes
(it never imports torch); the worker process uses it to read the file itself.

Formats:
- ``csv``: a header row, then one row per record; ``features`` and ``label`` name columns.
- ``parquet``: ``features`` and ``label`` name columns of numeric type.
- ``npz``: two arrays, ``x`` (records first, any trailing shape) and ``y`` (one label per
  record). ``features`` is either the single name ``["x"]`` (the whole array, e.g. images for
  the CNN, whose model reads ``input_shape``) or one name per flattened column of ``x`` (their
  count must equal ``prod(x.shape[1:])``), so logreg/MLP jobs can name their features.
  ``label`` is a name for the schema check only; the labels are always read from ``y``.

The hold-out split is deterministic: a permutation seeded by SHA-256 of the dataset name, so
the same records are held out in every round and every job on that dataset.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.data.standardize import Statistics, site_statistics
from agent.data.standardize import apply as standardize
from confide.config import Section
from confide.errors import ConfigError, InternalError, PolicyRefusal, Reason
from confide.v1 import common_pb2, federation_pb2

__all__ = [
    "DataFormat",
    "DatasetConfig",
    "LoadedData",
    "check_schema",
    "config_from_json",
    "config_to_json",
    "count_train_records",
    "dataset_from_config",
    "declared_sizes",
    "load_arrays",
]

_FEATURE_TYPES = ("float32", "float64")
_LABEL_TYPES = ("int64", "int32")


class DataFormat(enum.Enum):
    """File format of a site dataset."""

    CSV = "csv"
    PARQUET = "parquet"
    NPZ = "npz"


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset a site exposes, as declared in ``[datasets.NAME]``.

    Args:
        name: the dataset name jobs ask for.
        path: the file.
        format: file format; ``dataset_from_config`` defaults it from the extension.
        features: feature column names, in model input order.
        label: label column name (class index per record).
        feature_type: ``float32`` or ``float64`` (the model always trains in float32).
        label_type: ``int64`` or ``int32``.
        holdout_fraction: fraction of records kept for evaluation, in [0, 1).
        input_shape: when not empty, each record's features are reshaped to it (CNN).
        standardize: centre and scale each feature by its mean and standard deviation over
            this site's training records (``agent.data.standardize``).
    """

    name: str
    path: Path
    format: DataFormat
    features: tuple[str, ...]
    label: str
    feature_type: str = "float32"
    label_type: str = "int64"
    holdout_fraction: float = 0.2
    input_shape: tuple[int, ...] = field(default=())
    standardize: bool = False


@dataclass(frozen=True)
class LoadedData:
    """A dataset split into training and hold-out arrays (features float32, labels int64)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_holdout: npt.NDArray[np.float32]
    y_holdout: npt.NDArray[np.int64]


def _format_from_path(path: Path) -> DataFormat | None:
    suffix = path.suffix.lower().lstrip(".")
    return {
        "csv": DataFormat.CSV,
        "parquet": DataFormat.PARQUET,
        "pq": DataFormat.PARQUET,
        "npz": DataFormat.NPZ,
    }.get(suffix)


def dataset_from_config(name: str, section: Section) -> DatasetConfig:
    """Read one ``[datasets.NAME]`` table.

    Args:
        name: the table's name, which jobs use as the dataset name.
        section: the table.

    Raises:
        ConfigError: a key is missing or invalid; names the key, e.g. ``datasets.NAME.path``.
    """
    path: Path = section.path("path")
    if section.has("format"):
        fmt: DataFormat = section.choice("format", DataFormat)
    else:
        guessed = _format_from_path(path)
        if guessed is None:
            raise ConfigError(
                section.key("format"), f"cannot tell the format of {path.name}; set csv|parquet|npz"
            )
        fmt = guessed
    features = section.str_list("features")
    if not features or any(not f for f in features):
        raise ConfigError(section.key("features"), "must list at least one non-empty name")
    if len(set(features)) != len(features):
        raise ConfigError(section.key("features"), "must not repeat a name")
    label: str = section.str("label")
    if label in features:
        raise ConfigError(section.key("label"), "must not also be a feature")
    feature_type: str = section.str("feature_type", "float32")
    if feature_type not in _FEATURE_TYPES:
        raise ConfigError(
            section.key("feature_type"), f"must be one of {', '.join(_FEATURE_TYPES)}"
        )
    label_type: str = section.str("label_type", "int64")
    if label_type not in _LABEL_TYPES:
        raise ConfigError(section.key("label_type"), f"must be one of {', '.join(_LABEL_TYPES)}")
    holdout: float = section.float("holdout_fraction", 0.2, min=0.0, max=1.0, max_exclusive=True)
    shape_raw: Any = section.value("input_shape", [])
    if not isinstance(shape_raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape_raw
    ):
        raise ConfigError(section.key("input_shape"), "must be a list of positive integers")
    standardize: bool = section.bool("standardize", False)
    section.done()
    return DatasetConfig(
        name=name,
        path=path,
        format=fmt,
        features=tuple(features),
        label=label,
        feature_type=feature_type,
        label_type=label_type,
        holdout_fraction=holdout,
        input_shape=tuple(shape_raw),
        standardize=standardize,
    )


def check_schema(cfg: DatasetConfig, spec: common_pb2.DatasetSpec) -> None:
    """Refuse a job whose expected schema differs from the one the site declared.

    Raises:
        PolicyRefusal: ``SCHEMA_MISMATCH`` naming the first difference.
    """
    job_features = tuple(spec.features)
    if job_features != cfg.features:
        missing = [f for f in job_features if f not in cfg.features]
        detail = (
            f"unknown feature {missing[0]!r}" if missing else "features differ in number or order"
        )
        raise PolicyRefusal(
            f"dataset {cfg.name!r}: {detail}", reason=Reason.SCHEMA_MISMATCH, public=True
        )
    if spec.label != cfg.label:
        raise PolicyRefusal(
            f"dataset {cfg.name!r}: label is {cfg.label!r}, job expects {spec.label!r}",
            reason=Reason.SCHEMA_MISMATCH,
            public=True,
        )
    if cfg.input_shape and tuple(spec.input_shape) and tuple(spec.input_shape) != cfg.input_shape:
        raise PolicyRefusal(
            f"dataset {cfg.name!r}: input_shape is {list(cfg.input_shape)}, "
            f"job expects {list(spec.input_shape)}",
            reason=Reason.SCHEMA_MISMATCH,
            public=True,
        )


def config_to_json(cfg: DatasetConfig) -> dict[str, Any]:
    """A JSON-able form of a dataset config, to hand to the worker process."""
    return {
        "name": cfg.name,
        "path": str(cfg.path),
        "format": cfg.format.value,
        "features": list(cfg.features),
        "label": cfg.label,
        "feature_type": cfg.feature_type,
        "label_type": cfg.label_type,
        "holdout_fraction": cfg.holdout_fraction,
        "input_shape": list(cfg.input_shape),
        "standardize": cfg.standardize,
    }


def config_from_json(data: dict[str, Any]) -> DatasetConfig:
    """The inverse of ``config_to_json``.

    Raises:
        ConfigError: a field is missing or of the wrong type (key ``dataset.FIELD``).
    """
    try:
        return DatasetConfig(
            name=str(data["name"]),
            path=Path(str(data["path"])),
            format=DataFormat(data["format"]),
            features=tuple(str(f) for f in data["features"]),
            label=str(data["label"]),
            feature_type=str(data["feature_type"]),
            label_type=str(data["label_type"]),
            holdout_fraction=float(data["holdout_fraction"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            standardize=bool(data.get("standardize", False)),
        )
    except KeyError as exc:
        raise ConfigError(f"dataset.{exc.args[0]}", "is required but missing") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError("dataset", f"invalid dataset config: {exc}") from None


def declared_sizes(configs: Iterable[DatasetConfig]) -> list[federation_pb2.DatasetSize]:
    """Training and hold-out record counts of each readable dataset, declared at register.

    A dataset that cannot be read now is left out (nothing is declared for it) rather than
    keeping the site from connecting; its tasks fail on their own.
    """
    out: list[federation_pb2.DatasetSize] = []
    for cfg in configs:
        try:
            train = count_train_records(cfg)
        except InternalError:
            continue
        total = _count_all(cfg)
        out.append(
            federation_pb2.DatasetSize(
                name=cfg.name, train_records=train, holdout_records=total - train
            )
        )
    return out


def count_train_records(cfg: DatasetConfig) -> int:
    """How many records the worker trains on, counted by the daemon itself.

    The daemon's privacy accounting depends on the sampling rate q = batch / n_train; it must
    not take n_train from the worker's word. Counting reads no feature values: CSV rows (as
    ``load_arrays`` reads them), Parquet metadata, or the length of the npz ``y`` array.

    Raises:
        InternalError: ``UNAVAILABLE``: the file is missing or unreadable.
    """
    n = _count_all(cfg)
    return n - round(n * cfg.holdout_fraction)


def _count_all(cfg: DatasetConfig) -> int:
    """Every record in the dataset's file (training and hold-out).

    Raises:
        InternalError: ``UNAVAILABLE``: the file is missing or unreadable.
    """
    try:
        if cfg.format is DataFormat.CSV:
            with cfg.path.open(newline="", encoding="utf-8") as fh:
                n = max(0, sum(1 for row in csv.reader(fh) if row) - 1)
        elif cfg.format is DataFormat.PARQUET:
            import pyarrow.parquet as pq  # lazily: only parquet sites need pyarrow

            n = int(pq.ParquetFile(cfg.path).metadata.num_rows)
        else:
            with np.load(cfg.path, allow_pickle=False) as npz:
                n = int(npz["y"].shape[0]) if "y" in npz.files else 0
    except (OSError, ValueError) as exc:
        raise InternalError(
            f"dataset {cfg.name!r}: cannot read {cfg.path}: {exc}",
            reason=Reason.UNAVAILABLE,
            public=f"dataset {cfg.name!r}: its file cannot be read",
        ) from exc
    return n


def load_arrays(cfg: DatasetConfig, *, stats: Statistics | None = None) -> LoadedData:
    """Read the dataset file, check its columns and values, and split off the hold-out set.

    Features are standardized with ``stats`` (the job's) when given, else with the site's
    own training statistics when the dataset declares ``standardize`` (``agent.data.standardize``).

    Raises:
        PolicyRefusal: ``SCHEMA_MISMATCH``: a declared column is missing, or a value is not a
            number (naming the row) or not a whole class index.
        InternalError: ``UNAVAILABLE``: the file is missing or unreadable.
    """
    if not cfg.path.is_file():
        raise InternalError(
            f"dataset {cfg.name!r}: file {cfg.path} does not exist",
            reason=Reason.UNAVAILABLE,
            public=f"dataset {cfg.name!r}: its file does not exist",
        )
    try:
        if cfg.format is DataFormat.CSV:
            x, y_raw = _read_csv(cfg)
        elif cfg.format is DataFormat.PARQUET:
            x, y_raw = _read_parquet(cfg)
        else:
            x, y_raw = _read_npz(cfg)
    except OSError as exc:
        raise InternalError(
            f"dataset {cfg.name!r}: cannot read {cfg.path}: {exc}",
            reason=Reason.UNAVAILABLE,
            public=f"dataset {cfg.name!r}: its file cannot be read",
        ) from exc
    y = _labels(cfg, y_raw)
    bad = np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))
    if bad.size:
        raise _mismatch(cfg, f"record {int(bad[0]) + 1}: a feature is NaN or infinity")
    x = x.astype(cfg.feature_type, copy=False)
    if cfg.input_shape:
        per_record = math.prod(cfg.input_shape)
        if math.prod(x.shape[1:]) != per_record:
            raise _mismatch(
                cfg,
                f"records have {math.prod(x.shape[1:])} values, "
                f"input_shape {list(cfg.input_shape)} needs {per_record}",
            )
        x = x.reshape((x.shape[0], *cfg.input_shape))
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    n = x32.shape[0]
    n_hold = round(n * cfg.holdout_fraction)
    seed = int.from_bytes(hashlib.sha256(cfg.name.encode()).digest()[:8], "big")
    perm = np.random.default_rng(seed).permutation(n)
    hold = np.sort(perm[:n_hold])
    train = np.sort(perm[n_hold:])
    if stats is None and cfg.standardize:
        stats = site_statistics(x32[train])
    if stats is not None:
        try:
            x32 = np.ascontiguousarray(standardize(x32, stats), dtype=np.float32)
        except ValueError as exc:
            raise _mismatch(cfg, str(exc)) from None
    return LoadedData(x32[train], y[train], x32[hold], y[hold])


def _mismatch(cfg: DatasetConfig, detail: str) -> PolicyRefusal:
    """A schema refusal; ``detail`` names columns, counts and row numbers, never a value, so
    it is public and may be logged."""
    return PolicyRefusal(
        f"dataset {cfg.name!r}: {detail}", reason=Reason.SCHEMA_MISMATCH, public=True
    )


def _labels(cfg: DatasetConfig, raw: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    if raw.dtype.kind not in "iuf":
        raise _mismatch(cfg, f"label column {cfg.label!r} is not numeric")
    as_float = raw.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0))
    if bad.size:
        # The value is never quoted: this message goes to the site's logs (journald, which
        # may be shipped elsewhere), and a record's values stay in the dataset's file.
        raise _mismatch(cfg, f"record {int(bad[0]) + 1}: the label is not a class index 0, 1, ...")
    return as_float.astype(np.int64)


def _read_csv(cfg: DatasetConfig) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    with cfg.path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise _mismatch(cfg, "the CSV file is empty (no header row)") from None
        index = {name.strip(): i for i, name in enumerate(header)}
        for col in (*cfg.features, cfg.label):
            if col not in index:
                raise _mismatch(cfg, f"column {col!r} is missing from the file")
        cols = [index[c] for c in cfg.features] + [index[cfg.label]]
        width = len(header)
        rows: list[list[str]] = []
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise _mismatch(cfg, f"row {reader.line_num} has {len(row)} fields, not {width}")
            rows.append([row[i] for i in cols])
    if not rows:
        raise _mismatch(cfg, "the CSV file has no records")
    text = np.array(rows, dtype=str)
    try:
        values = text.astype(np.float64)
    except ValueError:
        for r, row in enumerate(rows):
            for c, v in zip((*cfg.features, cfg.label), row, strict=True):
                try:
                    float(v)
                except ValueError:
                    # Row and column, never the value (see _labels).
                    raise _mismatch(cfg, f"row {r + 2} column {c!r} is not a number") from None
        raise
    return values[:, :-1], values[:, -1]


def _read_parquet(cfg: DatasetConfig) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    import pyarrow.parquet as pq  # lazily: only parquet sites need pyarrow

    names = set(pq.read_schema(cfg.path).names)
    for col in (*cfg.features, cfg.label):
        if col not in names:
            raise _mismatch(cfg, f"column {col!r} is missing from the file")
    table = pq.read_table(cfg.path, columns=[*cfg.features, cfg.label])
    arrays: list[npt.NDArray[Any]] = []
    for col in (*cfg.features, cfg.label):
        chunked = table.column(col)
        if chunked.null_count:
            first = next(i for i, v in enumerate(chunked.is_null().to_pylist()) if v)
            raise _mismatch(cfg, f"row {first + 1} column {col!r}: value is null")
        arr = chunked.to_numpy()
        if arr.dtype.kind not in "iufb":
            raise _mismatch(cfg, f"column {col!r} has non-numeric type {chunked.type}")
        arrays.append(arr)
    x = np.stack(arrays[:-1], axis=1).astype(np.float64) if arrays[:-1] else np.empty((0, 0))
    return x, arrays[-1]


def _read_npz(cfg: DatasetConfig) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    with np.load(cfg.path, allow_pickle=False) as npz:
        for key in ("x", "y"):
            if key not in npz.files:
                raise _mismatch(cfg, f"array {key!r} is missing from the npz file")
        x = npz["x"]
        y = npz["y"]
    if x.dtype.kind not in "iuf":
        raise _mismatch(cfg, f"array 'x' has non-numeric dtype {x.dtype}")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise _mismatch(cfg, f"x {x.shape} and y {y.shape} do not hold one label per record")
    if cfg.features != ("x",) and math.prod(x.shape[1:]) != len(cfg.features):
        raise _mismatch(
            cfg, f"x has {math.prod(x.shape[1:])} columns, {len(cfg.features)} features declared"
        )
    return x, y
