"""Datasets as the site declares them to its daemon: the config table, the schema check, the sizes.

What a dataset *is* (its description, reader, split and record count) is shared with the
worker in ``confide.data.datasets``; this module is the daemon's side of it: reading a
``[datasets.NAME]`` table of agent.toml or policy.toml into a ``DatasetDescription``,
refusing a job whose expected schema differs from it, and the record counts declared to the
aggregator at register.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from confide.config import Section
from confide.data.datasets import (
    FEATURE_TYPES,
    LABEL_TYPES,
    DataFormat,
    DatasetDescription,
    count_records,
    format_from_path,
    split_sizes,
)
from confide.errors import ConfigError, InternalError, PolicyRefusal, Reason
from confide.v1 import common_pb2, federation_pb2

__all__ = ["check_schema", "dataset_from_config", "declared_sizes"]


def dataset_from_config(name: str, section: Section) -> DatasetDescription:
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
        guessed = format_from_path(path)
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
    if feature_type not in FEATURE_TYPES:
        raise ConfigError(section.key("feature_type"), f"must be one of {', '.join(FEATURE_TYPES)}")
    label_type: str = section.str("label_type", "int64")
    if label_type not in LABEL_TYPES:
        raise ConfigError(section.key("label_type"), f"must be one of {', '.join(LABEL_TYPES)}")
    holdout: float = section.float("holdout_fraction", 0.2, min=0.0, max=1.0, max_exclusive=True)
    shape_raw: Any = section.value("input_shape", [])
    if not isinstance(shape_raw, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape_raw
    ):
        raise ConfigError(section.key("input_shape"), "must be a list of positive integers")
    standardize: bool = section.bool("standardize", False)
    section.done()
    return DatasetDescription(
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


def check_schema(cfg: DatasetDescription, spec: common_pb2.DatasetSpec) -> None:
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


def declared_sizes(
    descriptions: Iterable[DatasetDescription],
) -> list[federation_pb2.DatasetSize]:
    """Training and hold-out record counts of each readable dataset, declared at register.

    A dataset that cannot be read now is left out (nothing is declared for it) rather than
    keeping the site from connecting; its tasks fail on their own.
    """
    out: list[federation_pb2.DatasetSize] = []
    for cfg in descriptions:
        try:
            total = count_records(cfg)
        except InternalError:
            continue
        train, holdout = split_sizes(total, holdout_fraction=cfg.holdout_fraction)
        out.append(
            federation_pb2.DatasetSize(name=cfg.name, train_records=train, holdout_records=holdout)
        )
    return out
