"""A bundle job at the aggregator: uploads stored by hash and checked, version 0 the operator's,
the archive served to sites as stored (aggregator.bundles)."""

from __future__ import annotations

import io
import tarfile

import grpc
import numpy as np
import pytest

from confide import bundle
from confide.cli.jobs import upload_bundle_files
from confide.errors import Reason
from confide.jobfile import LoadedJob, with_initial_weights
from confide.v1 import admin_pb2, admin_pb2_grpc, common_pb2, federation_pb2
from confide.wire import encode_tensors
from confide.wire.status import error_from_rpc
from tests.aggregator.fakes import tiny_spec

_CODE = {"model.py": b"def build_model(spec):\n    raise NotImplementedError\n"}


def _initial(value: float = 0.5):
    return [
        ("net.weight", np.full((2, 3), value, np.float32)),
        ("net.bias", np.zeros(2, np.float32)),
    ]


def _job(code=_CODE, initial=None) -> LoadedJob:
    archive = bundle.pack(code)
    initial = _initial() if initial is None else initial
    spec = tiny_spec(model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_BUNDLE))
    return LoadedJob(
        spec=with_initial_weights(spec, archive=archive, initial=initial),
        bundle=archive,
        initial=initial,
    )


def _reason(exc: grpc.RpcError) -> Reason:
    return error_from_rpc(exc).reason


def _parts(kind, data: bytes, *, total: int | None = None, sha: bytes | None = None):
    head = common_pb2.BlobHeader(
        total_bytes=len(data) if total is None else total,
        sha256=bundle.digest(data) if sha is None else sha,
    )
    yield admin_pb2.BlobUpload(header=admin_pb2.BlobUploadHeader(kind=kind, blob=head))
    yield admin_pb2.BlobUpload(chunk=data)


def _download_bundle(site, job_id: str) -> bytes:
    parts = list(site.fed.DownloadBundle(federation_pb2.BundleRequest(job_id=job_id), timeout=10))
    assert parts[0].WhichOneof("part") == "header"
    data = b"".join(p.chunk for p in parts[1:])
    assert parts[0].header.total_bytes == len(data) and not parts[0].header.tensors
    return data


def test_a_bundle_job_runs_from_the_uploaded_weights_and_serves_its_archive(clients):
    """Version 0 is the operator's upload; a site downloads exactly the archive the spec names."""
    site, operator = clients
    op = operator()
    job = _job()
    upload_bundle_files(op.admin, job)
    s1, s2 = site("site-1"), site("site-2")
    for s in (s1, s2):
        s.connect()
    job_id = op.submit(job.spec)
    task = s1.next_task(federation_pb2.TASK_KIND_TRAIN)
    assert task.model_version == job.spec.model.initial_sha256.hex()
    got = s1.download(job_id, task.model_version)
    assert [(n, a.tolist()) for n, a in got] == [(n, a.tolist()) for n, a in _initial()]
    data = _download_bundle(s2, job_id)
    assert data == job.bundle
    bundle.check_digest(data, code_sha256=job.spec.model.code_sha256)


def test_a_bundle_job_whose_files_were_not_uploaded_is_refused(clients):
    """SubmitJob names the missing file's key: the code first, then the initial weights."""
    _, operator = clients
    op = operator()
    job = _job()
    with pytest.raises(grpc.RpcError) as exc:
        op.submit(job.spec)
    assert "model.code" in error_from_rpc(exc.value).message
    assert job.bundle is not None
    op.admin.UploadBlob(_parts(admin_pb2.BLOB_KIND_CODE_BUNDLE, job.bundle), timeout=10)
    with pytest.raises(grpc.RpcError) as exc:
        op.submit(job.spec)
    assert "model.initial_weights" in error_from_rpc(exc.value).message


def test_initial_weights_that_differ_from_the_signed_parameters_are_refused(clients):
    """The uploaded version 0 must have exactly the tensors the signed spec lists."""
    _, operator = clients
    op = operator()
    job = _job()
    other = _job(initial=[("net.weight", np.zeros((3, 3), np.float32))])
    upload_bundle_files(op.admin, other)  # same code, other weights
    spec = common_pb2.JobSpec()
    spec.CopyFrom(job.spec)
    spec.model.initial_sha256 = other.spec.model.initial_sha256
    with pytest.raises(grpc.RpcError) as exc:
        op.submit(spec)
    assert "model.initial_weights" in error_from_rpc(exc.value).message


def _symlink_archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("model.py")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    return out.getvalue()


def test_hostile_or_inconsistent_uploads_are_refused_with_their_reason(clients):
    """A link inside, a size over the bound, a wrong digest or unknown kind: each refused."""
    _, operator = clients
    op = operator()
    code = admin_pb2.BLOB_KIND_CODE_BUNDLE
    cases = [
        (_parts(code, _symlink_archive()), Reason.BUNDLE_SPECIAL_FILE),
        (_parts(code, b"x", total=bundle.MAX_BUNDLE_BYTES + 1), Reason.BUNDLE_TOO_LARGE),
        (_parts(code, b"abc", sha=bundle.digest(b"abd")), Reason.MALFORMED),
        (_parts(code, b"abc", total=2), Reason.OVERSIZED),
        (_parts(admin_pb2.BLOB_KIND_UNSPECIFIED, b"abc"), Reason.MALFORMED),
        (_parts(admin_pb2.BLOB_KIND_MODEL, b"abc"), Reason.MALFORMED),
        (iter([admin_pb2.BlobUpload(chunk=b"no header")]), Reason.MALFORMED),
    ]
    for parts, reason in cases:
        with pytest.raises(grpc.RpcError) as exc:
            op.admin.UploadBlob(parts, timeout=10)
        assert _reason(exc.value) is reason


def test_nan_weights_and_site_uploads_are_refused(clients):
    """Initial weights must be finite float32; a site certificate may not upload at all."""
    site, operator = clients
    op = operator()
    for arrays, reason in (
        ([("w", np.full(3, np.nan, np.float32))], Reason.NON_FINITE),
        ([("w", np.zeros(3, np.float64))], Reason.MALFORMED),
    ):
        blob, buffers = encode_tensors(arrays)
        parts = iter(
            [
                admin_pb2.BlobUpload(
                    header=admin_pb2.BlobUploadHeader(kind=admin_pb2.BLOB_KIND_MODEL, blob=blob)
                ),
                *(admin_pb2.BlobUpload(chunk=bytes(b)) for b in buffers),
            ]
        )
        with pytest.raises(grpc.RpcError) as exc:
            op.admin.UploadBlob(parts, timeout=10)
        assert _reason(exc.value) is reason
    as_site = admin_pb2_grpc.AdminStub(site("site-1").channel)
    with pytest.raises(grpc.RpcError) as exc:
        as_site.UploadBlob(_parts(admin_pb2.BLOB_KIND_CODE_BUNDLE, bundle.pack(_CODE)), timeout=10)
    assert _reason(exc.value) is Reason.UNAUTHORIZED


def test_a_built_in_job_or_unknown_job_has_no_bundle_to_download(clients):
    """DownloadBundle refuses a job without code, and a job that does not exist."""
    site, operator = clients
    op = operator()
    s = site("site-1")
    s.connect()
    job_id = op.submit(tiny_spec())
    for jid in (job_id, "nope"):
        with pytest.raises(grpc.RpcError) as exc:
            _download_bundle(s, jid)
        assert _reason(exc.value) is Reason.UNKNOWN_JOB
