"""Signed envelopes: every agent-originated message is bound to its context and signed.

The signature is Ed25519 (RFC 8032) by the sender's identity key, the one its federation
certificate binds, over ``canonical_bytes``: a fixed, length-prefixed encoding of
(federation, sender, job, round, stage, issue time, SHA-256 of the payload). Protobuf
serialization is not canonical, so it is never what gets signed. Binding the stage, job and
round means a message replayed into another stage or round fails verification.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from confide.errors import BadSignature, MalformedMessage, ReplayedMessage
from confide.v1 import common_pb2

__all__ = ["MAX_SKEW_S", "Binding", "canonical_bytes", "open_envelope", "seal"]

_DOMAIN = b"confide/v1/envelope"
MAX_SKEW_S = 300.0
"""How far an envelope's issue time may be from the receiver's clock."""


@dataclass(frozen=True)
class Binding:
    """What the receiver expects an envelope to be bound to.

    ``job_id``/``round`` of None mean "any" (for stages outside a round, e.g. heartbeat).
    """

    federation: str
    sender: str
    stage: int
    job_id: str | None = None
    round: int | None = None


def _lp(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def canonical_bytes(env: common_pb2.Envelope) -> bytes:
    """The exact bytes an envelope's signature covers."""
    return b"".join(
        [
            _lp(_DOMAIN),
            _lp(env.federation.encode()),
            _lp(env.sender.encode()),
            _lp(env.job_id.encode()),
            struct.pack(">IIQ", env.round, int(env.stage), env.issued_at_ms),
            hashlib.sha256(env.payload).digest(),
        ]
    )


def seal(
    *,
    signing_key: nacl.signing.SigningKey,
    federation: str,
    sender: str,
    stage: int,
    payload: bytes,
    now: float,
    job_id: str = "",
    round: int = 0,
) -> common_pb2.Envelope:
    """Build and sign an envelope around an already-serialized payload.

    Args:
        signing_key: the sender's Ed25519 identity key.
        now: the sender's clock, unix seconds (a parameter so tests pin it).
    """
    env = common_pb2.Envelope(
        federation=federation,
        sender=sender,
        job_id=job_id,
        round=round,
        stage=stage,  # type: ignore[arg-type]  # Stage is an int subclass at runtime
        issued_at_ms=int(now * 1000),
        payload=payload,
    )
    env.signature = signing_key.sign(canonical_bytes(env)).signature
    return env


def open_envelope(
    env: common_pb2.Envelope,
    *,
    verify_key: bytes,
    expect: Binding,
    now: float,
    max_skew_s: float = MAX_SKEW_S,
) -> bytes:
    """Verify an envelope's signature and binding, then return its payload bytes.

    The signature is checked before anything else is trusted.

    Args:
        verify_key: the sender's 32-byte Ed25519 public key, from its certificate.
        expect: the context the receiver is in.
        now: the receiver's clock, unix seconds.

    Raises:
        MalformedMessage: the signature has the wrong length.
        BadSignature: the signature does not verify.
        ReplayedMessage: the envelope is bound to another federation, sender, stage, job or
            round, or was issued too far from ``now``.
    """
    if len(env.signature) != 64:
        raise MalformedMessage(f"signature must be 64 bytes, got {len(env.signature)}")
    try:
        nacl.signing.VerifyKey(verify_key).verify(canonical_bytes(env), env.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError) as exc:
        raise BadSignature("envelope signature does not verify") from exc
    if env.federation != expect.federation:
        raise ReplayedMessage(f"envelope is for federation {env.federation!r}")
    if env.sender != expect.sender:
        raise ReplayedMessage(f"envelope sender {env.sender!r} is not the caller")
    if env.stage != expect.stage:
        raise ReplayedMessage(
            f"envelope is for stage {common_pb2.Stage.Name(env.stage)}, "
            f"expected {common_pb2.Stage.Name(expect.stage)}"
        )
    if expect.job_id is not None and env.job_id != expect.job_id:
        raise ReplayedMessage(f"envelope is for job {env.job_id!r}, expected {expect.job_id!r}")
    if expect.round is not None and env.round != expect.round:
        raise ReplayedMessage(f"envelope is for round {env.round}, expected {expect.round}")
    if abs(env.issued_at_ms / 1000.0 - now) > max_skew_s:
        raise ReplayedMessage("envelope issue time is too far from now (stale or replayed)")
    return env.payload
