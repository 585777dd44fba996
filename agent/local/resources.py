"""What the daemon reports about its host: CPU, memory and GPU names, without torch.

GPU names come from ``nvidia-smi`` when it is installed (asked once, at start-up: the list does
not change while the daemon runs), else the list is empty. Importing torch to ask CUDA would
cost the daemon hundreds of megabytes of RSS, which is why the worker alone imports it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import psutil

from confide.v1 import federation_pb2

__all__ = ["ResourceProbe", "gpu_names"]

_NVIDIA_SMI_TIMEOUT_S = 5.0


def gpu_names(nvidia_smi: str | None = None) -> list[str]:
    """Names of the NVIDIA GPUs on this host, or an empty list when none can be found.

    Args:
        nvidia_smi: path of the ``nvidia-smi`` binary; None looks it up on ``PATH``.
    """
    exe = nvidia_smi or shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


class ResourceProbe:
    """Samples this process's CPU and memory use; GPU names are read once.

    Args:
        gpus: the GPU names to report; None asks ``gpu_names()``.
    """

    def __init__(self, gpus: Sequence[str] | None = None) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(interval=None)  # first call primes the counter, returns 0.0
        self._gpus = list(gpus) if gpus is not None else gpu_names()

    @property
    def gpus(self) -> list[str]:
        """The GPU names found at start-up."""
        return list(self._gpus)

    def sample(self) -> federation_pb2.Resources:
        """CPU percent since the last sample, RSS and memory percent of the daemon."""
        with self._proc.oneshot():
            cpu = self._proc.cpu_percent(interval=None)
            rss = self._proc.memory_info().rss
            mem = self._proc.memory_percent()
        return federation_pb2.Resources(
            cpu_percent=float(cpu), rss_bytes=int(rss), memory_percent=float(mem), gpus=self._gpus
        )
