"""One torch-backed job inside the worker: its model, data on the device, and its rounds."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from confide.data.datasets import DatasetDescription, load_arrays
from confide.data.standardize import job_statistics
from confide.errors import MalformedMessage
from confide.models import BundleSpec, parameter_shapes
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays
from confide.wire.worker import DpSgdParams
from confide_worker.training.device import torch_device
from confide_worker.training.dpsgd import DEFAULT_MODES, DpTrainer, GradSampleMode
from confide_worker.training.models import build_model, load_weights, weights_delta
from confide_worker.training.train import Loss, evaluate, train_plain

__all__ = ["TorchJob"]


class TorchJob:
    """A job's model and its site data, kept for the job's rounds (built once per job).

    A built-in model comes from ``confide_worker.training.models``; a code bundle's from its own
    ``build_model`` (``confide_worker.bundle``), checked against the signed parameters, with
    its ``transform`` applied to the data once and its ``loss`` used in training. With
    DP-SGD a bundle's model is checked for layers Opacus cannot train per record (and fixed
    when the job asks) before anything trains.

    Args:
        job: the job spec.
        dataset: the site's dataset config (already checked against the job's schema).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        bundle: the unpacked, read-only folder of a bundle job's code (None: built-in).

    Raises:
        ConfigError: the model spec or device is invalid.
        MalformedMessage: the training block lacks a learning rate, batch size or epochs.
        PolicyRefusal: the data does not match its declared schema; a bundle that does not
            load or keep its promises (``invalid_job``), or has layers DP-SGD cannot train
            (``model_unsupported``).
        InternalError: the dataset file is unreadable.
    """

    def __init__(
        self,
        job: common_pb2.JobSpec,
        dataset: DatasetDescription,
        device: str,
        *,
        bundle: Path | None = None,
    ) -> None:
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
        self.loss: Loss | None = None
        self._new_model: Callable[[], nn.Module] = lambda: build_model(job.model, job.dataset)
        if job.model.kind == common_pb2.MODEL_KIND_BUNDLE:
            if bundle is None:
                raise MalformedMessage("a bundle job's worker was started without its bundle")
            self._bundle_model(job, bundle)
        self.model = self._new_model().to(dev)
        self._dp: DpTrainer | None = None
        self.lr = float(t.learning_rate)
        self.batch_size = int(t.batch_size)
        self.epochs = int(t.local_epochs)
        self.seed = int(t.seed)

    def _bundle_model(self, job: common_pb2.JobSpec, folder: Path) -> None:
        """Load the bundle, transform the data with it, and check the model it builds."""
        from confide_worker.bundle import check_parameters, dp_ready, load_bundle

        code = load_bundle(folder)
        self.x_train = code.features(self.x_train)
        self.x_holdout = code.features(self.x_holdout)
        self.num_features = int(self.x_train[0].numel()) if self.num_train else 0
        self.loss = code.loss
        spec, shapes = BundleSpec.of(job), parameter_shapes(job.model, job.dataset)
        dp, fix = job.record_privacy.enabled, job.training.fix_unsupported_layers

        def new_model() -> nn.Module:
            module = code.model(spec)
            if dp:
                module = dp_ready(module.train(), fix=fix)
            check_parameters(module, shapes)
            return module

        self._new_model = new_model

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
                **({"loss_fn": self.loss} if self.loss is not None else {}),
            )
            return weights_delta(self.model, weights), stats.steps, stats.metrics()
        # A bundle trains in hooks mode (Opacus's GradSampleModule); the fused fast path is
        # for the built-in models only.
        chosen = mode or DEFAULT_MODES.get(self.job.model.kind, GradSampleMode.HOOKS)
        if self._dp is None or self._dp.mode is not chosen:
            module = self._new_model().to(self.device)
            self._dp = DpTrainer(module, mode=chosen, lr=self.lr, loss=self.loss)
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
