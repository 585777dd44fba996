"""Fixtures for end-to-end tests: real processes, real gRPC, real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.localfed import DatasetFiles, LocalFederation, SiteSetup, partition_breast_cancer


def site_setup(
    name: str, data: DatasetFiles, index: int, *, max_epsilon: float = math.inf
) -> SiteSetup:
    """A site exposing its breast_cancer partition under the job's schema.

    ``max_epsilon`` defaults to ``inf``: the site explicitly accepts non-private jobs, which
    most of these tests run (a finite cap refuses any job whose ε is unbounded).
    """
    return SiteSetup(
        name=name,
        datasets={
            data.name: {
                "path": str(data.paths[index]),
                "features": data.features,
                "label": data.label,
                "holdout_fraction": 0.25,
            }
        },
        policy={
            "trusted_signers": ["operator"],
            "datasets": {data.name: {"max_epsilon": max_epsilon}},
        },
    )


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[LocalFederation]:
    """A federation root with a CA; the test starts the processes it needs."""
    fed = LocalFederation(tmp_path, federation="e2e", log_level="info")
    try:
        yield fed
    finally:
        fed.stop()


@pytest.fixture
def bc3(tmp_path: Path) -> DatasetFiles:
    """breast_cancer split non-IID over three sites."""
    return partition_breast_cancer(tmp_path / "data", sites=3, seed=1)
