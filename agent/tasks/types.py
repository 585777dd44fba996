"""The task runner's vocabulary: outcomes, handlers, who the site is, the SecAgg+ seam.

Kept apart from ``agent.tasks.runner`` (which re-exports these names) so the runner module holds
only the running of tasks.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

import nacl.signing

from agent.admission.approvals import ApprovalMode
from agent.admission.rules import DEFAULT_MAX_MODEL_BYTES
from agent.admission.signed_job import VerifiedJob
from agent.admission.site_policy import AttemptCaps, DatasetPolicy, SitePolicy
from agent.admission.timewindows import TimeWindow
from agent.link.transport import Transport
from confide.data.datasets import DatasetDescription
from confide.pki import Identity
from confide.v1 import federation_pb2
from confide.wire.blob import NamedArrays

__all__ = ["Handler", "JobEpsilon", "SecureUpdate", "SiteContext", "TaskOutcome"]


class TaskOutcome(enum.Enum):
    """How a task ended, as counted by the session and the local API."""

    OK = "ok"
    FAILED = "failed"
    REFUSED = "refused"


@dataclass(frozen=True)
class SiteContext:
    """Who this site is and what it exposes; everything a handler needs besides the task.

    Args:
        federation: the federation name every envelope is bound to.
        site: this site's identity name (its certificate CN), the envelopes' sender.
        signing_key: the site's Ed25519 identity key.
        ca_pem: the federation CA certificate (verifies job signers).
        crl_pem: the CA's revocation list, or None.
        trusted_signers: operator names trusted to sign jobs; empty = any operator.
        datasets: the datasets this site exposes, by name.
        device: where workers train (auto, cpu, cuda, cuda:N).
        task_timeout_s: the longest one worker call may take before the worker is killed.
        policies: the site's privacy policy per dataset (cap, noise floor).
        attempt_caps: the site's caps on the attempts it pays for per round and per job.
        max_model_bytes: the largest job model the site accepts (``policy.max_model_bytes``).
        allowed_models: built-in model kinds jobs may use; None = every kind.
        allowed_bundles: code bundles jobs may name (``agent.admission.site_policy.SitePolicy``).
        time_windows: when training may run, local time; empty = any time.
        approval: with an approvals store, MANUAL asks the local operator; AUTO does not.
        trust_bundle_dp: count a code bundle's record-level DP-SGD, which runs in the
            job's code (``policy.trust_bundle_dp``, ``agent.privacy.counted``).
        check_dataset: raises the problem of a dataset that is unusable now (the daemon's
            ``agent.local.selfcheck.DatasetBook.require``), so the task is refused with a public
            reason before any worker starts; None: no check.
    """

    federation: str
    site: str
    signing_key: nacl.signing.SigningKey
    ca_pem: bytes
    crl_pem: bytes | None
    trusted_signers: tuple[str, ...]
    datasets: Mapping[str, DatasetDescription]
    device: str = "auto"
    task_timeout_s: float = 3600.0
    policies: Mapping[str, DatasetPolicy] = field(default_factory=dict)
    attempt_caps: AttemptCaps = field(default_factory=AttemptCaps)
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    allowed_models: frozenset[str] | None = None
    allowed_bundles: frozenset[str] = frozenset()
    time_windows: tuple[TimeWindow, ...] = ()
    approval: ApprovalMode = ApprovalMode.MANUAL
    trust_bundle_dp: bool = False
    check_dataset: Callable[[DatasetDescription], None] | None = None

    def with_policy(self, policy: SitePolicy) -> SiteContext:
        """This site under ``policy`` (a snapshot taken once per task)."""
        return replace(
            self,
            trusted_signers=policy.trusted_signers,
            datasets=policy.datasets,
            policies=policy.dataset_policies,
            attempt_caps=policy.attempt_caps,
            max_model_bytes=policy.max_model_bytes,
            allowed_models=policy.allowed_models,
            allowed_bundles=policy.allowed_bundles,
            time_windows=policy.time_windows,
            approval=policy.approval,
            trust_bundle_dp=policy.trust_bundle_dp,
        )

    def with_identity(self, identity: Identity) -> SiteContext:
        """This site signing with ``identity``'s key and trusting its CA and CRL (taken at
        each connection: the aggregator checks the signatures on a connection against the
        certificate that opened it)."""
        return replace(
            self,
            signing_key=identity.signing_key,
            ca_pem=identity.ca_pem,
            crl_pem=identity.crl_pem,
        )

    def with_trust(self, ca_pem: bytes, crl_pem: bytes | None) -> SiteContext:
        """This site verifying job signers and other sites against this CA and CRL."""
        return replace(self, ca_pem=ca_pem, crl_pem=crl_pem)


@dataclass(frozen=True, slots=True)
class JobEpsilon:
    """A job's cumulative ε at this site through the round being sent, as the ledger counts it.

    Sent beside an update (``UpdateHeader``, ``AdvertiseKeys``) in their own typed fields,
    never inside the metrics map, where a hostile job's figure could take its name.

    Args:
        epsilon: record-level ε (both layers, ``confide.dp.budget``) at the job's δ.
        update_epsilon: site-level ε of the update noise alone, at the same δ.
    """

    epsilon: float
    update_epsilon: float


Handler = Callable[[federation_pb2.Task, Transport], None]
"""Runs one task; returns when it is done (and answered), raises ``ConfideError`` if not."""


class SecureUpdate(Protocol):
    """Sends a protected update through SecAgg+ instead of a plain ``Upload`` (stage 0 on).

    Set ``TaskRunner.secure_update`` to one to enable secure-aggregation jobs; until then
    TRAIN tasks of such jobs are refused ``unsafe_request`` before any data is touched.
    """

    def __call__(
        self,
        task: federation_pb2.Task,
        transport: Transport,
        *,
        job: VerifiedJob,
        delta: NamedArrays,
        num_samples: int,
        metrics: dict[str, float],
        spent: JobEpsilon,
    ) -> None:
        """Quantize/mask-to-be ``delta`` and send ``AdvertiseKeys`` for ``task``'s round, with
        its hold-out ``metrics`` and the job's ``spent`` ε."""
        ...
