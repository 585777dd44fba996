"""Per-feature standardization of a dataset: x' = (x - mean) / scale, column by column.

Plain SGD on raw features of very different scales (age in years next to cholesterol in
mg/dL) barely moves the small ones, and a newcomer's first job on raw features reached
chance accuracy. Two ways to standardize, decided outside the job code:

- the site's dataset declares ``standardize = true``: mean and scale (the population
  standard deviation) are computed at the site, on its own training records only, so the
  hold-out records are transformed as unseen data would be. Nothing about them leaves the
  site. They are a function of the training records that the DP accounting does not cover
  (a record moves them slightly); where that matters, use the job's statistics instead.
- the job gives ``dataset.feature_mean`` and ``dataset.feature_scale``: every site uses the
  same values (from public knowledge or an agreed protocol), which also keeps the features
  on one scale across non-IID sites. They replace the site's own statistics.

A constant column (standard deviation 0) is only centred (scale 1), never divided by 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["Statistics", "apply", "job_statistics", "site_statistics"]

Statistics = tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
"""(mean, scale), one value per flattened feature column."""


def site_statistics(x_train: npt.NDArray[np.floating]) -> Statistics:
    """Each column's mean and standard deviation over the training records (scale 1 if 0)."""
    flat = x_train.reshape(x_train.shape[0], -1).astype(np.float64)
    mean = flat.mean(axis=0) if flat.shape[0] else np.zeros(flat.shape[1])
    scale = flat.std(axis=0) if flat.shape[0] else np.ones(flat.shape[1])
    scale = np.where(scale > 0, scale, 1.0)
    return mean, scale


def job_statistics(mean: Sequence[float], scale: Sequence[float]) -> Statistics:
    """The job's statistics as arrays (validated by ``confide.jobspec``)."""
    return np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)


def apply(x: npt.NDArray[np.floating], stats: Statistics) -> npt.NDArray[np.float64]:
    """``(x - mean) / scale`` per flattened column, in x's shape.

    Raises:
        ValueError: the statistics do not have one value per column.
    """
    mean, scale = stats
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    if mean.shape != (flat.shape[1],) or scale.shape != (flat.shape[1],):
        raise ValueError(
            f"standardization has {mean.size} means and {scale.size} scales "
            f"for {flat.shape[1]} feature columns"
        )
    return ((flat - mean) / scale).reshape(x.shape)
