"""Per-feature standardization: the site's own statistics, the job's, and a model that learns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from confide.config import parse_toml
from confide.data.datasets import DataFormat, DatasetDescription, load_arrays
from confide.data.standardize import apply, job_statistics, site_statistics
from confide.errors import ConfigError
from confide.jobspec import job_from_toml


def _csv(tmp_path, x: np.ndarray, y: np.ndarray, **kw) -> DatasetDescription:
    path = tmp_path / "d.csv"
    rows = "".join(
        ",".join(f"{v:.9g}" for v in (*r, int(lab))) + "\n" for r, lab in zip(x, y, strict=True)
    )
    path.write_text("a,b,y\n" + rows)
    return DatasetDescription("d", path, DataFormat.CSV, ("a", "b"), "y", **kw)


def test_site_statistics_come_from_the_training_records_only(tmp_path):
    """Training columns end with mean 0 and std 1; hold-out records use the training figures."""
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(50, 10, 200), np.full(200, 7.0)])
    cfg = _csv(tmp_path, x, rng.integers(0, 2, 200), standardize=True, holdout_fraction=0.25)
    raw = load_arrays(_csv(tmp_path, x, np.zeros(200), holdout_fraction=0.25))
    data = load_arrays(cfg)
    np.testing.assert_allclose(data.x_train[:, 0].mean(), 0, atol=1e-5)
    np.testing.assert_allclose(data.x_train[:, 0].std(), 1, atol=1e-5)
    np.testing.assert_array_equal(data.x_train[:, 1], 0)  # constant: centred, not divided by 0
    mean, scale = site_statistics(raw.x_train)
    np.testing.assert_allclose(data.x_holdout, (raw.x_holdout - mean) / scale, rtol=1e-5)


def test_the_jobs_statistics_replace_the_sites(tmp_path):
    """Given mean and scale from the job, every site applies exactly those."""
    x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 50.0], [7.0, 70.0]])
    cfg = _csv(tmp_path, x, np.array([0, 1, 0, 1]), standardize=True, holdout_fraction=0.0)
    data = load_arrays(cfg, stats=job_statistics([1.0, 10.0], [2.0, 20.0]))
    np.testing.assert_allclose(data.x_train, [[0, 0], [1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError):
        apply(x, job_statistics([1.0], [2.0]))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("feature_mean = [0.0]\nfeature_scale = [1.0]", "dataset.feature_mean"),
        ("feature_mean = [0.0, 0.0]\nfeature_scale = [1.0, 0.0]", "dataset.feature_scale"),
        ("feature_mean = [0.0, 0.0]", "dataset.feature_scale"),
        ("feature_mean = [0.0, nan]\nfeature_scale = [1.0, 1.0]", "dataset.feature_mean"),
    ],
)
def test_job_statistics_are_checked_before_signing(extra, key):
    """One value per feature, scales above 0, finite: or the error names the key."""
    text = (
        'name = "j"\nrounds = 1\n[model]\nkind = "logreg"\n'
        f'[dataset]\nname = "d"\nfeatures = ["a", "b"]\nlabel = "y"\n{extra}\n'
    )
    with pytest.raises(ConfigError) as err:
        job_from_toml(parse_toml(text))
    assert err.value.key == key


def test_a_built_in_model_learns_badly_scaled_features_once_standardized(tmp_path):
    """A small informative feature beside a huge noisy one: standardized logreg learns it."""
    torch = pytest.importorskip("torch")
    from confide.models import initial_weights
    from confide_worker.training.job import TorchJob

    rng = np.random.default_rng(1)
    signal_ = rng.normal(0, 0.001, 600)
    x = np.column_stack([signal_, rng.normal(5000, 1000, 600)])
    y = (signal_ > 0).astype(int)
    spec = job_from_toml(
        parse_toml(
            'name = "j"\nrounds = 1\n[model]\nkind = "logreg"\n[dataset]\nname = "d"\n'
            'features = ["a", "b"]\nlabel = "y"\n[training]\nlocal_epochs = 5\n'
            "learning_rate = 0.1\n"
        )
    )
    accuracy = {}
    for standardize in (False, True):
        torch.manual_seed(0)
        job = TorchJob(spec, _csv(tmp_path, x, y, standardize=standardize), "cpu")
        w0 = initial_weights(spec.model, spec.dataset, seed=0)
        delta, _, _ = job.train(w0, dp=None, round_no=1)
        w1 = [(n, a + d) for (n, a), (_, d) in zip(w0, delta, strict=True)]
        acc, loss, _ = job.evaluate(w1)
        accuracy[standardize] = acc if math.isfinite(loss) else 0.0
    assert accuracy[True] >= 0.9, accuracy
    assert accuracy[False] <= 0.75, accuracy
