"""Wire bounds: every site-sent field is accepted at its limit and refused one past it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from confide.errors import OversizedMessage, Reason
from confide.v1 import common_pb2, federation_pb2
from confide.wire import bounds as b


def _name(n: int) -> str:
    return "é" * (n // 2) + "x" * (n % 2)  # multi-byte: limits count UTF-8 bytes


def _metrics(n: int) -> dict[str, float]:
    return {f"m{i}": 1.0 for i in range(n)}


def _header(**kw: Any) -> federation_pb2.UpdateHeader:
    return federation_pb2.UpdateHeader(**kw)


def _tensors(n: int, rank: int = 1, name: str = "w") -> common_pb2.BlobHeader:
    return common_pb2.BlobHeader(
        tensors=[common_pb2.TensorSpec(name=name, shape=[1] * rank) for _ in range(n)]
    )


def _register(**kw: Any) -> federation_pb2.RegisterRequest:
    return federation_pb2.RegisterRequest(**kw)


def _sizes(n: int, records: int = 1) -> list[federation_pb2.DatasetSize]:
    return [federation_pb2.DatasetSize(name=f"d{i}", train_records=records) for i in range(n)]


CASES: list[tuple[str, Callable[[Any], None], Callable[[int], Any], int]] = [
    (
        "envelope.job_id",
        b.check_envelope,
        lambda n: common_pb2.Envelope(job_id=_name(n)),
        b.MAX_ID_BYTES,
    ),
    (
        "envelope.sender",
        b.check_envelope,
        lambda n: common_pb2.Envelope(sender=_name(n)),
        b.MAX_ID_BYTES,
    ),
    (
        "envelope.signature",
        b.check_envelope,
        lambda n: common_pb2.Envelope(signature=bytes(n)),
        b.MAX_KEY_BYTES,
    ),
    ("datasets count", b.check_register, lambda n: _register(datasets=["d"] * n), b.MAX_DATASETS),
    ("dataset name", b.check_register, lambda n: _register(datasets=[_name(n)]), b.MAX_NAME_BYTES),
    (
        "agent_version",
        b.check_register,
        lambda n: _register(agent_version=_name(n)),
        b.MAX_NAME_BYTES,
    ),
    (
        "dataset_sizes",
        b.check_register,
        lambda n: _register(dataset_sizes=_sizes(n)),
        b.MAX_DATASETS,
    ),
    (
        "train_records",
        b.check_register,
        lambda n: _register(dataset_sizes=_sizes(1, n)),
        b.MAX_RECORDS,
    ),
    (
        "gpus",
        b.check_heartbeat,
        lambda n: federation_pb2.Heartbeat(resources=federation_pb2.Resources(gpus=["g"] * n)),
        b.MAX_GPUS,
    ),
    (
        "current_task",
        b.check_heartbeat,
        lambda n: federation_pb2.Heartbeat(current_task=_name(n)),
        b.MAX_ID_BYTES,
    ),
    (
        "update metrics",
        b.check_update_header,
        lambda n: _header(metrics=_metrics(n)),
        b.MAX_METRICS,
    ),
    (
        "metric name",
        b.check_update_header,
        lambda n: _header(metrics={_name(n): 1.0}),
        b.MAX_NAME_BYTES,
    ),
    ("num_samples", b.check_update_header, lambda n: _header(num_samples=n), b.MAX_RECORDS),
    ("tensors", b.check_update_header, lambda n: _header(blob=_tensors(n)), b.MAX_TENSORS),
    ("rank", b.check_update_header, lambda n: _header(blob=_tensors(1, rank=n)), b.MAX_RANK),
    (
        "tensor name",
        b.check_update_header,
        lambda n: _header(blob=_tensors(1, name=_name(n))),
        b.MAX_NAME_BYTES,
    ),
    ("task_id", b.check_update_header, lambda n: _header(task_id=_name(n)), b.MAX_ID_BYTES),
    (
        "report reason",
        b.check_report,
        lambda n: federation_pb2.TaskReport(reason=_name(n)),
        b.MAX_REASON_BYTES,
    ),
    (
        "report message",
        b.check_report,
        lambda n: federation_pb2.TaskReport(message=_name(n)),
        b.MAX_TEXT_BYTES,
    ),
    (
        "report metrics",
        b.check_report,
        lambda n: federation_pb2.TaskReport(metrics=_metrics(n)),
        b.MAX_METRICS,
    ),
    (
        "report count",
        b.check_report,
        lambda n: federation_pb2.TaskReport(num_samples=n),
        b.MAX_RECORDS,
    ),
    (
        "keys",
        b.check_stage_message,
        lambda n: federation_pb2.AdvertiseKeys(keys=common_pb2.Envelope(payload=bytes(n))),
        b.MAX_ROUND_KEYS_BYTES,
    ),
    (
        "rejected shares",
        b.check_stage_message,
        lambda n: federation_pb2.SharesChecked(rejected=[federation_pb2.RejectedShare()] * n),
        b.MAX_PEERS,
    ),
    (
        "rejected reason",
        b.check_stage_message,
        lambda n: federation_pb2.SharesChecked(
            rejected=[federation_pb2.RejectedShare(reason=_name(n))]
        ),
        b.MAX_REASON_BYTES,
    ),
    (
        "view digest",
        b.check_stage_message,
        lambda n: federation_pb2.ConsistencySignature(view_sha256=bytes(n)),
        b.MAX_KEY_BYTES,
    ),
    (
        "advertised metrics",
        b.check_stage_message,
        lambda n: federation_pb2.AdvertiseKeys(metrics=_metrics(n)),
        b.MAX_METRICS,
    ),
    (
        "shares",
        b.check_stage_message,
        lambda n: federation_pb2.ShareKeys(shares=[federation_pb2.EncryptedShare()] * n),
        b.MAX_PEERS,
    ),
    (
        "ciphertext",
        b.check_stage_message,
        lambda n: federation_pb2.ShareKeys(
            shares=[federation_pb2.EncryptedShare(ciphertext=bytes(n))]
        ),
        b.MAX_SHARE_BYTES,
    ),
    (
        "revealed",
        b.check_stage_message,
        lambda n: federation_pb2.UnmaskShares(
            seed_shares=[federation_pb2.RevealedShare(site_id=_name(n))]
        ),
        b.MAX_ID_BYTES,
    ),
]


@pytest.mark.parametrize(("field", "check", "make", "limit"), CASES, ids=[c[0] for c in CASES])
def test_each_limit_is_inclusive(field, check, make, limit):
    """A field exactly at its limit passes; one past it is OVERSIZED, naming sizes, not content."""
    check(make(limit))
    with pytest.raises(OversizedMessage) as err:
        check(make(limit + 1))
    assert err.value.reason is Reason.OVERSIZED
    assert "é" not in str(err.value) and len(str(err.value)) < 200


def test_fingerprint_keeps_size_and_digest_only():
    """A refusal's fingerprint is the byte count and SHA-256, never the bytes."""
    fp = b.fingerprint(b"secret payload")
    assert fp.startswith("14 bytes sha256 ") and "secret" not in fp and len(fp) == 16 + 64
