"""A tiny fake site and operator that speak the federation protocol with grpc + wire.seal."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import Message

from confide.pki import channel_credentials, load_identity
from confide.v1 import admin_pb2_grpc, common_pb2, federation_pb2, federation_pb2_grpc
from confide.wire import encode_tensors, iter_chunks, seal
from confide.wire.blob import MAX_MESSAGE_BYTES, BlobAssembler

ACK = federation_pb2.Ack()
"""What the aggregator answers a message it took; a refusal is the RPC's error instead."""

FEDERATION = "testfed"


def load(pki: Path, name: str):
    return load_identity(
        cert=pki / f"{name}.crt",
        key=pki / f"{name}.key",
        signing_key=pki / f"{name}.sign.key",
        ca=pki / "ca.crt",
    )


def channel(pki: Path, name: str, port: int) -> grpc.Channel:
    opts = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]
    return grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials(load(pki, name)), opts)


def tiny_spec(**overrides) -> common_pb2.JobSpec:
    spec = common_pb2.JobSpec(
        name="tiny",
        rounds=2,
        min_sites=2,
        round_timeout_s=10.0,
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LOGREG),
        dataset=common_pb2.DatasetSpec(
            name="tab", features=["a", "b", "c"], label="y", num_classes=2
        ),
        training=common_pb2.TrainingSpec(
            local_epochs=1,
            batch_size=8,
            learning_rate=0.1,
            server_optimizer=common_pb2.SERVER_OPTIMIZER_FEDAVG,
            server_learning_rate=1.0,
            seed=7,
        ),
    )
    for k, v in overrides.items():
        if isinstance(v, Message):
            getattr(spec, k).CopyFrom(v)
        else:
            setattr(spec, k, v)
    return spec


class Party:
    """Common signing for a site or an operator."""

    def __init__(self, pki: Path, name: str, port: int) -> None:
        self.name = name
        self.identity = load(pki, name)
        self.channel = channel(pki, name, port)

    def seal(
        self,
        stage,
        payload: bytes,
        *,
        job_id: str = "",
        round: int = 0,
        signer=None,
        now: float | None = None,
    ) -> common_pb2.Envelope:
        return seal(
            signing_key=signer or self.identity.signing_key,
            federation=FEDERATION,
            sender=self.name,
            stage=stage,
            payload=payload,
            now=time.time() if now is None else now,
            job_id=job_id,
            round=round,
        )

    def close(self) -> None:
        self.channel.close()


class Operator(Party):
    def __init__(self, pki: Path, name: str, port: int) -> None:
        super().__init__(pki, name, port)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)

    def submit(self, spec: common_pb2.JobSpec) -> str:
        env = self.seal(common_pb2.STAGE_JOB, spec.SerializeToString())
        return str(self.admin.SubmitJob(env, timeout=10).job_id)


class FakeSite(Party):
    """Registers, holds an OpenTasks stream (read by a thread), downloads and uploads."""

    def __init__(self, pki: Path, name: str, port: int) -> None:
        super().__init__(pki, name, port)
        self.fed = federation_pb2_grpc.FederationStub(self.channel)
        self.tasks: queue.Queue[federation_pb2.Task] = queue.Queue()
        self._stream: Any = None

    def register(self, datasets: Any = ("tab",), sizes: Any = None) -> Any:
        """Register ``datasets``; ``sizes`` maps a name to declared (train, hold-out) records."""
        req = federation_pb2.RegisterRequest(
            agent_version="test", datasets=list(datasets), device="cpu"
        )
        for name, (train, holdout) in (sizes or {}).items():
            req.dataset_sizes.add(name=name, train_records=train, holdout_records=holdout)
        return self.fed.Register(
            self.seal(common_pb2.STAGE_REGISTER, req.SerializeToString()), timeout=10
        )

    def connect(self, datasets=("tab",), sizes=None) -> None:
        self.register(datasets, sizes)
        self._stream = self.fed.OpenTasks(self.seal(common_pb2.STAGE_OPEN_TASKS, b""))
        threading.Thread(target=self._read, daemon=True).start()

    def heartbeat(self) -> Any:
        hb = federation_pb2.Heartbeat(current_task="")
        return self.fed.Heartbeat(
            self.seal(common_pb2.STAGE_HEARTBEAT, hb.SerializeToString()), timeout=10
        )

    def _read(self) -> None:
        try:
            for task in self._stream:
                self.tasks.put(task)
        except grpc.RpcError:
            pass

    def next_task(self, kind=None, timeout: float = 10.0) -> federation_pb2.Task:
        deadline = time.monotonic() + timeout
        while True:
            task = self.tasks.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind is None or task.kind == kind:
                return task

    def disconnect(self) -> None:
        if self._stream is not None:
            self._stream.cancel()

    def download(self, job_id: str, version: str):
        parts = self.fed.Download(
            federation_pb2.DownloadRequest(job_id=job_id, model_version=version)
        )
        first = next(parts)
        asm = BlobAssembler(first.header, max_bytes=1 << 30)
        for p in parts:
            asm.add(p.chunk)
        return asm.finish()

    def upload_parts(
        self,
        task: federation_pb2.Task,
        arrays,
        *,
        num_samples: int = 10,
        stage=common_pb2.STAGE_UPDATE,
        round: int | None = None,
        header_blob: common_pb2.BlobHeader | None = None,
        signer=None,
        metrics=None,
        epsilon: float = 0.5,
    ):
        blob, buffers = encode_tensors(arrays)
        if header_blob is not None:
            blob = header_blob
        hdr = federation_pb2.UpdateHeader(
            task_id=task.task_id,
            blob=blob,
            num_samples=num_samples,
            metrics=metrics or {},
            epsilon=epsilon,
        )
        env = self.seal(
            stage,
            hdr.SerializeToString(),
            job_id=task.job_id,
            round=task.round if round is None else round,
            signer=signer,
        )
        return [federation_pb2.UploadPart(header=env)] + [
            federation_pb2.UploadPart(chunk=c) for c in iter_chunks(buffers)
        ]

    def upload(self, task, arrays, **kw):
        return self.fed.Upload(iter(self.upload_parts(task, arrays, **kw)), timeout=20)

    def report(
        self,
        task,
        *,
        outcome=common_pb2.OUTCOME_OK,
        metrics=None,
        num_samples=0,
        kind=None,
        reason="",
        message="",
    ):
        """Report on ``task`` (as a task of ``kind`` when given, with its matching task id)."""
        task_id = task.task_id
        if kind is not None:
            name = federation_pb2.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()
            task_id = f"{task_id.rpartition('/')[0]}/{name}"
        rep = federation_pb2.TaskReport(
            task_id=task_id,
            kind=task.kind if kind is None else kind,
            outcome=outcome,
            reason=reason,
            metrics=metrics or {},
            num_samples=num_samples,
            message=message,
        )
        env = self.seal(
            common_pb2.STAGE_TASK_REPORT,
            rep.SerializeToString(),
            job_id=task.job_id,
            round=task.round,
        )
        return self.fed.Report(env, timeout=10)


def delta_like(arrays, value: float):
    return [(n, np.full(a.shape, value, dtype=np.float32)) for n, a in arrays]
