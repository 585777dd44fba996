"""The worker's ops on the wire: each request's and reply's frame form, for both sides.

The daemon (``agent.workers.handle``) encodes requests and decodes replies; the worker
(``confide_worker.main``) decodes requests and encodes replies; both with the codecs here,
over ``confide.wire.frames``. Replies are decoded strictly: the worker runs job code and is
not trusted, so a missing, mistyped, negative or non-finite field is ``MalformedMessage``.
The ops and their fields are listed in ``confide.wire.worker``. No torch.
"""

from __future__ import annotations

import contextlib
import enum
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from confide.data.datasets import DatasetDescription
from confide.errors import MalformedMessage
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.frames import Buffer, pack_arrays, unpack_arrays
from confide.wire.worker import DpSgdParams, EvalResult, TrainResult, WorkerInfo

__all__ = [
    "Body",
    "Encoded",
    "EvaluateRequest",
    "InitRequest",
    "Op",
    "TrainRequest",
    "decode_eval_result",
    "decode_info",
    "decode_train_result",
    "encode_reply",
]

Body = npt.NDArray[np.uint8]
"""A received frame's body (``confide.wire.frames.Frame``)."""
Encoded = tuple[dict[str, Any], list[Buffer]]
"""A frame to write: its header and the buffers of its body."""


class Op(enum.Enum):
    """The operations a worker serves (a frame header's ``"op"``)."""

    INIT = "init"
    EVALUATE = "evaluate"
    TRAIN = "train"
    PING = "ping"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class InitRequest:
    """``init``: build the job's model and load its dataset, once per worker.

    Args:
        job: the job spec (model, dataset schema, training parameters).
        job_id: the job's id, for messages.
        dataset: the dataset to read, already checked against the job's schema.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bundle: a bundle job's unpacked code folder (read-only in the sandbox), or None.
    """

    job: common_pb2.JobSpec
    job_id: str
    dataset: DatasetDescription
    device: str
    bundle: str | None = None

    def to_frame(self) -> Encoded:
        """The request frame (op ``init``)."""
        header = {
            "op": Op.INIT.value,
            "job_id": self.job_id,
            "dataset": self.dataset.to_json(),
            "device": self.device,
            "bundle": self.bundle,
        }
        return header, [self.job.SerializeToString()]

    @classmethod
    def from_frame(cls, header: Mapping[str, Any], body: Body) -> InitRequest:
        """Decode a request.

        Raises:
            MalformedMessage: the job spec does not parse, or ``bundle`` is not a path or null.
            ConfigError: the dataset description is incomplete (key ``dataset.FIELD``).
        """
        bundle = header.get("bundle")
        if bundle is not None and not isinstance(bundle, str):
            raise MalformedMessage("'bundle' must be a path or null")
        job = common_pb2.JobSpec()
        try:
            job.ParseFromString(body.tobytes())
        except Exception as exc:  # protobuf's DecodeError
            raise MalformedMessage(f"job spec does not parse: {exc}") from None
        return cls(
            job=job,
            job_id=str(header.get("job_id") or ""),
            dataset=DatasetDescription.from_json(header.get("dataset") or {}),
            device=str(header.get("device") or "auto"),
            bundle=bundle,
        )


@dataclass(frozen=True)
class EvaluateRequest:
    """``evaluate``: accuracy and loss of ``weights`` on the hold-out records.

    Args:
        weights: the model, in ``parameter_shapes`` order.
        loss_clip: L > 0: each record's loss is clipped to L before the mean; None: unclipped.
    """

    weights: NamedArrays
    loss_clip: float | None = None

    def to_frame(self) -> Encoded:
        """The request frame (op ``evaluate``)."""
        specs, buffers = pack_arrays(self.weights)
        header = {"op": Op.EVALUATE.value, "tensors": specs, "loss_clip": self.loss_clip}
        return header, list(buffers)

    @classmethod
    def from_frame(cls, header: Mapping[str, Any], body: Body) -> EvaluateRequest:
        """Decode a request; the weights are views of ``body``.

        Raises:
            MalformedMessage: the tensors do not match the body, or ``loss_clip`` is not a
                number > 0 or null.
        """
        weights = unpack_arrays(header.get("tensors"), body)
        clip = header.get("loss_clip")
        if clip is not None and (
            isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0
        ):
            raise MalformedMessage("'loss_clip' must be a number > 0 or null")
        return cls(weights=weights, loss_clip=None if clip is None else float(clip))


@dataclass(frozen=True)
class TrainRequest:
    """``train``: one round of local training from ``weights``.

    Args:
        weights: the global model, in ``parameter_shapes`` order.
        dp: DP-SGD parameters the daemon accounts for, or None for plain SGD.
        round: the round number (seeds plain SGD's shuffles).
    """

    weights: NamedArrays
    dp: DpSgdParams | None
    round: int

    def to_frame(self) -> Encoded:
        """The request frame (op ``train``)."""
        specs, buffers = pack_arrays(self.weights)
        header = {
            "op": Op.TRAIN.value,
            "tensors": specs,
            "round": int(self.round),
            "dp": None if self.dp is None else self.dp.to_json(),
        }
        return header, list(buffers)

    @classmethod
    def from_frame(cls, header: Mapping[str, Any], body: Body) -> TrainRequest:
        """Decode a request; the weights are views of ``body``.

        Raises:
            MalformedMessage: the tensors do not match the body, ``round`` is not a
                non-negative integer, or ``dp`` is malformed.
        """
        weights = unpack_arrays(header.get("tensors"), body)
        dp_raw = header.get("dp")
        dp = None if dp_raw is None else DpSgdParams.from_json(dp_raw)
        return cls(weights=weights, dp=dp, round=_count(header, "round"))


def encode_reply(result: WorkerInfo | EvalResult | TrainResult) -> Encoded:
    """The reply frame of a successful op; a delta is written from its own memory, uncopied."""
    if isinstance(result, TrainResult):
        specs, buffers = pack_arrays(result.delta)
        header = {
            "tensors": specs,
            "num_samples": result.num_samples,
            "steps": result.steps,
            "metrics": result.metrics,
        }
        return header, list(buffers)
    return asdict(result), []


def decode_info(header: Mapping[str, Any], body: Body) -> WorkerInfo:
    """Decode an ``init`` reply, strictly.

    Raises:
        MalformedMessage: a field is missing, of the wrong type or negative.
    """
    return WorkerInfo(
        pid=_count(header, "pid"),
        num_train=_count(header, "num_train"),
        num_holdout=_count(header, "num_holdout"),
        num_features=_count(header, "num_features"),
        device=_text(header, "device"),
    )


def decode_eval_result(header: Mapping[str, Any], body: Body) -> EvalResult:
    """Decode an ``evaluate`` reply, strictly.

    Raises:
        MalformedMessage: a field is missing, not finite, negative or of the wrong type.
    """
    return EvalResult(
        accuracy=_amount(header, "accuracy"),
        loss=_amount(header, "loss"),
        num_samples=_count(header, "num_samples"),
    )


def decode_train_result(header: Mapping[str, Any], body: Body) -> TrainResult:
    """Decode a ``train`` reply, strictly; the delta's arrays are views of ``body``.

    Raises:
        MalformedMessage: a field is missing, not finite, negative or of the wrong type, or
            the tensors do not match the body.
    """
    metrics = header.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise MalformedMessage("'metrics' is not an object")
    return TrainResult(
        delta=unpack_arrays(header.get("tensors"), body),
        num_samples=_count(header, "num_samples"),
        steps=_count(header, "steps"),
        metrics={str(k): _amount(metrics, k) for k in metrics},
    )


def _field(header: Mapping[str, Any], key: str) -> Any:
    if key not in header:
        raise MalformedMessage(f"'{key}' is missing")
    return header[key]


def _count(header: Mapping[str, Any], key: str) -> int:
    """A non-negative JSON integer (not a bool, not a float, not NaN)."""
    value = _field(header, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedMessage(f"'{key}' must be a non-negative integer, not {value!r:.40}")
    return value


def _amount(header: Mapping[str, Any], key: str) -> float:
    """A finite non-negative JSON number (losses, accuracies and metrics are never negative)."""
    value = _field(header, key)
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # an integer beyond float's range
            number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise MalformedMessage(f"'{key}' must be a finite number >= 0, not {value!r:.40}")
    return number


def _text(header: Mapping[str, Any], key: str) -> str:
    value = _field(header, key)
    if not isinstance(value, str):
        raise MalformedMessage(f"'{key}' must be a string, not {value!r:.40}")
    return value
