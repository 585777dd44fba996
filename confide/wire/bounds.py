"""Count and size limits on every field a site sends, checked right after decoding.

A site with a valid certificate is not trusted (DESIGN, trust model): what it sends is
stored, listed and shown to operators, so one message must not be able to make a listing too
large to send, or the database grow by its own size. Every map, repeated and string field of
the site-originated messages has a limit here; a message over one is refused whole with
``OversizedMessage`` (reason ``oversized``), whose text names the field and its sizes, never
its content. gRPC's 8 MiB message limit still bounds the whole message; these are the limits
on its parts.

The limits sit far above what the agent sends (a handful of metrics, a few dataset names,
ids of tens of bytes) and far below what would hurt an operator's listing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from confide.errors import OversizedMessage
from confide.v1 import common_pb2, federation_pb2

__all__ = [
    "MAX_DATASETS",
    "MAX_ID_BYTES",
    "MAX_KEY_BYTES",
    "MAX_METRICS",
    "MAX_NAME_BYTES",
    "MAX_PEERS",
    "MAX_RANK",
    "MAX_REASON_BYTES",
    "MAX_RECORDS",
    "MAX_SHARE_BYTES",
    "MAX_TENSORS",
    "MAX_TEXT_BYTES",
    "check_envelope",
    "check_heartbeat",
    "check_open_tasks",
    "check_register",
    "check_report",
    "check_stage_message",
    "check_update_header",
    "fingerprint",
]

MAX_ID_BYTES = 128
"""Ids: federation, sender, job, task and site ids (UTF-8 bytes)."""
MAX_NAME_BYTES = 128
"""Names: datasets, metrics, tensors, device, agent version, GPU names."""
MAX_REASON_BYTES = 64
"""A report's reason (a ``confide.errors.Reason`` value, at most 20 bytes today)."""
MAX_TEXT_BYTES = 1024
"""A report's free-text message (stored only as one cleaned line of 200 characters, see
``aggregator.failures``)."""
MAX_METRICS = 64
"""Entries of one metrics map (the agent sends at most 7; room for per-class figures)."""
MAX_DATASETS = 256
"""Dataset names (and declared sizes) one site registers."""
MAX_GPUS = 64
"""GPU names in one heartbeat."""
MAX_TENSORS = 4096
"""Tensors in one update's blob header."""
MAX_RANK = 8
"""Dimensions of one tensor."""
MAX_RECORDS = 1 << 40
"""The largest record count a site may claim (training or hold-out records)."""
MAX_KEY_BYTES = 64
"""A public key or digest (X25519 keys and SHA-256 are 32 bytes)."""
MAX_PEERS = 4096
"""Entries of one SecAgg+ share list (one per neighbour)."""
MAX_SHARE_BYTES = 4096
"""One encrypted or revealed Shamir share."""
MAX_ROUND_KEYS_BYTES = 512
"""A signed SecAgg+ RoundKeys payload (two 32-byte keys and a task id)."""


def fingerprint(data: bytes) -> str:
    """``"<n> bytes sha256 <hex>"``: what a refusal record keeps of a message (never the bytes)."""
    return f"{len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()}"


def check_envelope(env: common_pb2.Envelope) -> None:
    """Refuse an envelope whose federation, sender or job id is too long.

    Raises:
        OversizedMessage: naming the field and its size.
    """
    for name in ("federation", "sender", "job_id"):
        _text(f"envelope.{name}", getattr(env, name), MAX_ID_BYTES)
    _blob("envelope.signature", env.signature, MAX_KEY_BYTES)


def check_register(req: federation_pb2.RegisterRequest) -> None:
    """Refuse a registration with too many or too long dataset names, or long version strings.

    Raises:
        OversizedMessage: naming the field and its sizes.
    """
    _text("agent_version", req.agent_version, MAX_NAME_BYTES)
    _text("device", req.device, MAX_NAME_BYTES)
    _names("datasets", req.datasets, MAX_DATASETS, MAX_NAME_BYTES)
    _count("dataset_sizes", len(req.dataset_sizes), MAX_DATASETS)
    for d in req.dataset_sizes:
        _text("dataset_sizes.name", d.name, MAX_NAME_BYTES)
        _records("dataset_sizes.train_records", d.train_records)
        _records("dataset_sizes.holdout_records", d.holdout_records)
    _text("instance", req.instance, MAX_ID_BYTES)
    _count("unusable", len(req.unusable), MAX_DATASETS)
    for p in req.unusable:
        _text("unusable.dataset", p.dataset, MAX_NAME_BYTES)
        _text("unusable.reason", p.reason, MAX_REASON_BYTES)
        _text("unusable.detail", p.detail, MAX_TEXT_BYTES)


def check_open_tasks(req: federation_pb2.OpenTasksRequest) -> None:
    """Refuse a task-stream request with a long instance id.

    Raises:
        OversizedMessage: naming the field and its size.
    """
    _text("instance", req.instance, MAX_ID_BYTES)


def check_heartbeat(hb: federation_pb2.Heartbeat) -> None:
    """Refuse a heartbeat with a long task id or too many or too long GPU names.

    Raises:
        OversizedMessage: naming the field and its sizes.
    """
    _text("current_task", hb.current_task, MAX_ID_BYTES)
    _names("resources.gpus", hb.resources.gpus, MAX_GPUS, MAX_NAME_BYTES)


def check_update_header(h: federation_pb2.UpdateHeader) -> None:
    """Refuse an update header over any limit (task id, tensors, metrics, sample count).

    Raises:
        OversizedMessage: naming the field and its sizes.
    """
    _text("task_id", h.task_id, MAX_ID_BYTES)
    _count("blob.tensors", len(h.blob.tensors), MAX_TENSORS)
    for t in h.blob.tensors:
        _text("blob.tensors.name", t.name, MAX_NAME_BYTES)
        _count("blob.tensors.shape", len(t.shape), MAX_RANK)
    _blob("blob.sha256", h.blob.sha256, MAX_KEY_BYTES)
    _metrics("metrics", h.metrics)
    _records("num_samples", h.num_samples)


def check_report(rep: federation_pb2.TaskReport) -> None:
    """Refuse a task report over any limit (task id, reason, message, metrics, count).

    Raises:
        OversizedMessage: naming the field and its sizes.
    """
    _text("task_id", rep.task_id, MAX_ID_BYTES)
    _text("reason", rep.reason, MAX_REASON_BYTES)
    _text("message", rep.message, MAX_TEXT_BYTES)
    _metrics("metrics", rep.metrics)
    _records("num_samples", rep.num_samples)


def check_stage_message(
    msg: federation_pb2.AdvertiseKeys
    | federation_pb2.ShareKeys
    | federation_pb2.SharesChecked
    | federation_pb2.ConsistencySignature
    | federation_pb2.UnmaskShares,
) -> None:
    """Refuse a SecAgg+ stage message over any limit (keys, ids, share lists, metrics).

    Raises:
        OversizedMessage: naming the field and its sizes.
    """
    _text("task_id", msg.task_id, MAX_ID_BYTES)
    if isinstance(msg, federation_pb2.AdvertiseKeys):
        keys = msg.keys
        for name, text in (("federation", keys.federation), ("sender", keys.sender)):
            _text(f"keys.{name}", text, MAX_ID_BYTES)
        _text("keys.job_id", keys.job_id, MAX_ID_BYTES)
        _blob("keys.payload", keys.payload, MAX_ROUND_KEYS_BYTES)
        _blob("keys.signature", keys.signature, MAX_KEY_BYTES)
        _metrics("metrics", msg.metrics)
        _records("num_samples", msg.num_samples)
    elif isinstance(msg, federation_pb2.SharesChecked):
        _count("rejected", len(msg.rejected), MAX_PEERS)
        for rej in msg.rejected:
            _text("rejected.from_site", rej.from_site, MAX_ID_BYTES)
            _text("rejected.reason", rej.reason, MAX_REASON_BYTES)
    elif isinstance(msg, federation_pb2.ConsistencySignature):
        _blob("session_id", msg.session_id, MAX_KEY_BYTES)
        _blob("view_sha256", msg.view_sha256, MAX_KEY_BYTES)
    elif isinstance(msg, federation_pb2.ShareKeys):
        _count("shares", len(msg.shares), MAX_PEERS)
        for s in msg.shares:
            _text("shares.to_site", s.to_site, MAX_ID_BYTES)
            _blob("shares.ciphertext", s.ciphertext, MAX_SHARE_BYTES)
    else:
        for name, items in (("seed_shares", msg.seed_shares), ("key_shares", msg.key_shares)):
            _count(name, len(items), MAX_PEERS)
            for r in items:
                _text(f"{name}.site_id", r.site_id, MAX_ID_BYTES)
                _blob(f"{name}.share", r.share, MAX_SHARE_BYTES)


def _count(field: str, n: int, limit: int) -> None:
    if n > limit:
        raise OversizedMessage(f"{field}: {n} entries exceed {limit}")


def _blob(field: str, data: bytes, limit: int) -> None:
    if len(data) > limit:
        raise OversizedMessage(f"{field}: {len(data)} bytes exceed {limit}")


def _text(field: str, text: str, limit: int) -> None:
    # A character is at most 4 UTF-8 bytes: only a long string needs encoding to be measured.
    if len(text) * 4 > limit and len(text.encode()) > limit:
        raise OversizedMessage(f"{field}: {len(text.encode())} bytes exceed {limit}")


def _names(field: str, names: Iterable[str], count: int, size: int) -> None:
    items = list(names)
    _count(field, len(items), count)
    for n in items:
        _text(field, n, size)


def _metrics(field: str, metrics: Mapping[str, float]) -> None:
    _count(field, len(metrics), MAX_METRICS)
    for k in metrics:
        _text(f"{field} name", k, MAX_NAME_BYTES)


def _records(field: str, n: int) -> None:
    if n > MAX_RECORDS:
        raise OversizedMessage(f"{field}: {n} exceeds {MAX_RECORDS}")
