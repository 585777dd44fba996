"""Shared agent test fixtures: a throwaway federation CA with a site and two operators."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent.admission.rules import DEFAULT_MAX_MODEL_BYTES
from agent.admission.site_policy import DatasetPolicy
from agent.privacy.plan import PrivacyPlan
from agent.tasks.runner import SiteContext, TaskRunner
from confide.data.datasets import DataFormat, DatasetDescription
from confide.lineage import chain_of
from confide.models import initial_weights
from confide.pki import Identity, Role, init_ca, issue, load_identity
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, encode_tensors, open_envelope, seal
from tests.agent.fakes import FakeAggregator, FakeWorkerFactory

FEDERATION = "testfed"
DATASET = "tabular"


@dataclass
class Pki:
    dir: Path
    site: Identity
    alice: Identity  # trusted operator
    mallory: Identity  # an operator the site does not trust
    other_site: Identity  # a site, not an operator
    third_site: Identity  # another site (a SecAgg+ round needs three)


def _load(d: Path, name: str) -> Identity:
    return load_identity(
        cert=d / f"{name}.crt",
        key=d / f"{name}.key",
        signing_key=d / f"{name}.sign.key",
        ca=d / "ca.crt",
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d, federation=FEDERATION)
    issue(d, "site-1", role=Role.SITE)
    issue(d, "site-2", role=Role.SITE)
    issue(d, "site-3", role=Role.SITE)
    issue(d, "alice", role=Role.OPERATOR)
    issue(d, "mallory", role=Role.OPERATOR)
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"], ips=["127.0.0.1"])
    return Pki(
        d,
        _load(d, "site-1"),
        _load(d, "alice"),
        _load(d, "mallory"),
        _load(d, "site-2"),
        _load(d, "site-3"),
    )


def job_spec(dataset: str = DATASET) -> common_pb2.JobSpec:
    """A 3-round logistic regression job that asks for exact hold-out figures (4 at most)."""
    return common_pb2.JobSpec(
        name="test-job",
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LOGREG),
        dataset=common_pb2.DatasetSpec(name=dataset, features=["a", "b"], label="y", num_classes=2),
        rounds=3,
        min_sites=1,
        round_timeout_s=60.0,
        training=common_pb2.TrainingSpec(
            local_epochs=1, batch_size=32, learning_rate=0.1, server_learning_rate=1.0
        ),
        evaluation=common_pb2.EvaluationSpec(
            max_evaluations=4, noise_multiplier=0.0, loss_clip=5.0
        ),
    )


def sha_of(weights: list[tuple[str, np.ndarray]]) -> str:
    """The hex SHA-256 a model blob is named by (its ``model_version``)."""
    return encode_tensors(weights)[0].sha256.hex()


def model_weights() -> list[tuple[str, np.ndarray]]:
    """Version 0 of ``job_spec()``: the initial model its seed defines."""
    spec = job_spec()
    return list(initial_weights(spec.model, spec.dataset, seed=0))


def final_weights() -> list[tuple[str, np.ndarray]]:
    """Another model of the same shapes (the job's final version in EVALUATE tests)."""
    return [(n, a + np.float32(1.0)) for n, a in model_weights()]


MODEL_SHA = sha_of(model_weights())
FINAL_SHA = sha_of(final_weights())
NO_PARENT = bytes(32)
"""A parent chain value no site holds (a version whose parent the site never saw)."""


def signed_task(
    signer: Identity,
    *,
    kind: int = federation_pb2.TASK_KIND_TRAIN,
    spec: common_pb2.JobSpec | None = None,
    task_id: str = "t1",
    job_id: str = "job-1",
    round: int = 1,
    attempt: int = 1,
    model_version: str = MODEL_SHA,
    version: int | None = None,
    parent_chain: bytes | None = None,
) -> federation_pb2.Task:
    """A task of ``job_id`` signed by ``signer``; its model is version ``round - 1`` by default.

    The parent chain value defaults to an honest history in which every earlier version was
    ``MODEL_SHA``; one signed envelope per (signer, spec), as an aggregator sends one job's.
    """
    payload = (spec or job_spec()).SerializeToString()
    key = (signer.info.name, payload)
    if key not in _SIGNED:
        _SIGNED[key] = seal(
            signing_key=signer.signing_key,
            federation=FEDERATION,
            sender=signer.info.name,
            stage=common_pb2.STAGE_JOB,
            payload=payload,
            now=time.time(),
        )
    env = _SIGNED[key]
    version = max(round - 1, 0) if version is None else version
    if parent_chain is None:
        parent_chain = (
            chain_of(job_id=job_id, signed_job=env, shas=[MODEL_SHA] * version)[-1]
            if version > 0
            else b""
        )
    return federation_pb2.Task(
        task_id=task_id,
        job_id=job_id,
        round=round,
        attempt=attempt,
        kind=kind,
        signed_job=env,
        signer_certificate=signer.cert_pem,
        model_version=model_version,
        deadline_s=60,
        lineage=federation_pb2.ModelLineage(version=version, parent_chain=parent_chain),
    )


_SIGNED: dict[tuple[str, bytes], common_pb2.Envelope] = {}


def final_task(
    signer: Identity, *, task_id: str = "t-eval", rounds: int = 3
) -> federation_pb2.Task:
    """The EVALUATE of job-1's final version (``FINAL_SHA``), in the honest history of
    ``signed_task`` (so the child of the model the site trains on in round ``rounds``)."""
    return signed_task(
        signer,
        kind=federation_pb2.TASK_KIND_EVALUATE,
        task_id=task_id,
        round=rounds,
        model_version=FINAL_SHA,
        version=rounds,
    )


@pytest.fixture
def dataset(tmp_path: Path) -> DatasetDescription:
    """A real 50-record CSV: the daemon counts a dataset's records itself (q and FedAvg)."""
    path = tmp_path / "data.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(50)))
    return DatasetDescription(
        name=DATASET,
        path=path,
        format=DataFormat.CSV,
        features=("a", "b"),
        label="y",
    )


@pytest.fixture
def workers() -> FakeWorkerFactory:
    return FakeWorkerFactory()


@pytest.fixture
def aggregator() -> FakeAggregator:
    agg = FakeAggregator()
    agg.models[("job-1", MODEL_SHA)] = model_weights()
    agg.models[("job-1", FINAL_SHA)] = final_weights()
    return agg


def make_runner(
    pki: Pki,
    dataset: DatasetDescription,
    workers: FakeWorkerFactory,
    *,
    privacy: PrivacyPlan | None = None,
    policy: DatasetPolicy | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
    rng: Callable[[], float] = random.random,
) -> TaskRunner:
    """A TaskRunner for site-1 exposing ``dataset``, with fake workers.

    Without a ``policy`` the dataset's is the default one but for exact hold-out figures,
    which it allows (the fake worker's figures are then released as they are).
    """
    if policy is None:
        policy = DatasetPolicy(exact_evaluation=True)
    site = SiteContext(
        federation=FEDERATION,
        site=pki.site.info.name,
        signing_key=pki.site.signing_key,
        ca_pem=pki.site.ca_pem,
        crl_pem=None,
        trusted_signers=("alice",),
        datasets={DATASET: dataset},
        device="cpu",
        policies={DATASET: policy},
        max_model_bytes=max_model_bytes,
    )
    return TaskRunner(site, start_worker=workers, privacy=privacy, rng=rng)


def report_of(pki: Pki, env: common_pb2.Envelope) -> federation_pb2.TaskReport:
    """Verify a site-1 TASK_REPORT envelope and decode its report."""
    payload = open_envelope(
        env,
        verify_key=pki.site.info.signing_public_key,
        now=time.time(),
        expect=Binding(FEDERATION, "site-1", common_pb2.STAGE_TASK_REPORT),
    )
    return federation_pb2.TaskReport.FromString(payload)


@pytest.fixture
def runner(pki: Pki, dataset: DatasetDescription, workers: FakeWorkerFactory) -> TaskRunner:
    return make_runner(pki, dataset, workers)
