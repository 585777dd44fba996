"""Site datasets: config keys, schema checks, CSV/Parquet/NPZ loading and the hold-out split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.data.declared import check_schema, dataset_from_config
from confide.config import parse_toml
from confide.data.datasets import DataFormat, DatasetDescription, load_arrays
from confide.errors import ConfigError, InternalError, PolicyRefusal, Reason
from confide.v1 import common_pb2


def _csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def _cfg(path: Path, fmt: DataFormat, **kw) -> DatasetDescription:
    base = {"features": ("a", "b"), "label": "y", "holdout_fraction": 0.25}
    base.update(kw)
    return DatasetDescription(name="d", path=path, format=fmt, **base)


def test_config_reads_keys_and_guesses_format(tmp_path):
    """A [datasets.NAME] table becomes a DatasetDescription, format from the extension."""
    root = parse_toml(
        '[datasets.bc]\npath = "bc.parquet"\nfeatures = ["a", "b"]\nlabel = "y"\n'
        "input_shape = [2, 1]\nholdout_fraction = 0.1\n",
        source=str(tmp_path / "agent.toml"),
    )
    cfg = dataset_from_config("bc", root.section("datasets").section("bc"))
    assert cfg.format is DataFormat.PARQUET and cfg.path == tmp_path / "bc.parquet"
    assert cfg.features == ("a", "b") and cfg.input_shape == (2, 1)
    assert DatasetDescription.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('features = ["a"]\nlabel = "y"', "datasets.bc.path"),
        ('path = "x.txt"\nfeatures = ["a"]\nlabel = "y"', "datasets.bc.format"),
        ('path = "x.csv"\nfeatures = []\nlabel = "y"', "datasets.bc.features"),
        (
            'path = "x.csv"\nfeatures = ["a"]\nlabel = "y"\nholdout_fraction = 1.0',
            "datasets.bc.holdout_fraction",
        ),
        (
            'path = "x.csv"\nfeatures = ["a"]\nlabel = "y"\ninput_shape = [0]',
            "datasets.bc.input_shape",
        ),
        (
            'path = "x.csv"\nfeatures = ["a"]\nlabel = "y"\nlabel_type = "str"',
            "datasets.bc.label_type",
        ),
        ('path = "x.csv"\nfeatures = ["a"]\nlabel = "y"\nfeatrues = 1', "datasets.bc.featrues"),
    ],
)
def test_config_errors_name_the_key(body, key):
    """Every config mistake is a ConfigError naming its dotted key."""
    root = parse_toml(f"[datasets.bc]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        dataset_from_config("bc", root.section("datasets").section("bc"))
    assert info.value.key == key


def test_check_schema_refuses_other_features_or_label(tmp_path):
    """A job expecting other features, order or label is refused with schema_mismatch."""
    cfg = _cfg(tmp_path / "d.csv", DataFormat.CSV)
    check_schema(cfg, common_pb2.DatasetSpec(name="d", features=["a", "b"], label="y"))
    for spec in (
        common_pb2.DatasetSpec(name="d", features=["a", "c"], label="y"),
        common_pb2.DatasetSpec(name="d", features=["b", "a"], label="y"),
        common_pb2.DatasetSpec(name="d", features=["a", "b"], label="z"),
    ):
        with pytest.raises(PolicyRefusal) as info:
            check_schema(cfg, spec)
        assert info.value.reason is Reason.SCHEMA_MISMATCH


def test_csv_loads_and_splits_deterministically(tmp_path):
    """CSV columns are picked by name and the hold-out split is the same on every load."""
    rows = ["b,y,a"] + [f"{i * 2},{i % 2},{i}" for i in range(20)]
    cfg = _cfg(_csv(tmp_path / "d.csv", rows), DataFormat.CSV)
    one, two = load_arrays(cfg), load_arrays(cfg)
    assert one.x_train.shape == (15, 2) and one.x_holdout.shape == (5, 2)
    assert one.x_train.dtype == np.float32 and one.y_train.dtype == np.int64
    np.testing.assert_array_equal(one.x_holdout, two.x_holdout)
    np.testing.assert_array_equal(one.x_train[:, 0] * 2, one.x_train[:, 1])
    np.testing.assert_array_equal(one.y_train, one.x_train[:, 0].astype(np.int64) % 2)


def test_csv_missing_column_and_bad_value_are_schema_mismatches(tmp_path):
    """A missing column names the column; a non-numeric value names its row."""
    missing = _cfg(_csv(tmp_path / "m.csv", ["a,y", "1,0"]), DataFormat.CSV)
    with pytest.raises(PolicyRefusal, match="'b'") as info:
        load_arrays(missing)
    assert info.value.reason is Reason.SCHEMA_MISMATCH
    bad = _cfg(_csv(tmp_path / "b.csv", ["a,b,y", "1,2,0", "1,oops,1"]), DataFormat.CSV)
    with pytest.raises(PolicyRefusal, match="row 3") as info:
        load_arrays(bad)
    assert info.value.reason is Reason.SCHEMA_MISMATCH


def test_missing_file_is_unavailable(tmp_path):
    """A dataset whose file is gone is an InternalError with reason unavailable."""
    with pytest.raises(InternalError) as info:
        load_arrays(_cfg(tmp_path / "none.csv", DataFormat.CSV))
    assert info.value.reason is Reason.UNAVAILABLE


def test_parquet_loads_and_checks_columns(tmp_path):
    """Parquet columns are read by name; a missing or string column is a schema mismatch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"a": np.arange(8.0), "b": np.ones(8), "y": np.arange(8) % 2}), path)
    data = load_arrays(_cfg(path, DataFormat.PARQUET))
    assert data.x_train.shape == (6, 2) and data.x_holdout.shape == (2, 2)
    pq.write_table(pa.table({"a": ["x"] * 4, "b": np.ones(4), "y": np.zeros(4)}), path)
    with pytest.raises(PolicyRefusal) as info:
        load_arrays(_cfg(path, DataFormat.PARQUET))
    assert info.value.reason is Reason.SCHEMA_MISMATCH
    with pytest.raises(PolicyRefusal, match="'c'"):
        load_arrays(_cfg(path, DataFormat.PARQUET, features=("a", "c")))


def test_npz_images_reshape_to_input_shape(tmp_path):
    """NPZ x/y load; features ["x"] takes the whole array, reshaped to input_shape."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((10, 64)), y=np.arange(10) % 3)
    data = load_arrays(_cfg(path, DataFormat.NPZ, features=("x",), input_shape=(1, 8, 8)))
    assert data.x_train.shape == (8, 1, 8, 8) and data.x_holdout.shape == (2, 1, 8, 8)
    with pytest.raises(PolicyRefusal) as info:
        load_arrays(_cfg(path, DataFormat.NPZ, features=("a", "b")))
    assert info.value.reason is Reason.SCHEMA_MISMATCH
    np.savez(path, x=np.zeros((4, 2)))
    with pytest.raises(PolicyRefusal, match="'y'"):
        load_arrays(_cfg(path, DataFormat.NPZ))


def test_labels_must_be_class_indices(tmp_path):
    """A fractional or negative label is refused, naming the record."""
    cfg = _cfg(_csv(tmp_path / "d.csv", ["a,b,y", "1,2,0", "1,2,0.5"]), DataFormat.CSV)
    with pytest.raises(PolicyRefusal, match="record 2"):
        load_arrays(cfg)
