"""Built-in model architectures as named parameter shapes, and their initial weights.

The aggregator never imports torch, yet it must create a job's first global model. So the
architecture of each built-in model is fixed here as an ordered list of (name, shape) that
the worker's torch modules reproduce exactly (their ``state_dict`` keys and shapes), and the
initial weights are drawn here in NumPy from the job's seed.

Architectures (C = classes, F = features, input_shape = [c, h, w] for the CNN):
- logreg: ``net.0`` Linear(F, C).
- mlp: ``net.0`` Linear(F, h1), ReLU, ``net.2`` Linear(h1, h2), ReLU, ..., Linear(h_last, C).
- cnn: ``features.0`` Conv2d(c, 16, 3, padding=1), ReLU, MaxPool2d(2),
  ``features.3`` Conv2d(16, 32, 3, padding=1), ReLU, AdaptiveAvgPool2d(1), Flatten,
  ``head`` Linear(32, C).
- fixed_delta (benchmarks): one float32 vector ``delta`` of ``fixed_delta_params`` zeros.
- bundle: the job's own code (``confide.bundle``); its float32 parameters are the ones the
  operator signed in ``model.parameters`` (found by ``confide job init-weights``), and its
  initial weights are the operator's (``model.initial_sha256``), never drawn here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from confide.errors import ConfigError
from confide.v1 import common_pb2
from confide.wire.bounds import MAX_NAME_BYTES, MAX_RANK, MAX_TENSORS

__all__ = [
    "CNN_CHANNELS",
    "DEFAULT_MLP_HIDDEN",
    "ENTRY_MODULE",
    "BundleSpec",
    "initial_weights",
    "parameter_bytes",
    "parameter_shapes",
]

ENTRY_MODULE = "model.py"
"""The module of a code bundle that defines ``build_model`` (and ``loss``, ``transform``)."""

DEFAULT_MLP_HIDDEN = (32,)
CNN_CHANNELS = (16, 32)
_DRAW_CHUNK = 1 << 20
"""Values drawn at once: the float64 draws are converted per chunk, so drawing a model costs
its float32 size plus 8 MiB, not three times its size."""

Shape = tuple[int, ...]


def _linear(name: str, fan_in: int, fan_out: int) -> list[tuple[str, Shape]]:
    return [(f"{name}.weight", (fan_out, fan_in)), (f"{name}.bias", (fan_out,))]


@dataclass(frozen=True)
class BundleSpec:
    """What a bundle's ``build_model(spec)`` is told about the job (plain values, no protobuf).

    Args:
        features: the dataset's feature column names, in order.
        label: the label column.
        num_classes: classes of the label (the model's output width for classification).
        input_shape: the shape of one record's features as the model receives them, e.g.
            ``(1, 8, 8)``; ``(len(features),)`` for flat features.
        seed: the job's seed (``training.seed``).
    """

    features: tuple[str, ...]
    label: str
    num_classes: int
    input_shape: tuple[int, ...]
    seed: int

    @classmethod
    def of(cls, job: common_pb2.JobSpec) -> BundleSpec:
        """The values of a job spec."""
        ds = job.dataset
        shape = tuple(int(d) for d in ds.input_shape) or (len(ds.features),)
        return cls(
            features=tuple(ds.features),
            label=ds.label,
            num_classes=int(ds.num_classes),
            input_shape=shape,
            seed=int(job.training.seed),
        )


def parameter_shapes(
    model: common_pb2.ModelSpec, dataset: common_pb2.DatasetSpec
) -> list[tuple[str, Shape]]:
    """The ordered (name, shape) list of a model's float32 parameters.

    A built-in model's follow from the spec; a bundle's are the signed ``model.parameters``.

    Raises:
        ConfigError: the model kind is unknown or does not fit the dataset spec.
    """
    classes = int(dataset.num_classes)
    features = len(dataset.features)
    kind = model.kind
    if kind == common_pb2.MODEL_KIND_BUNDLE:
        return _bundle_shapes(model)
    if kind == common_pb2.MODEL_KIND_FIXED_DELTA:
        if model.fixed_delta_params < 1:
            raise ConfigError("model.fixed_delta_params", "must be >= 1")
        return [("delta", (int(model.fixed_delta_params),))]
    if classes < 2:
        raise ConfigError("dataset.num_classes", "must be >= 2")
    if kind == common_pb2.MODEL_KIND_LOGREG:
        _need_features(features)
        return _linear("net.0", features, classes)
    if kind == common_pb2.MODEL_KIND_MLP:
        _need_features(features)
        hidden = [int(h) for h in model.hidden] or list(DEFAULT_MLP_HIDDEN)
        shapes: list[tuple[str, Shape]] = []
        fan_in = features
        for i, h in enumerate(hidden):
            shapes += _linear(f"net.{2 * i}", fan_in, h)
            fan_in = h
        return shapes + _linear(f"net.{2 * len(hidden)}", fan_in, classes)
    if kind == common_pb2.MODEL_KIND_CNN:
        if len(dataset.input_shape) != 3:
            raise ConfigError("dataset.input_shape", "the cnn needs [channels, height, width]")
        c = int(dataset.input_shape[0])
        c1, c2 = CNN_CHANNELS
        return [
            ("features.0.weight", (c1, c, 3, 3)),
            ("features.0.bias", (c1,)),
            ("features.3.weight", (c2, c1, 3, 3)),
            ("features.3.bias", (c2,)),
            *_linear("head", c2, classes),
        ]
    raise ConfigError("model.kind", f"unknown built-in model {kind}")


def _bundle_shapes(model: common_pb2.ModelSpec) -> list[tuple[str, Shape]]:
    """A bundle's signed parameter list, checked: float32, unique names, bounded count and rank."""
    key = "model.initial_weights"
    params = list(model.parameters)
    if not 1 <= len(params) <= MAX_TENSORS:
        raise ConfigError(
            key, f"a bundle model has 1 to {MAX_TENSORS} parameters, not {len(params)}"
        )
    seen: set[str] = set()
    out: list[tuple[str, Shape]] = []
    for p in params:
        if not p.name or len(p.name.encode()) > MAX_NAME_BYTES or p.name in seen:
            raise ConfigError(key, f"parameter name {p.name[:40]!r} is empty, too long or repeated")
        seen.add(p.name)
        if p.dtype != common_pb2.DTYPE_FLOAT32:
            raise ConfigError(key, f"parameter {p.name!r} must be float32")
        if len(p.shape) > MAX_RANK or any(d < 1 for d in p.shape):
            raise ConfigError(
                key, f"parameter {p.name!r} must have 0 to {MAX_RANK} dimensions, each >= 1"
            )
        out.append((p.name, tuple(int(d) for d in p.shape)))
    return out


def parameter_bytes(model: common_pb2.ModelSpec, dataset: common_pb2.DatasetSpec) -> int:
    """Bytes of a built-in model's float32 parameters, from its shapes (allocates nothing).

    Raises:
        ConfigError: the model kind is unknown or does not fit the dataset spec.
    """
    return 4 * sum(math.prod(shape) for _, shape in parameter_shapes(model, dataset))


def _need_features(n: int) -> None:
    if n < 1:
        raise ConfigError("dataset.features", "must list at least one feature column")


def initial_weights(
    model: common_pb2.ModelSpec, dataset: common_pb2.DatasetSpec, *, seed: int
) -> list[tuple[str, npt.NDArray[np.float32]]]:
    """Initial float32 weights: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), as torch's default.

    Args:
        seed: the job's seed, so a job's first model is reproducible.

    Raises:
        ConfigError: the model is a bundle (its initial weights are the operator's file), or
            does not fit the dataset spec.
    """
    if model.kind == common_pb2.MODEL_KIND_BUNDLE:
        raise ConfigError(
            "model.initial_weights",
            "a bundle job's initial weights come from confide job init-weights, not a seed",
        )
    rng = np.random.default_rng(seed)
    out: list[tuple[str, npt.NDArray[np.float32]]] = []
    weight_fan_in: dict[str, int] = {}
    for name, shape in parameter_shapes(model, dataset):
        if name == "delta":
            out.append((name, np.zeros(shape, dtype=np.float32)))
            continue
        prefix = name.rsplit(".", 1)[0]
        if name.endswith(".weight"):
            weight_fan_in[prefix] = int(np.prod(shape[1:]))
        bound = 1.0 / math.sqrt(max(1, weight_fan_in.get(prefix, 1)))
        flat = np.empty(math.prod(shape), dtype=np.float32)
        for start in range(0, flat.size, _DRAW_CHUNK):
            # The same stream as one rng.uniform(size=shape) call: the draws are sequential.
            stop = min(flat.size, start + _DRAW_CHUNK)
            flat[start:stop] = rng.uniform(-bound, bound, size=stop - start)
        out.append((name, flat.reshape(shape)))
    return out
