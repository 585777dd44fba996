"""Fixtures for end-to-end tests: real processes, real gRPC, real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide.v1 import federation_pb2
from confide.wire.blob import BlobAssembler, NamedArrays
from confide_dev.localfed import (
    DatasetFiles,
    LocalFederation,
    SiteSetup,
    partition_breast_cancer,
    partition_site,
)


def site_setup(
    name: str, data: DatasetFiles, index: int, *, max_epsilon: float = math.inf
) -> SiteSetup:
    """A site exposing its breast_cancer partition under the job's schema.

    ``max_epsilon`` defaults to ``inf``: the site explicitly accepts non-private jobs, which
    most of these tests run (a finite cap refuses any job whose ε is unbounded). Like the demo's
    sites (public data), these allow exact hold-out figures.
    """
    return partition_site(data, index, name, max_epsilon=max_epsilon, exact_evaluation=True)


def start_sites(fed: LocalFederation, data: DatasetFiles, n: int) -> list[str]:
    """Make the PKI, start the aggregator and ``n`` agents on ``data``, wait for them."""
    names = [f"site-{i + 1}" for i in range(n)]
    fed.make_pki(names)
    fed.start_aggregator()
    for i, name in enumerate(names):
        fed.start_agent(site_setup(name, data, i))
    fed.wait_for_sites(n)
    return names


def download_model(
    fed: LocalFederation, job_id: str, version: str, *, max_bytes: int, timeout: float
) -> NamedArrays:
    """A model version of a job, streamed from the aggregator's Admin API and reassembled."""
    parts = fed.admin().DownloadModel(
        federation_pb2.DownloadRequest(job_id=job_id, model_version=version), timeout=timeout
    )
    asm = BlobAssembler(next(parts).header, max_bytes=max_bytes)
    for p in parts:
        asm.add(p.chunk)
    return asm.finish()


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
