"""One torch-backed job inside the worker: its model, data on the device, and its rounds."""

from __future__ import annotations

import os

import torch

from confide.data.datasets import DatasetDescription, load_arrays
from confide.data.standardize import job_statistics
from confide.errors import MalformedMessage
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.worker import DpSgdParams
from confide_worker.training.device import torch_device
from confide_worker.training.dpsgd import DEFAULT_MODES, DpTrainer, GradSampleMode
from confide_worker.training.models import build_model, load_weights, weights_delta
from confide_worker.training.train import evaluate, train_plain

__all__ = ["TorchJob"]


class TorchJob:
    """A built-in model and its site data, kept for the job's rounds (built once per job).

    Args:
        job: the job spec.
        dataset: the site's dataset config (already checked against the job's schema).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: the model spec or device is invalid.
        MalformedMessage: the training block lacks a learning rate, batch size or epochs.
        PolicyRefusal: the data does not match its declared schema.
        InternalError: the dataset file is unreadable.
    """

    def __init__(self, job: common_pb2.JobSpec, dataset: DatasetDescription, device: str) -> None:
        t = job.training
        # The daemon sends a validated, normalized job: no default is substituted here.
        if not (t.learning_rate > 0 and t.batch_size >= 1 and t.local_epochs >= 1):
            raise MalformedMessage("training needs learning_rate > 0, batch_size and epochs >= 1")
        self.job = job
        self.device = torch_device(device)
        ds = job.dataset
        stats = job_statistics(ds.feature_mean, ds.feature_scale) if ds.feature_mean else None
        data = load_arrays(dataset, stats=stats)
        self.num_train = int(data.x_train.shape[0])
        self.num_holdout = int(data.x_holdout.shape[0])
        self.num_features = int(data.x_train[0].size) if self.num_train else 0
        dev = self.device
        self.x_train = torch.from_numpy(data.x_train).to(dev)
        self.y_train = torch.from_numpy(data.y_train).to(dev)
        self.x_holdout = torch.from_numpy(data.x_holdout).to(dev)
        self.y_holdout = torch.from_numpy(data.y_holdout).to(dev)
        self.model = build_model(job.model, job.dataset).to(dev)
        self._dp: DpTrainer | None = None
        self.lr = float(t.learning_rate)
        self.batch_size = int(t.batch_size)
        self.epochs = int(t.local_epochs)
        self.seed = int(t.seed)

    def evaluate(
        self, weights: NamedArrays, *, loss_clip: float | None = None
    ) -> tuple[float, float, int]:
        """Accuracy, loss (per record clipped to ``loss_clip``) and count on the hold-out set."""
        load_weights(self.model, weights)
        return evaluate(self.model, self.x_holdout, self.y_holdout, loss_clip=loss_clip)

    def train(
        self,
        weights: NamedArrays,
        *,
        dp: DpSgdParams | None,
        round_no: int,
        mode: GradSampleMode | None = None,
    ) -> tuple[NamedArrays, int, dict[str, float]]:
        """One round from ``weights``: (delta, steps, metrics).

        Args:
            weights: the global model, in ``parameter_shapes`` order.
            dp: DP-SGD parameters, or None for plain SGD.
            round_no: the round, which seeds plain SGD's shuffles with the job seed.
            mode: override the per-sample-gradient mode (benchmarks).
        """
        if dp is None:
            load_weights(self.model, weights)
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + round_no) % 2**63)
            stats = train_plain(
                self.model,
                self.x_train,
                self.y_train,
                lr=self.lr,
                epochs=self.epochs,
                batch_size=self.batch_size,
                generator=gen,
            )
            return weights_delta(self.model, weights), stats.steps, stats.metrics()
        chosen = mode or DEFAULT_MODES.get(self.job.model.kind, GradSampleMode.HOOKS)
        if self._dp is None or self._dp.mode is not chosen:
            module = build_model(self.job.model, self.job.dataset).to(self.device)
            self._dp = DpTrainer(module, mode=chosen, lr=self.lr)
        load_weights(self._dp.module, weights)
        sample_gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        noise_gen = torch.Generator(device=self.device).manual_seed(
            int.from_bytes(os.urandom(8), "little") >> 1
        )
        stats = self._dp.run(
            self.x_train,
            self.y_train,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            sample_rate=dp.sample_rate,
            steps=dp.steps,
            sample_generator=sample_gen,
            noise_generator=noise_gen,
        )
        return weights_delta(self._dp.module, weights), stats.steps, stats.metrics()
