"""Load a downloaded model (``confide model download``) back into PyTorch at a site.

The file is safetensors: the weights by parameter name, and in its metadata the job's spec,
from which the built-in model is rebuilt (``confide_worker.training.models.build_model``), so
no code travels with the weights::

    from confide_worker.training.saved import load_model
    model, spec = load_model("model.safetensors")      # an nn.Module in eval mode
    probabilities = model(torch.as_tensor(x, dtype=torch.float32)).softmax(dim=-1)

``x`` holds ``spec.dataset.features`` in that order, read and standardized as the site's
dataset declares (``confide.data.datasets.load_arrays`` does both).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format
from torch import nn

from confide.errors import MalformedMessage
from confide.v1 import common_pb2
from confide.wire.safetensors import read_safetensors
from confide_worker.training.models import build_model, load_weights

__all__ = ["load_model"]


def load_model(path: str | Path) -> tuple[nn.Module, common_pb2.JobSpec]:
    """Rebuild a job's built-in model from a downloaded file and load its weights.

    Raises:
        MalformedMessage: not a Confide model file, or weights that do not fit the spec.
        ConfigError: the spec names no built-in model this runtime has.
        OSError: the file cannot be read.
    """
    arrays, metadata = read_safetensors(Path(path))
    if "job_spec" not in metadata:
        raise MalformedMessage(f"{path}: no job_spec in its metadata; not a Confide model file")
    try:
        spec = json_format.Parse(metadata["job_spec"], common_pb2.JobSpec())
    except json_format.ParseError as exc:
        raise MalformedMessage(f"{path}: its job_spec does not parse: {exc}") from None
    module = build_model(spec.model, spec.dataset)
    by_name = dict(arrays)
    names = [n for n, _ in module.named_parameters()]
    if set(by_name) != set(names):
        raise MalformedMessage(f"{path}: its tensors do not name the model's parameters")
    load_weights(module, [(n, by_name[n]) for n in names])
    module.eval()
    return module, spec
