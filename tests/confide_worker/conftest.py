"""Shared fixtures for the worker tests: a breast_cancer CSV and matching job specs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from confide.data.datasets import DataFormat, DatasetDescription
from confide.v1 import common_pb2

FEATURES = tuple(f"f{i}" for i in range(30))


def write_breast_cancer_csv(path: Path) -> DatasetDescription:
    """Write scikit-learn's breast_cancer (standardized) as CSV and return its config."""
    data = load_breast_cancer()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*FEATURES, "label"])
        for row, y in zip(x, data.target, strict=True):
            w.writerow([*(f"{v:.6g}" for v in row), int(y)])
    return DatasetDescription("bc", path, DataFormat.CSV, FEATURES, "label")


def make_job(kind: int = common_pb2.MODEL_KIND_MLP, **training: float) -> common_pb2.JobSpec:
    """A job on the breast_cancer schema with the given model kind."""
    job = common_pb2.JobSpec(name="test")
    job.model.kind = kind
    if kind == common_pb2.MODEL_KIND_FIXED_DELTA:
        job.model.fixed_delta_params = 1000
    job.dataset.name = "bc"
    job.dataset.features.extend(FEATURES)
    job.dataset.label = "label"
    job.dataset.num_classes = 2
    job.training.local_epochs = int(training.get("local_epochs", 2))
    job.training.batch_size = int(training.get("batch_size", 32))
    job.training.learning_rate = float(training.get("learning_rate", 0.1))
    job.training.seed = 7
    job.record_privacy.max_grad_norm = 1.0
    return job


@pytest.fixture(scope="session")
def bc_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetDescription:
    """The breast_cancer CSV, written once per session."""
    return write_breast_cancer_csv(tmp_path_factory.mktemp("bc") / "bc.csv")


def add(weights, delta):
    """weights + delta, name by name."""
    return [(n, (a + d).astype(np.float32)) for (n, a), (_, d) in zip(weights, delta, strict=True)]
