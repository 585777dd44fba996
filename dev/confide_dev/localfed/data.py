"""Non-IID partitions of scikit-learn's bundled breast_cancer data (no download)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["DatasetFiles", "breast_cancer_arrays", "label_skew_split", "partition_breast_cancer"]


@dataclass(frozen=True)
class DatasetFiles:
    """One CSV per site plus the schema every site declares for it."""

    name: str
    paths: list[Path]
    features: list[str]
    label: str
    num_classes: int
    sizes: list[int]


def breast_cancer_arrays() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[str]]:
    """The data set, standardized, with column names safe for CSV headers.

    Standardizing with the pooled statistics is the demo's stand-in for the preprocessing
    each site would agree on; it is not something Confide does to site data.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    names = [n.replace(" ", "_") for n in bunch.feature_names]
    return x.astype(np.float32), np.asarray(bunch.target, dtype=np.int64), names


def label_skew_split(
    y: npt.NDArray[np.int64], *, parts: int, alpha: float, rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """Split indices so each part gets a Dirichlet(alpha)-skewed share of every class.

    Smaller ``alpha`` means more skew (non-IID). Every part gets at least one sample of each
    class, so every site can train and evaluate.
    """
    out: list[list[int]] = [[] for _ in range(parts)]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        share = rng.dirichlet([alpha] * parts)
        counts = np.maximum(1, np.floor(share * len(idx)).astype(int))
        counts[-1] = max(1, len(idx) - counts[:-1].sum())
        start = 0
        for p in range(parts):
            out[p].extend(idx[start : start + counts[p]].tolist())
            start += counts[p]
    return [np.array(sorted(o), dtype=np.int64) for o in out]


def partition_breast_cancer(
    directory: Path, *, sites: int, alpha: float = 1.0, seed: int = 0
) -> DatasetFiles:
    """Write one non-IID CSV partition of breast_cancer per site into ``directory``."""
    x, y, names = breast_cancer_arrays()
    parts = label_skew_split(y, parts=sites, alpha=alpha, rng=np.random.default_rng(seed))
    directory.mkdir(parents=True, exist_ok=True)
    paths, sizes = [], []
    for i, idx in enumerate(parts):
        path = directory / f"breast_cancer_site{i + 1}.csv"
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*names, "target"])
            for row, label in zip(x[idx], y[idx], strict=True):
                w.writerow([f"{v:.6g}" for v in row] + [int(label)])
        paths.append(path)
        sizes.append(len(idx))
    return DatasetFiles("breast_cancer", paths, names, "target", 2, sizes)
