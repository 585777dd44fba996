"""The site's self-check: identity, every exposed dataset, and the training runtime.

Without it a site with a missing dataset file, a missing column, a non-numeric label or no
torch starts, connects, reports healthy, and fails only when a job arrives. The daemon runs
these checks at start (and ``confide-agent check`` runs them on demand):

- the certificate is a ``site`` certificate of the configured federation, naming the
  configured ``site`` when one is set (``check_identity``);
- each dataset loads with the same rules the worker uses (``confide.data.datasets.load_arrays``:
  file, columns, numbers, whole class indices, NaN), so a broken one is known, logged,
  shown in ``confide-agent status``, reported to the aggregator at register and refused at
  a task's admission with its public reason; ``DatasetBook`` re-checks a dataset whose file
  changed since (a fixed file is usable again without a restart);
- the worker's runtime (torch, Opacus) is installed (``runtime_problem``: a module lookup,
  no import, so the daemon still never imports torch); ``probe_runtime`` goes further and
  imports it in a child process, as the worker would.

Loading a dataset reads it whole into memory once, transiently, in the daemon: the check is
exactly the worker's, at the cost of that peak at start.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.workers.handle import WORKER_PACKAGE, worker_package_dir
from confide.data.datasets import DatasetDescription, load_arrays
from confide.disclose import public_detail
from confide.errors import ConfideError, ConfigError, InternalError, Reason
from confide.pki import CertInfo, Role

__all__ = [
    "INSTALL_HINT",
    "RUNTIME_MODULES",
    "DatasetBook",
    "DatasetHealth",
    "check_dataset",
    "check_identity",
    "probe_runtime",
    "runtime_problem",
]

RUNTIME_MODULES = ("torch", "opacus", WORKER_PACKAGE)
"""What the worker imports to train a built-in model (and the worker runtime itself)."""

INSTALL_HINT = "pip install -c constraints.txt 'confide[agent]' (README: Install)"

_PROBE = (
    "import json, torch, opacus, confide_worker.training.job\n"
    "print(json.dumps({'torch': torch.__version__, 'opacus': opacus.__version__,"
    " 'cuda': torch.cuda.is_available(), 'devices': torch.cuda.device_count()}))"
)


@dataclass(frozen=True)
class DatasetHealth:
    """What the check found for one dataset.

    Args:
        name: the dataset name.
        error: why it is unusable (None: usable); its ``public`` text goes to the aggregator.
        records: records it holds (training and hold-out), when usable.
        stamp: the file's (mtime ns, size, inode) when checked, to notice a change.
    """

    name: str
    error: ConfideError | None
    records: int = 0
    stamp: tuple[int, int, int] | None = None

    @property
    def usable(self) -> bool:
        """Whether jobs may use the dataset."""
        return self.error is None

    @property
    def reason(self) -> str:
        """The Reason value of the problem ("" when usable)."""
        return self.error.reason.value if self.error is not None else ""

    @property
    def detail(self) -> str:
        """The problem as one line that quotes no data ("" when usable)."""
        if self.error is None:
            return ""
        return public_detail(self.error, fallback=f"dataset {self.name!r} is unusable")


def check_identity(
    info: CertInfo, *, federation: str, site: str | None, cert_key: str = "tls.cert"
) -> None:
    """Refuse an identity that cannot be this site's: wrong role, federation or name.

    Raises:
        ConfigError: naming the config key, in one line.
    """
    if info.role is not Role.SITE:
        raise ConfigError(
            cert_key,
            f"certificate of {info.name!r} has role {info.role.value!r}; an agent needs a "
            "site certificate (confide-agent enroll, then confide pki sign --role site)",
        )
    if info.federation != federation:
        raise ConfigError(
            "federation",
            f"is {federation!r} but the certificate {info.name!r} is of federation "
            f"{info.federation!r}",
        )
    if site is not None and info.name != site:
        raise ConfigError(
            "site",
            f"is {site!r} but {cert_key} names site {info.name!r}: is it another site's "
            "certificate?",
        )


def check_dataset(cfg: DatasetDescription) -> DatasetHealth:
    """Load the dataset as the worker would and say whether jobs can use it."""
    stamp = _stamp_or_none(cfg.path)  # before reading: a change while it reads is noticed
    try:
        data = load_arrays(cfg)
    except ConfideError as exc:
        return DatasetHealth(cfg.name, exc, stamp=stamp)
    except (OSError, ValueError, MemoryError) as exc:
        err = InternalError(
            f"dataset {cfg.name!r}: cannot read {cfg.path}: {exc}",
            reason=Reason.UNAVAILABLE,
            public=f"dataset {cfg.name!r}: its file cannot be read",
        )
        return DatasetHealth(cfg.name, err, stamp=stamp)
    if data.y_train.size == 0:
        err = InternalError(
            f"dataset {cfg.name!r}: no training records after holding out {cfg.holdout_fraction:g}",
            reason=Reason.UNAVAILABLE,
            public=True,
        )
        return DatasetHealth(cfg.name, err, stamp=stamp)
    return DatasetHealth(cfg.name, None, data.y_train.size + data.y_holdout.size, stamp)


class DatasetBook:
    """The health of every exposed dataset; re-checks one whose file changed.

    Args:
        datasets: the exposed datasets by name.
        checked: their health from the start-up check.
    """

    def __init__(
        self, datasets: Mapping[str, DatasetDescription], checked: Iterable[DatasetHealth]
    ) -> None:
        self._datasets = dict(datasets)
        self._health = {h.name: h for h in checked}
        self._lock = threading.Lock()

    @classmethod
    def check(cls, datasets: Mapping[str, DatasetDescription]) -> DatasetBook:
        """Check every dataset now."""
        return cls(datasets, [check_dataset(cfg) for cfg in datasets.values()])

    def all(self) -> list[DatasetHealth]:
        """Every dataset's latest health, by name."""
        with self._lock:
            return [self._health[n] for n in sorted(self._health)]

    def usable(self) -> list[str]:
        """The names of the usable datasets."""
        return [h.name for h in self.all() if h.usable]

    def unusable_names(self) -> set[str]:
        """The names of the datasets found unusable at their latest check."""
        return {h.name for h in self.all() if not h.usable}

    def require(self, cfg: DatasetDescription) -> None:
        """Refuse a task on a dataset that is unusable now (re-checked if its file changed).

        Raises:
            ConfideError: the dataset's problem, with its public one-line detail.
        """
        with self._lock:
            health = self._health.get(cfg.name)
        if health is None or health.stamp != _stamp_or_none(cfg.path):
            health = check_dataset(cfg)
            with self._lock:
                self._health[cfg.name] = health
        if health.error is not None:
            raise health.error


def runtime_problem() -> str | None:
    """Why the worker cannot train here (a runtime module is not installed), or None.

    Looks the modules up without importing them: the daemon never imports torch.
    """
    missing = [m for m in RUNTIME_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (
        f"the training runtime is not installed (no module {', '.join(missing)}); "
        f"install it with: {INSTALL_HINT}"
    )


def probe_runtime(*, timeout: float = 300.0) -> dict[str, object]:
    """Import the worker's runtime in a child process, as a worker would, and report it.

    Returns:
        ``torch`` and ``opacus`` versions, whether CUDA is available and how many CUDA
        devices the runtime sees (``devices``; ``confide-agent doctor`` checks the GPUs the
        config asks for against it).

    Raises:
        InternalError: WORKER_FAILED, with the child's last line of error output.
    """
    try:
        env = {**os.environ, "PYTHONPATH": str(worker_package_dir().parent)}
        done = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InternalError(
            f"the worker runtime did not start: {exc}", reason=Reason.WORKER_FAILED
        ) from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise InternalError(
            f"the worker runtime does not start: {last}", reason=Reason.WORKER_FAILED
        )
    try:
        report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        raise InternalError(
            "the worker runtime answered nothing readable", reason=Reason.WORKER_FAILED
        ) from exc
    return report


def _stamp_or_none(path: Path) -> tuple[int, int, int] | None:
    """What tells a changed file: (mtime ns, size, inode); None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
