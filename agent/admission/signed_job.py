"""Verify who signed a job before the site touches any data for it.

A ``Task`` carries the operator-signed job (``Envelope[JOB, JobSpec]``) and the signer's
certificate. The site believes the job only if that certificate chains to the federation CA
(and is not revoked), names an operator the policy trusts, and its signing key verifies the
envelope; the aggregator cannot forge or alter a job (it holds no operator key).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from agent.admission.rules import check_signer
from confide.errors import ConfigError, MalformedMessage, PolicyRefusal, Reason
from confide.jobspec import normalize, validate_job
from confide.pki import BadCertificate, CertInfo, verify_certificate
from confide.v1 import common_pb2, federation_pb2
from confide.wire import Binding, open_envelope

__all__ = ["JOB_MAX_AGE_S", "VerifiedJob", "check_job", "verify_job"]

JOB_MAX_AGE_S = 30 * 24 * 3600.0
"""How old a signed job may be: jobs run for days, so the envelope skew bound is wide."""


class VerifiedJob:
    """A job whose signature and signer were checked.

    Args:
        spec: the decoded job; validated and normalized (``confide.jobspec.normalize``) once
            ``check_job`` has returned it.
        signer: the verified certificate facts of the operator who signed it.
    """

    __slots__ = ("signer", "spec")

    def __init__(self, spec: common_pb2.JobSpec, signer: CertInfo) -> None:
        self.spec = spec
        self.signer = signer


def verify_job(
    task: federation_pb2.Task,
    *,
    federation: str,
    ca_pem: bytes,
    crl_pem: bytes | None,
    trusted_signers: Collection[str],
    now: float,
) -> VerifiedJob:
    """Check a task's signed job and return it decoded.

    The signer's certificate is verified first, then the envelope's signature over its
    canonical bytes with that certificate's key, and only then is the payload decoded.

    Args:
        task: the task holding ``signed_job`` and ``signer_certificate``.
        federation: this site's federation name.
        ca_pem: the federation CA certificate.
        crl_pem: the CA's revocation list, or None.
        trusted_signers: operator names the policy trusts (empty: any operator).
        now: the current time, unix seconds.

    Raises:
        PolicyRefusal: ``SIGNER_UNTRUSTED`` when the certificate does not verify, is revoked,
            is not an operator's, or names an operator not in ``trusted_signers``.
        BadSignature: the job envelope's signature does not verify.
        ReplayedMessage: the envelope is bound to another federation, signer or stage.
        MalformedMessage: the job is missing or its payload is not a ``JobSpec``.
    """
    if not task.HasField("signed_job") or not task.signer_certificate:
        raise MalformedMessage("task carries no signed job or no signer certificate")
    try:
        signer = verify_certificate(
            task.signer_certificate,
            ca_pem=ca_pem,
            crl_pem=crl_pem,
            now=datetime.fromtimestamp(now, UTC),
        )
    except BadCertificate as exc:
        raise PolicyRefusal(
            f"job signer certificate is not trusted: {exc}",
            reason=Reason.SIGNER_UNTRUSTED,
            public=True,
        ) from exc
    check_signer(signer, trusted_signers=trusted_signers)
    payload = open_envelope(
        task.signed_job,
        verify_key=signer.signing_public_key,
        expect=Binding(federation=federation, sender=signer.name, stage=common_pb2.STAGE_JOB),
        now=now,
        max_skew_s=JOB_MAX_AGE_S,
    )
    spec = common_pb2.JobSpec()
    try:
        spec.ParseFromString(payload)
    except DecodeError as exc:
        raise MalformedMessage("signed job payload is not a JobSpec") from exc
    return VerifiedJob(spec, signer)


def check_job(job: VerifiedJob) -> VerifiedJob:
    """Validate a verified job as the aggregator did at submit (the site does not take that
    on trust) and return it normalized. Separate from ``verify_job`` so that the site's audit
    names the signer and the code of an authentic job it refuses as invalid. The rules are the
    job file's own (``confide.jobspec``); the site's policy comes on top.

    Raises:
        PolicyRefusal: ``INVALID_JOB``, with ``validate_job``'s message naming the key.
    """
    try:
        # The aggregator refused retired keys at submit; a job still carrying one was signed
        # by the previous release and keeps running across the upgrade.
        validate_job(job.spec, signed_before_upgrade=True)
    except ConfigError as exc:
        raise PolicyRefusal(f"invalid job: {exc}", reason=Reason.INVALID_JOB, public=True) from exc
    # Every default resolved once: the site plans, encodes and trains on this copy.
    return VerifiedJob(normalize(job.spec), job.signer)
