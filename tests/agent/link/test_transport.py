"""GrpcTransport over real mutual TLS on loopback against a small in-process Federation server."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from agent.link.session import Session
from agent.link.transport import GrpcTransport
from confide.errors import ConfideError, PeerError, Reason
from confide.pki import server_credentials
from confide.v1 import common_pb2, federation_pb2, federation_pb2_grpc
from confide.wire import BlobAssembler, encode_tensors, iter_chunks
from confide.wire.blob import CHUNK_BYTES
from tests.agent.conftest import DATASET, sha_of, signed_task
from tests.agent.conftest import _load as load_identity_files

ROOT = Path(__file__).resolve().parents[3]

STALL = "5" * 64
"""The model version whose download stalls after its header."""


class _Federation(federation_pb2_grpc.FederationServicer):
    """Plain-function aggregator: records what arrives, serves one big model."""

    def __init__(self, model):
        self.model = model
        self.tasks: queue.Queue = queue.Queue()
        self.uploads: list[list[federation_pb2.UploadPart]] = []
        self.reports = []
        self.cond = threading.Condition()
        self.stalled = threading.Event()
        self.announce = 0

    def Register(self, request, context):
        return federation_pb2.RegisterReply(site_id=request.sender, heartbeat_interval_s=3600)

    def Heartbeat(self, request, context):
        return federation_pb2.HeartbeatReply()

    def OpenTasks(self, request, context):
        while context.is_active():
            try:
                yield self.tasks.get(timeout=0.05)
            except queue.Empty:
                continue

    def Download(self, request, context):
        if request.model_version == "announce":  # a 1 GiB header, then 2 MiB, then the end
            header = common_pb2.BlobHeader(total_bytes=self.announce, sha256=b"\0" * 32)
            header.tensors.add(name="w", dtype=common_pb2.DTYPE_UINT32, shape=[self.announce // 4])
            yield federation_pb2.BlobPart(header=header)
            yield federation_pb2.BlobPart(chunk=b"\1" * CHUNK_BYTES)
            return
        if request.model_version == STALL:  # the header, then nothing until the client leaves
            header, _ = encode_tensors(self.model)
            yield federation_pb2.BlobPart(header=header)
            left = threading.Event()
            if context.add_callback(left.set):  # False: the client has already gone
                self.stalled.set()
                left.wait(timeout=60)
            return
        if request.model_version != sha_of(self.model):
            context.abort(grpc.StatusCode.NOT_FOUND, Reason.UNKNOWN_JOB.value)
        header, buffers = encode_tensors(self.model)
        yield federation_pb2.BlobPart(header=header)
        for chunk in iter_chunks(buffers):
            yield federation_pb2.BlobPart(chunk=chunk)

    def Upload(self, request_iterator, context):
        parts = list(request_iterator)
        with self.cond:
            self.uploads.append(parts)
            self.cond.notify_all()
        return federation_pb2.Ack()

    def Report(self, request, context):
        with self.cond:
            self.reports.append(request)
            self.cond.notify_all()
        return federation_pb2.Ack()


@pytest.fixture
def server(pki):
    big = [
        ("net.0.weight", np.random.default_rng(0).standard_normal((2, 600_000)).astype("<f4")),
        ("net.0.bias", np.zeros(2, dtype="<f4")),
    ]
    servicer = _Federation(big)
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    federation_pb2_grpc.add_FederationServicer_to_server(servicer, srv)
    port = srv.add_secure_port(
        "127.0.0.1:0", server_credentials(load_identity_files(pki.dir, "aggregator"))
    )
    srv.start()
    yield servicer, f"127.0.0.1:{port}"
    srv.stop(0)


def test_download_assembles_a_multi_chunk_model(pki, server):
    """A model larger than one chunk downloads intact over mTLS (server name override)."""
    servicer, address = server
    t = GrpcTransport.from_identity(pki.site, address=address, server_name="aggregator")
    try:
        got = t.download("job-1", sha_of(servicer.model))
    finally:
        t.close()
    for (n, a), (m, b) in zip(got, servicer.model, strict=True):
        assert n == m
        np.testing.assert_array_equal(a, b)


def test_rpc_errors_map_to_confide_errors(pki, server):
    """A NOT_FOUND status with reason detail comes back as a PeerError with that reason."""
    _, address = server
    t = GrpcTransport.from_identity(pki.site, address=address, server_name="aggregator")
    try:
        with pytest.raises(PeerError) as info:
            t.download("job-1", "missing")
    finally:
        t.close()
    assert info.value.reason is Reason.UNKNOWN_JOB


def _grpc_session(pki: Any, address: str, runner: Any) -> Session:
    """A site-1 session over the real gRPC transport to the test server."""
    return Session(
        runner=runner,
        connect=lambda: GrpcTransport.from_identity(
            pki.site, address=address, server_name="aggregator"
        ),
        datasets=[DATASET],
        device="cpu",
        resources=federation_pb2.Resources,
    )


def test_session_trains_over_grpc(pki, server, runner, workers):
    """A session over the real transport uploads a header envelope then the blob's chunks."""
    servicer, address = server
    session = _grpc_session(pki, address, runner)
    th = threading.Thread(target=session.run, daemon=True)
    th.start()
    try:
        servicer.tasks.put(signed_task(pki.alice, round=2, model_version=sha_of(servicer.model)))
        with servicer.cond:
            assert servicer.cond.wait_for(lambda: servicer.uploads, timeout=30)
    finally:
        session.stop()
        th.join(timeout=10)
    assert not th.is_alive()
    parts = servicer.uploads[0]
    assert parts[0].WhichOneof("part") == "header"
    header = federation_pb2.UpdateHeader.FromString(parts[0].header.payload)
    asm = BlobAssembler(header.blob, max_bytes=1 << 30)
    for p in parts[1:]:
        asm.add(p.chunk)
    delta = asm.finish()
    assert len(parts) > 2  # more than one chunk
    assert all(np.all(a == 0.25) for _, a in delta)
    assert time.time() - parts[0].header.issued_at_ms / 1000 < 60


def test_download_past_its_deadline_is_unavailable(pki, server):
    """A download that stalls past its deadline raises ConfideError(unavailable)."""
    _, address = server
    t = GrpcTransport.from_identity(pki.site, address=address, server_name="aggregator")
    try:
        start = time.monotonic()
        with pytest.raises(ConfideError) as info:
            t.download("job-1", STALL, timeout=0.5)
        assert time.monotonic() - start < 10
    finally:
        t.close()
    assert info.value.reason is Reason.UNAVAILABLE


def _download_in_thread(t, outcome):
    try:
        outcome.append(t.download("job-1", STALL))
    except Exception as exc:
        outcome.append(exc)


def test_close_cancels_a_download_in_flight(pki, server):
    """close() from another thread ends a stalled download with ConfideError(unavailable)."""
    servicer, address = server
    t = GrpcTransport.from_identity(pki.site, address=address, server_name="aggregator")
    outcome: list = []
    th = threading.Thread(target=_download_in_thread, args=(t, outcome), daemon=True)
    th.start()
    assert servicer.stalled.wait(timeout=30)
    t.close()
    th.join(timeout=10)
    assert not th.is_alive()
    (err,) = outcome
    assert isinstance(err, ConfideError) and err.reason is Reason.UNAVAILABLE
    with pytest.raises(ConfideError) as info:
        t.download("job-1", sha_of(servicer.model))
    assert info.value.reason is Reason.UNAVAILABLE


def test_session_stop_cancels_a_stalled_download(pki, server, runner, workers):
    """stop() ends run() promptly even while a task is blocked in a stalled download."""
    servicer, address = server
    session = _grpc_session(pki, address, runner)
    th = threading.Thread(target=session.run, daemon=True)
    th.start()
    try:
        # Round 2: version 1, which any model may claim to be (version 0 is the initial one).
        servicer.tasks.put(signed_task(pki.alice, round=2, model_version=STALL))
        assert servicer.stalled.wait(timeout=30)
    finally:
        session.stop()
        th.join(timeout=10)
    assert not th.is_alive()
    assert session.status().tasks_done == 0


_ANNOUNCED = 1 << 30

_DOWNLOAD_AND_MEASURE = """
import json, sys
from pathlib import Path
from agent.link.transport import GrpcTransport
from confide.errors import ConfideError
from confide.pki import load_identity

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

d, address = Path(sys.argv[1]), sys.argv[2]
site = load_identity(cert=d / "site-1.crt", key=d / "site-1.key",
                     signing_key=d / "site-1.sign.key", ca=d / "ca.crt")
t = GrpcTransport.from_identity(site, address=address, server_name="aggregator",
                                max_model_bytes=2 << 30)
before = hwm()
try:
    t.download("job-1", "announce")
    reason = "ok"
except ConfideError as exc:
    reason = exc.reason.value
finally:
    t.close()
print(json.dumps({"grew": hwm() - before, "reason": reason}))
"""


def test_a_declared_size_allocates_nothing(pki, server):
    """An aggregator announcing 1 GiB and sending 2 MiB costs the agent process about 2 MiB."""
    servicer, address = server
    servicer.announce = _ANNOUNCED
    out = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD_AND_MEASURE, str(pki.dir), address],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=ROOT,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["reason"] == "malformed"  # the blob ended after 2 MiB of 1 GiB
    assert figures["grew"] < 64 * 2**20, figures
