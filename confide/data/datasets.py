"""Site datasets: how one is described, counted, read into NumPy arrays and split.

The one reader both processes use: the daemon counts records with it (the DP sampling rate
q = batch / n_train must not come from the worker's word) and checks each exposed dataset at
start; the worker (``confide_worker``) reads the file with it to train. Both must agree on
the hold-out split bit for bit, so both import this module and nothing else reads a dataset
file. The daemon builds a ``DatasetDescription`` from its config (``agent.data.declared``)
and hands it to the worker in the ``init`` frame (``DatasetDescription.to_json``).

Formats:
- ``csv``: a header row, then one row per record; ``features`` and ``label`` name columns.
- ``parquet``: ``features`` and ``label`` name columns of numeric type.
- ``npz``: two arrays, ``x`` (records first, any trailing shape) and ``y`` (one label per
  record). ``features`` is either the single name ``["x"]`` (the whole array, e.g. images for
  the CNN, whose model reads ``input_shape``) or one name per flattened column of ``x`` (their
  count must equal ``prod(x.shape[1:])``), so logreg/MLP jobs can name their features.
  ``label`` is a name for the schema check only; the labels are always read from ``y``.

The hold-out split is deterministic: ``split_sizes`` records are held out, chosen by a
permutation seeded by SHA-256 of the dataset name, so the same records are held out in every
round and every job on that dataset.
"""

from __future__ import annotations

import csv
import enum
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from confide.data.standardize import Statistics, site_statistics
from confide.data.standardize import apply as standardize
from confide.errors import ConfigError, InternalError, PolicyRefusal, Reason

__all__ = [
    "FEATURE_TYPES",
    "LABEL_TYPES",
    "DataFormat",
    "DatasetDescription",
    "LoadedData",
    "count_records",
    "count_train_records",
    "format_from_path",
    "load_arrays",
    "split_sizes",
]

FEATURE_TYPES = ("float32", "float64")
"""The feature types a dataset may declare (the model always trains in float32)."""
LABEL_TYPES = ("int64", "int32")
"""The label types a dataset may declare."""


class DataFormat(enum.Enum):
    """File format of a site dataset."""

    CSV = "csv"
    PARQUET = "parquet"
    NPZ = "npz"


@dataclass(frozen=True)
class DatasetDescription:
    """One dataset a site exposes: where its file is and how to read it.

    The daemon builds it from its ``[datasets.NAME]`` table (``agent.data.declared``) and
    sends it to the worker in the ``init`` frame (``to_json``); nothing else of the daemon's
    config reaches the worker.

    Args:
        name: the dataset name jobs ask for (it also seeds the hold-out split).
        path: the file.
        format: file format (the daemon's config defaults it from the extension).
        features: feature column names, in model input order.
        label: label column name (class index per record).
        feature_type: ``float32`` or ``float64`` (the model always trains in float32).
        label_type: ``int64`` or ``int32``.
        holdout_fraction: fraction of records kept for evaluation, in [0, 1).
        input_shape: when not empty, each record's features are reshaped to it (CNN).
        standardize: centre and scale each feature by its mean and standard deviation over
            this site's training records (``confide.data.standardize``).
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

    def to_json(self) -> dict[str, Any]:
        """The JSON form carried in the worker's ``init`` frame."""
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format.value,
            "features": list(self.features),
            "label": self.label,
            "feature_type": self.feature_type,
            "label_type": self.label_type,
            "holdout_fraction": self.holdout_fraction,
            "input_shape": list(self.input_shape),
            "standardize": self.standardize,
        }

    @classmethod
    def from_json(cls, data: Any) -> DatasetDescription:
        """The inverse of ``to_json``.

        Raises:
            ConfigError: a field is missing or of the wrong type (key ``dataset.FIELD``).
        """
        try:
            return cls(
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
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("dataset", f"invalid dataset description: {exc}") from None


@dataclass(frozen=True)
class LoadedData:
    """A dataset split into training and hold-out arrays (features float32, labels int64)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_holdout: npt.NDArray[np.float32]
    y_holdout: npt.NDArray[np.int64]


def format_from_path(path: Path) -> DataFormat | None:
    """The format a file's extension names (``.csv``, ``.parquet``/``.pq``, ``.npz``), or None."""
    suffix = path.suffix.lower().lstrip(".")
    return {
        "csv": DataFormat.CSV,
        "parquet": DataFormat.PARQUET,
        "pq": DataFormat.PARQUET,
        "npz": DataFormat.NPZ,
    }.get(suffix)


def split_sizes(total: int, *, holdout_fraction: float) -> tuple[int, int]:
    """(training, hold-out) record counts of a dataset of ``total`` records.

    The hold-out set is ``round(total * holdout_fraction)`` records (Python's round: half to
    even); ``load_arrays`` holds out exactly that many and the daemon counts with it.
    """
    holdout = round(total * holdout_fraction)
    return total - holdout, holdout


def count_train_records(cfg: DatasetDescription) -> int:
    """How many records the worker trains on, counted by the daemon itself.

    The daemon's privacy accounting depends on the sampling rate q = batch / n_train; it must
    not take n_train from the worker's word. Counting reads no feature values: CSV rows (as
    ``load_arrays`` reads them), Parquet metadata, or the length of the npz ``y`` array.

    Raises:
        InternalError: ``UNAVAILABLE``: the file is missing or unreadable.
    """
    train, _ = split_sizes(count_records(cfg), holdout_fraction=cfg.holdout_fraction)
    return train


def count_records(cfg: DatasetDescription) -> int:
    """Every record in the dataset's file (training and hold-out), reading no feature values.

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


def load_arrays(cfg: DatasetDescription, *, stats: Statistics | None = None) -> LoadedData:
    """Read the dataset file, check its columns and values, and split off the hold-out set.

    Features are standardized with ``stats`` (the job's) when given, else with the site's
    own training statistics when the dataset declares ``standardize``
    (``confide.data.standardize``).

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
    _, n_hold = split_sizes(n, holdout_fraction=cfg.holdout_fraction)
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


def _mismatch(cfg: DatasetDescription, detail: str) -> PolicyRefusal:
    """A schema refusal; ``detail`` names columns, counts and row numbers, never a value, so
    it is public and may be logged."""
    return PolicyRefusal(
        f"dataset {cfg.name!r}: {detail}", reason=Reason.SCHEMA_MISMATCH, public=True
    )


def _labels(cfg: DatasetDescription, raw: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    if raw.dtype.kind not in "iuf":
        raise _mismatch(cfg, f"label column {cfg.label!r} is not numeric")
    as_float = raw.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(as_float) | (as_float != np.round(as_float)) | (as_float < 0))
    if bad.size:
        # The value is never quoted: this message goes to the site's logs (journald, which
        # may be shipped elsewhere), and a record's values stay in the dataset's file.
        raise _mismatch(cfg, f"record {int(bad[0]) + 1}: the label is not a class index 0, 1, ...")
    return as_float.astype(np.int64)


def _read_csv(cfg: DatasetDescription) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
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


def _read_parquet(cfg: DatasetDescription) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
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


def _read_npz(cfg: DatasetDescription) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
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
