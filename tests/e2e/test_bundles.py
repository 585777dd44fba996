"""The example code bundles trained across three real agents, each worker in its sandbox."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from confide.cli.init_weights import write_initial_weights
from confide.cli.main import main
from confide.jobfile import load_job
from confide.v1 import admin_pb2

from .conftest import site_setup

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bundles"
SITES = ["site-1", "site-2", "site-3"]


def _digits(directory: Path, *, sites: int, per_site: int) -> list[Path]:
    """One npz of digits per site: x as stored (0..16, records x 1 x 8 x 8), y the digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.data.reshape(-1, 1, 8, 8).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(sites):
        idx = order[i * per_site : (i + 1) * per_site]
        path = directory / f"digits_site{i + 1}.npz"
        np.savez(path, x=x[idx], y=y[idx])
        paths.append(path)
    return paths


def _job(tmp_path: Path, name: str, *, rounds: int, epochs: int) -> Path:
    """A copy of an example bundle and its job file (fewer rounds, more epochs), weights made."""
    shutil.copytree(EXAMPLES / name, tmp_path / name)
    text = (EXAMPLES / f"{name}.toml").read_text().replace("rounds = 5", f"rounds = {rounds}")
    text = re.sub(r"local_epochs = \d+", f"local_epochs = {epochs}", text)
    # The sites allow exact hold-out figures (public data), so the test can read accuracy.
    text += "\n[evaluation]\nnoise_multiplier = 0.0\n"
    (tmp_path / f"{name}.toml").write_text(text)
    write_initial_weights(tmp_path / f"{name}.toml")
    return tmp_path / f"{name}.toml"


def test_both_example_bundles_train_across_three_agents(federation, bc3, tmp_path, capsys):
    """A CNN with a transform and a DP-SGD net with its own loss: both jobs finish, every
    round sums three updates, the sites that trust bundle DP-SGD report a finite ε, and each
    site keeps the archive it checked, no unpacked copy."""
    digits = _digits(tmp_path / "digits", sites=3, per_site=200)
    federation.make_pki(SITES)
    federation.start_aggregator()
    for i, name in enumerate(SITES):
        site = site_setup(name, bc3, i)
        site.datasets["digits"] = {
            "path": str(digits[i]),
            "features": ["x"],
            "label": "y",
            "input_shape": [1, 8, 8],
            "holdout_fraction": 0.25,
        }
        site.policy["datasets"]["digits"] = {"max_epsilon": math.inf, "exact_evaluation": True}
        site.policy["allowed_bundles"] = ["trusted-signers"]
        # These sites reviewed the example bundles, so they count tabular_net's DP-SGD (by
        # default a bundle's DP-SGD runs in its own code and is not counted: ε would be ∞).
        site.policy["trust_bundle_dp"] = True
        federation.start_agent(site)
    federation.wait_for_sites(3)

    jobs = {}
    for name in ("digits_cnn", "tabular_net"):
        job_file = _job(tmp_path, name, rounds=2, epochs=4)
        capsys.readouterr()
        argv = ["--config", str(federation.operator_config), "job", "submit", str(job_file)]
        assert main(argv) == 0  # uploads the archive and the weights, then signs the job
        jobs[name] = (load_job(job_file), capsys.readouterr().out.strip())

    for name, (_, job_id) in jobs.items():
        status = federation.wait_job(job_id, timeout=600)
        assert status.state == admin_pb2.JOB_STATE_DONE, (name, status.error)
        done = [r for r in status.rounds if r.state == "done"]
        assert len(done) == 2 and all(r.aggregated == 3 for r in done), name
        assert status.final_eval_samples > 0
        if name == "digits_cnn":
            assert status.final_accuracy > 0.3  # ten classes: chance is 0.1
        else:
            # DP-SGD charged, and counted: the job has no update noise, so only the trusted
            # DP-SGD makes the ε finite.
            assert all(0 < eps < math.inf for eps in status.epsilon_by_site.values())
            assert len(status.epsilon_by_site) == 3
    for name in SITES:
        root = federation.site_dirs[name] / "state" / "bundles"
        kept = {p.name for p in root.glob("*.tar")}
        for job, _ in jobs.values():
            assert f"{job.spec.model.code_sha256.hex()}.tar" in kept
        federation.wait_for(
            lambda root=root: not any((root / "run").iterdir()),
            timeout=60,
            what=f"{name}'s unpacked copies to go with its workers",
        )
    codes = federation.stop()
    assert set(codes.values()) == {0}
