"""A bundle job's files at the aggregator: received from the operator, served to sites.

A job that brings its own code (``confide.bundle``) names two blobs by SHA-256 in its signed
spec: the code archive (``model.code_sha256``) and its initial weights
(``model.initial_sha256``, made by ``confide job init-weights`` on the operator's machine). The
operator uploads both before submitting (``Admin.UploadBlob``); they are stored by hash in the
``BlobStore``. The aggregator checks the archive's structure with ``confide.bundle.unpack``
(pure parsing, so a hostile archive is refused before any site downloads it) but never
writes it out, imports or runs it: it has no Python environment for job code at all. An
upload that no job ever names (a refused or abandoned submit) is removed by
``aggregator.blob_collection`` once it is older than ``[store] unreferenced_blob_grace_s``.

Uploads are bounded before a byte is kept: an archive by ``confide.bundle.MAX_BUNDLE_BYTES``,
weights by ``limits.max_model_bytes``; the buffer grows with the bytes received, never with the
size a header declares.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from aggregator.store import BlobStore, Store
from confide import bundle
from confide.errors import ConfigError, MalformedMessage, OversizedMessage, PeerError, Reason
from confide.v1 import admin_pb2, common_pb2, federation_pb2
from confide.wire.blob import CHUNK_BYTES, BlobAssembler, check_finite

__all__ = ["bundle_parts", "check_bundle_job", "receive_blob"]


def receive_blob(
    parts: Iterator[admin_pb2.BlobUpload], blobs: BlobStore, *, max_model_bytes: int
) -> tuple[int, str]:
    """Receive one ``UploadBlob`` stream and store it; returns (kind, hex SHA-256).

    Raises:
        MalformedMessage: no header first, a second header, an unknown kind, a short stream, a
            digest that does not match, or an archive ``confide.bundle.unpack`` refuses (its
            own reason: ``bundle_unsafe_path``, ``bundle_special_file``, ...).
        OversizedMessage: over the bound of its kind (before its bytes are kept).
        NonFiniteValue: weights holding NaN or infinity.
    """
    first = next(parts, None)
    if first is None or first.WhichOneof("part") != "header":
        raise MalformedMessage("an upload must start with its header")
    head = first.header
    if head.kind == admin_pb2.BLOB_KIND_CODE_BUNDLE:
        data = _receive_bytes(parts, head.blob)
        bundle.unpack(data)  # structure only: nothing is written out, imported or run
        return head.kind, blobs.put_bytes(data)
    if head.kind == admin_pb2.BLOB_KIND_MODEL:
        asm = BlobAssembler(head.blob, max_bytes=max_model_bytes)
        for part in parts:
            if part.WhichOneof("part") != "chunk":
                raise MalformedMessage("only chunks may follow the upload header")
            asm.add(part.chunk)
        arrays = asm.finish()
        if any(a.dtype != np.float32 for _, a in arrays):
            raise MalformedMessage("initial weights must be float32 tensors")
        check_finite(arrays)
        sha, _ = blobs.put(arrays)
        return head.kind, sha
    raise MalformedMessage(f"unknown blob kind {head.kind}")


def _receive_bytes(parts: Iterator[admin_pb2.BlobUpload], head: common_pb2.BlobHeader) -> bytes:
    if head.tensors:
        raise MalformedMessage("a code bundle's header lists no tensors")
    if head.total_bytes > bundle.MAX_BUNDLE_BYTES:
        raise OversizedMessage(
            f"a code bundle of {head.total_bytes} bytes is over {bundle.MAX_BUNDLE_BYTES}",
            reason=Reason.BUNDLE_TOO_LARGE,
        )
    if len(head.sha256) != 32:
        raise MalformedMessage("blob sha256 must be 32 bytes")
    buf = bytearray()
    for part in parts:
        if part.WhichOneof("part") != "chunk":
            raise MalformedMessage("only chunks may follow the upload header")
        if len(buf) + len(part.chunk) > head.total_bytes:
            raise OversizedMessage("upload chunks exceed the declared total_bytes")
        buf += part.chunk
    if len(buf) != head.total_bytes:
        raise MalformedMessage(f"upload ended after {len(buf)} of {head.total_bytes} bytes")
    if hashlib.sha256(buf).digest() != head.sha256:
        raise MalformedMessage("upload sha256 does not match its header")
    return bytes(buf)


def check_bundle_job(spec: common_pb2.JobSpec, blobs: BlobStore) -> str:
    """A bundle job's version-0 model (hex SHA-256), once its uploaded files check out; both
    files' age restarts, so the blob collection keeps them until the job's row names them.

    Raises:
        ConfigError: ``model.code`` when the archive was not uploaded;
            ``model.initial_weights`` when the weights were not, or their tensors differ from
            the signed ``model.parameters``.
    """
    # ``refresh``, not ``has``: the job's row is about to name both files, so a blob
    # collection that chose them as old and unnamed must keep them (``BlobStore``).
    code = spec.model.code_sha256.hex()
    if not blobs.refresh(code):
        raise ConfigError(
            "model.code", f"code bundle {code} was not uploaded (confide job submit uploads it)"
        )
    initial = spec.model.initial_sha256.hex()
    if not (blobs.refresh(initial) and blobs.has(initial)):
        raise ConfigError(
            "model.initial_weights",
            f"initial model {initial} was not uploaded (confide job submit uploads it)",
        )
    if list(blobs.header(initial).tensors) != list(spec.model.parameters):
        raise ConfigError(
            "model.initial_weights",
            "the uploaded initial model's tensors differ from the job's model.parameters",
        )
    return initial


def bundle_parts(store: Store, blobs: BlobStore, job_id: str) -> Iterator[federation_pb2.BlobPart]:
    """A job's code archive as BlobParts (a header with its size and hash, then chunks).

    Checks the job and its bundle exist before the first part is yielded.

    Raises:
        PeerError: no such job, or a job without a code bundle (reason ``unknown_job``).
    """
    row = store.job(job_id)
    if row is None:
        raise PeerError(f"no job {job_id[:128]!r}", reason=Reason.UNKNOWN_JOB)
    spec = common_pb2.JobSpec.FromString(row.spec)
    if spec.model.kind != common_pb2.MODEL_KIND_BUNDLE:
        raise PeerError(f"job {job_id!r} has no code bundle", reason=Reason.UNKNOWN_JOB)
    data = blobs.read_bytes(spec.model.code_sha256.hex(), max_bytes=bundle.MAX_BUNDLE_BYTES)
    yield federation_pb2.BlobPart(
        header=common_pb2.BlobHeader(total_bytes=len(data), sha256=bundle.digest(data))
    )
    for start in range(0, len(data), CHUNK_BYTES):
        yield federation_pb2.BlobPart(chunk=data[start : start + CHUNK_BYTES])
