"""What the worker offers the daemon: its contract, parameters and results (no torch).

The agent daemon (``agent.workers.handle``) and its worker process (``confide_worker``) share
this module: ``WorkerContract`` is implemented on both sides, and its values travel in frames
(``confide.wire.frames``) encoded by ``confide.wire.worker_ops``.

Ops (header ``"op"``) and their frames, each answered by one reply frame whose header has
``"ok": true`` or ``"ok": false, "reason": <confide.errors.Reason value>, "message": ...``:

- ``init``: header ``job_id``, ``dataset`` (``confide.data.datasets.DatasetDescription``
  as JSON), ``device``; body = serialized ``JobSpec``. Reply: ``pid``, ``num_train``,
  ``num_holdout``, ``num_features``, ``device``, ``torch_loaded``.
- ``evaluate``: header ``tensors``, ``loss_clip`` (L > 0: each record's loss is clipped to L,
  or null); body = weights. Reply: ``accuracy``, ``loss`` (mean clipped loss),
  ``num_samples`` (hold-out records).
- ``train``: header ``tensors``, ``round``, ``dp`` (``DpSgdParams`` as an object, or null);
  body = weights. Reply: ``tensors``, ``num_samples``, ``steps``, ``metrics``; body = delta.
- ``ping``: reply ``pid`` and ``torch_loaded`` (``"torch" in sys.modules``).
- ``shutdown``: reply, then the worker exits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from confide.data.datasets import DatasetDescription
from confide.errors import MalformedMessage
from confide.v1 import common_pb2
from confide.wire.blob import NamedArrays

__all__ = ["DpSgdParams", "EvalResult", "TrainResult", "WorkerContract", "WorkerInfo"]


@dataclass(frozen=True)
class DpSgdParams:
    """DP-SGD parameters the daemon decides for one round (its accountant charges for them).

    The worker runs exactly ``steps`` steps, each on a Poisson sample of the local training
    set where every record is included independently with probability ``sample_rate`` (q);
    each per-record gradient is clipped to L2 norm ``max_grad_norm`` (C) and Gaussian noise
    N(0, (noise_multiplier * C)^2) is added to their sum (Abadi et al. 2016, "Deep Learning with
    Differential Privacy", Alg. 1). The daemon's RDP accountant charges the round as ``steps``
    compositions of the subsampled Gaussian mechanism with (q, noise_multiplier).

    Args:
        noise_multiplier: sigma, the noise std in units of C (>= 0).
        max_grad_norm: C, the per-record gradient clipping bound (> 0).
        sample_rate: q in (0, 1] (``agent.privacy.plan.dpsgd_schedule``).
        steps: optimizer steps this round (``agent.privacy.plan.dpsgd_schedule``).
    """

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier >= 0.0 and self.max_grad_norm > 0.0):
            raise MalformedMessage("dp: noise_multiplier must be >= 0 and max_grad_norm > 0")
        if not (0.0 < self.sample_rate <= 1.0) or self.steps < 1:
            raise MalformedMessage("dp: sample_rate must be in (0, 1] and steps >= 1")

    def to_json(self) -> dict[str, Any]:
        """The JSON form carried in a ``train`` frame."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> DpSgdParams:
        """Parse the JSON form.

        Raises:
            MalformedMessage: a field is missing or of the wrong type.
        """
        try:
            return cls(
                noise_multiplier=float(data["noise_multiplier"]),
                max_grad_norm=float(data["max_grad_norm"]),
                sample_rate=float(data["sample_rate"]),
                steps=int(data["steps"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessage(f"dp parameters are malformed: {exc!r}") from None


@dataclass(frozen=True)
class WorkerInfo:
    """What the worker reported after ``init``."""

    pid: int
    num_train: int
    num_holdout: int
    num_features: int
    device: str


@dataclass(frozen=True)
class EvalResult:
    """Hold-out evaluation of one set of weights."""

    accuracy: float
    loss: float
    num_samples: int


@dataclass(frozen=True)
class TrainResult:
    """One round of local training.

    Args:
        delta: new - old weights, float32, names/shapes/order of ``parameter_shapes``.
        num_samples: local training records (the FedAvg weight); 1 for fixed_delta jobs.
        steps: optimizer steps run (equals ``DpSgdParams.steps`` under DP-SGD).
        metrics: ``train_loss`` and ``train_accuracy`` over the records seen this round.
    """

    delta: NamedArrays
    num_samples: int
    steps: int
    metrics: dict[str, float]


class WorkerContract(Protocol):
    """What a job's worker offers: ``init`` once, then ``evaluate`` and ``train`` (later: export).

    Implemented twice, checked by mypy: in the worker process by
    ``confide_worker.runtime.Runtime`` (the real work, torch), and in the daemon by
    ``agent.workers.handle.Worker``, which sends each call as a frame to that process and
    decodes its reply (``confide.wire.worker_ops``). Calls run one at a time.
    """

    def init(
        self,
        job: common_pb2.JobSpec,
        *,
        job_id: str,
        dataset: DatasetDescription,
        device: str,
        bundle: str | None = None,
    ) -> WorkerInfo:
        """Build the job's model and load its dataset (``InitRequest``).

        ``bundle`` is a bundle job's checked, unpacked, read-only code folder (a path the
        worker can read; ``confide_worker.bundle``), None for a built-in model.

        Raises:
            PolicyRefusal: the data does not match its declared schema.
            ConfideError: the model spec, device or dataset file is unusable.
        """
        ...

    def evaluate(self, weights: NamedArrays, *, loss_clip: float | None = None) -> EvalResult:
        """Evaluate ``weights`` on the hold-out records (``EvaluateRequest``).

        Raises:
            ConfideError: the weights do not fit the model, or evaluation failed.
        """
        ...

    def train(self, weights: NamedArrays, *, dp: DpSgdParams | None, round: int) -> TrainResult:
        """Train one round from ``weights`` and return the delta (``TrainRequest``).

        Raises:
            ConfideError: the weights do not fit the model, or training failed.
        """
        ...
