"""A job's model versions as a hash chain, and the initial model a signed job defines.

Version 0 of a job is not the aggregator's choice: it is ``confide.models.initial_weights`` of
the signed spec's model, dataset and seed (for a bundle job: the operator's initial weights,
whose SHA-256 the signed spec holds), so a site knows its SHA-256 and accepts no other model as
version 0. Each later version k is the aggregator's claim: a site cannot recompute an
aggregate it saw only its own part of. The chain makes the claim one linear history::

    anchor   = SHA-256("confide/v1/model-chain/anchor" || u32be(len(job_id)) || job_id
                       || SHA-256(signed job envelope, deterministic serialization))
    chain_0  = link(anchor, 0, sha_0)
    chain_k  = link(chain_{k-1}, k, sha_k)
    link(p, k, s) = SHA-256("confide/v1/model-chain" || p || u32be(k) || s)

where sha_k is the 32-byte SHA-256 of version k's blob (the ``model_version`` hex). A site pins
every version it is shown to one model for good and checks each parent it holds, so across
everything a job ever asks of it the site sees at most ``rounds + 1`` distinct models, in one
order. What a chain cannot show is that version k really is the aggregate of round k.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from confide.errors import MalformedMessage
from confide.models import initial_weights
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays, encode_tensors

__all__ = ["CHAIN_BYTES", "chain_anchor", "chain_link", "chain_of", "initial_model_sha"]

CHAIN_BYTES = 32
"""Length of a chain value (SHA-256)."""

_ANCHOR = b"confide/v1/model-chain/anchor"
_LINK = b"confide/v1/model-chain"


def chain_anchor(*, job_id: str, signed_job: common_pb2.Envelope) -> bytes:
    """The value version 0 links to: the job id and the exact signed job it runs."""
    jid = job_id.encode()
    signed = hashlib.sha256(signed_job.SerializeToString(deterministic=True)).digest()
    return hashlib.sha256(_ANCHOR + struct.pack(">I", len(jid)) + jid + signed).digest()


def chain_link(parent: bytes, *, version: int, model_sha: str) -> bytes:
    """chain_k from chain_{k-1} (or the anchor), k and version k's model hex SHA-256.

    Raises:
        MalformedMessage: the parent is not 32 bytes, k is not a u32, or the model hash is not
            64 lowercase hex digits.
    """
    if len(parent) != CHAIN_BYTES:
        raise MalformedMessage(f"a chain value is {CHAIN_BYTES} bytes, not {len(parent)}")
    if not 0 <= version < 2**32:
        raise MalformedMessage(f"version {version} is out of range")
    return hashlib.sha256(
        _LINK + parent + struct.pack(">I", version) + _sha_bytes(model_sha)
    ).digest()


def chain_of(*, job_id: str, signed_job: common_pb2.Envelope, shas: Sequence[str]) -> list[bytes]:
    """chain_0 .. chain_k of a job whose versions 0..k have the blob hashes ``shas``."""
    out: list[bytes] = []
    parent = chain_anchor(job_id=job_id, signed_job=signed_job)
    for k, sha in enumerate(shas):
        parent = chain_link(parent, version=k, model_sha=sha)
        out.append(parent)
    return out


def initial_model_sha(spec: common_pb2.JobSpec) -> str:
    """The hex SHA-256 of the job's version 0, as the aggregator's blob store names it.

    A bundle job's version 0 is the operator's file, named in the signed spec
    (``model.initial_sha256``); a built-in model's is drawn from the spec's seed.

    Raises:
        ConfigError: the spec's model does not fit its dataset.
    """
    if spec.model.kind == common_pb2.MODEL_KIND_BUNDLE:
        return spec.model.initial_sha256.hex()
    weights: NamedArrays = list(
        initial_weights(spec.model, spec.dataset, seed=int(spec.training.seed))
    )
    header, _ = encode_tensors(weights)
    return header.sha256.hex()


def _sha_bytes(model_sha: str) -> bytes:
    if len(model_sha) != 64 or any(c not in "0123456789abcdef" for c in model_sha):
        raise MalformedMessage("a model version is 64 lowercase hex digits")
    return bytes.fromhex(model_sha)
