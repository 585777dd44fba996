"""The worker's side of the contract: one job's model and data, kept between its ops.

``Runtime`` implements ``confide.wire.worker.WorkerContract`` in the worker process; the frame
loop (``confide_worker.main``) decodes each request, calls it, and encodes its answer.

Fixed-delta (benchmark) jobs never import torch: ``train`` answers one preallocated float32
vector of ``1e-3``, written straight from its memory, so the figure measures the federation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from confide.data.datasets import DatasetDescription
from confide.errors import MalformedMessage
from confide.models import parameter_shapes
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.worker import DpSgdParams, EvalResult, TrainResult, WorkerInfo

if TYPE_CHECKING:
    from confide_worker.training.job import TorchJob

__all__ = ["FIXED_DELTA_VALUE", "Runtime"]

FIXED_DELTA_VALUE = 1e-3
"""Every element of a fixed_delta job's update."""


class _FixedDeltaJob:
    """The benchmark job: no data, no torch, one constant update."""

    def __init__(self, job: common_pb2.JobSpec) -> None:
        ((name, shape),) = parameter_shapes(job.model, job.dataset)
        self.delta: NamedArrays = [(name, np.full(shape, FIXED_DELTA_VALUE, dtype=np.float32))]


class Runtime:
    """One job's worker: ``init`` once, then any number of ``evaluate`` and ``train``."""

    def __init__(self) -> None:
        self._fixed: _FixedDeltaJob | None = None
        self._torch: TorchJob | None = None
        self._shapes: list[tuple[str, tuple[int, ...]]] = []

    @property
    def ready(self) -> bool:
        """Whether ``init`` has succeeded."""
        return self._fixed is not None or self._torch is not None

    def init(
        self,
        job: common_pb2.JobSpec,
        *,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        bundle: str | None = None,
    ) -> WorkerInfo:
        """Build the job's model and load its data (imports torch unless fixed_delta).

        Raises:
            MalformedMessage: init was sent twice.
            ConfigError: the model spec or device is invalid.
            PolicyRefusal: the data does not match its declared schema.
            InternalError: the dataset file is unreadable.
        """
        if self.ready:
            raise MalformedMessage("init sent twice")
        self._shapes = parameter_shapes(job.model, job.dataset)
        if job.model.kind == common_pb2.MODEL_KIND_FIXED_DELTA:
            self._fixed = _FixedDeltaJob(job)
            return WorkerInfo(
                pid=os.getpid(), num_train=0, num_holdout=0, num_features=0, device="cpu"
            )
        from confide_worker.training.job import TorchJob  # torch is paid for here, once per job

        tj = self._torch = TorchJob(
            job, dataset, device, bundle=None if bundle is None else Path(bundle)
        )
        return WorkerInfo(
            pid=os.getpid(),
            num_train=tj.num_train,
            num_holdout=tj.num_holdout,
            num_features=tj.num_features,
            device=str(tj.device),
        )

    def evaluate(self, weights: NamedArrays, *, loss_clip: float | None = None) -> EvalResult:
        """Accuracy, mean (clipped) loss and count on the hold-out records.

        Raises:
            MalformedMessage: before init, or the weights do not fit the model.
        """
        torch_job = self._torch_job()
        checked = self._checked(weights)
        if torch_job is None:
            return EvalResult(accuracy=0.0, loss=0.0, num_samples=0)
        acc, loss, n = torch_job.evaluate(checked, loss_clip=loss_clip)
        return EvalResult(accuracy=acc, loss=loss, num_samples=n)

    def train(self, weights: NamedArrays, *, dp: DpSgdParams | None, round: int) -> TrainResult:
        """One round from ``weights``: the delta, the records trained on, steps, metrics.

        Raises:
            MalformedMessage: before init, or the weights do not fit the model.
        """
        torch_job = self._torch_job()
        if torch_job is None:
            assert self._fixed is not None
            # No weight check, no copy: the benchmark measures the federation, not this.
            return TrainResult(
                delta=self._fixed.delta,
                num_samples=1,
                steps=0,
                metrics={"train_loss": 0.0, "train_accuracy": 0.0},
            )
        delta, steps, metrics = torch_job.train(self._checked(weights), dp=dp, round_no=round)
        return TrainResult(
            delta=delta, num_samples=torch_job.num_train, steps=steps, metrics=metrics
        )

    def _torch_job(self) -> TorchJob | None:
        """The torch job, or None for a fixed_delta job.

        Raises:
            MalformedMessage: init has not succeeded.
        """
        if not self.ready:
            raise MalformedMessage("op before init")
        return self._torch

    def _checked(self, weights: NamedArrays) -> NamedArrays:
        got = [(n, tuple(a.shape), a.dtype.name) for n, a in weights]
        want = [(n, s, "float32") for n, s in self._shapes]
        if got != want:
            raise MalformedMessage("weights do not match the model's parameter names/shapes")
        return weights
