"""The torch device a job's or a site's device string names, checked against this host."""

from __future__ import annotations

import re

import torch

from confide.errors import ConfigError

__all__ = ["torch_device"]

_CUDA = re.compile(r"^cuda(:(\d+))?$")


def torch_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cpu``; ``cuda``; ``cuda:N``.

    Raises:
        ConfigError: (key ``device``) unknown spelling, or CUDA asked for but not available,
            or no such GPU index.
    """
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if s == "cpu":
        return torch.device("cpu")
    m = _CUDA.match(s)
    if m is None:
        raise ConfigError("device", f"must be auto, cpu, cuda or cuda:N; got {spec!r}")
    if not torch.cuda.is_available():
        raise ConfigError("device", f"{spec!r} asked for, but CUDA is not available here")
    index = int(m.group(2)) if m.group(2) is not None else 0
    if index >= torch.cuda.device_count():
        raise ConfigError("device", f"{spec!r}: only {torch.cuda.device_count()} GPU(s) here")
    return torch.device("cuda", index)
