"""Fixtures for end-to-end tests: real processes, real gRPC, real mutual TLS on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.localfed import DatasetFiles, LocalFederation, SiteSetup, partition_breast_cancer


def site_setup(name: str, data: DatasetFiles, index: int, **policy: object) -> SiteSetup:
    """A site exposing its breast_cancer partition under the job's schema."""
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
        policy={"trusted_signers": ["operator"], **policy},
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
