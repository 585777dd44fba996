"""The site's policy as one immutable value, its parsing, and its one owner (reload on SIGHUP).

The policy says which jobs a site runs: trusted job signers, allowed built-in models and code
bundles, the exposed datasets with their schemas and privacy caps, worker resource limits and
GPU ids, the time windows when training may run, and whether a local operator approves each
job. It lives either in ``agent.toml`` (the tables below) or, when ``agent.toml`` says
``policy = "policy.toml"``, in that file alone: the data owner's file, reloadable without a
restart. ``policy.toml`` holds the same tables::

    [policy]      trusted_signers = ["alice"]   # empty: any operator of the federation CA
                  allowed_models = ["logreg", "mlp"]   # built-in kinds; absent: all
                  allowed_bundles = ["<sha256 hex>", "trusted-signers"]   # code bundles
                  time_windows = ["Mon-Fri 20:00-06:00", "Sat,Sun 00:00-24:00"]  # local time
                  max_round_attempts = 2   max_job_retries = 1   max_model_bytes = 536870912
                  approval = "auto"   approval_expires_s = 604800
                  trust_bundle_dp = false   # count a code bundle's DP-SGD (see below)
    [policy.datasets.NAME]   max_epsilon = 8.0   min_update_noise = 0.5
                             max_evaluations = 50   exact_evaluation = false   # per job
    [datasets.NAME]          ...   # agent.data.declared.dataset_from_config reads the table
    [sandbox]     allow_unsandboxed = false  memory_mb = 8192  cpu_seconds = 86400
                  processes = 512  open_files = 1024  threads = 0  tmp_mb = 1024  gpus = [0]
                  wall_seconds = 3600   output_mb = 64

``trust_bundle_dp``: a code bundle's record-level DP-SGD runs in the worker next to the
job's own code, which could skip the per-record clipping and noise; by default the site counts
only the update-level layer the daemon applies itself for such jobs (``agent.privacy.counted``).
``true`` counts the bundle's DP-SGD as for a built-in model; set it only after reviewing the
code of every bundle the site allows.

``PolicyHolder`` owns the policy in force. Readers take ``current()`` once per task, so a
task runs under one policy from admission to its answer; ``reload()`` parses and checks the
file and swaps the whole value at once, or keeps the old one and says which key is wrong.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.admission.approvals import DEFAULT_EXPIRES_S, ApprovalMode
from agent.admission.rules import ANY_TRUSTED_BUNDLE, DEFAULT_MAX_MODEL_BYTES
from agent.admission.timewindows import TimeWindow, parse_window
from agent.data.declared import dataset_from_config
from agent.workers.sandbox import Limits
from confide.config import Section, load_toml
from confide.data.datasets import DatasetDescription
from confide.errors import ConfigError
from confide.v1 import common_pb2

__all__ = [
    "ANY_TRUSTED_BUNDLE",
    "DEFAULT_MAX_EVALUATIONS",
    "MODEL_NAMES",
    "AttemptCaps",
    "DatasetPolicy",
    "PolicyHolder",
    "SandboxConfig",
    "SitePolicy",
    "load_policy",
    "model_name",
    "policy_from_section",
]

_PREFIX = "MODEL_KIND_"
MODEL_NAMES = frozenset(
    name.removeprefix(_PREFIX).lower()
    for name, _ in common_pb2.ModelKind.items()
    if name != "MODEL_KIND_UNSPECIFIED"
)
"""The built-in model kinds ``allowed_models`` may list (``logreg``, ``mlp``, ...)."""

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

DEFAULT_MAX_EVALUATIONS = 50
"""A dataset policy's cap on the distinct models of one job it evaluates, unless it says."""
POLICY_TABLES = ("policy", "datasets", "sandbox")
"""The tables of ``agent.toml`` that move to ``policy.toml`` when it names one."""


def model_name(model: common_pb2.ModelSpec) -> str:
    """The ``allowed_models`` name of a job's built-in model kind (``logreg``)."""
    return common_pb2.ModelKind.Name(model.kind).removeprefix(_PREFIX).lower()


@dataclass(frozen=True)
class DatasetPolicy:
    """A data owner's limits for one dataset; the privacy ledger enforces them.

    Args:
        max_epsilon: total record-level epsilon the dataset may ever spend (None: not set
            here, the ledger's default cap of 10 applies; ``inf``: no cap, which is the only
            way a site accepts jobs without any privacy protection on this dataset).
        min_update_noise: the floor on the update-level noise multiplier z a job may ask for.
        max_evaluations: the most distinct models of one job this site evaluates on the
            dataset's hold-out (the job's signed ``evaluation.max_evaluations`` is capped to it).
        exact_evaluation: whether a job may have exact hold-out figures (no noise, outside the
            ledger); otherwise each evaluation is noised and charged (``agent.tasks.evaluation``).
    """

    max_epsilon: float | None = None
    min_update_noise: float = 0.0
    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    exact_evaluation: bool = False


@dataclass(frozen=True)
class SandboxConfig:
    """How workers are isolated (``[sandbox]``; ``agent.workers.sandbox`` builds it).

    Args:
        allow_unsandboxed: where this host cannot build the sandbox (no bubblewrap, user
            namespaces disabled), run workers without it instead of refusing every task.
        limits: resource limits per worker.
        gpus: GPU ids whose device nodes a worker may use; empty for none.
    """

    allow_unsandboxed: bool = False
    limits: Limits = field(default_factory=Limits)
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class AttemptCaps:
    """The most TRAIN attempts this site pays for in any job, whatever the job allows.

    Each is min'ed with the signed job's own limit (``confide.jobspec.attempt_limits``);
    None leaves the job's limit as it is.

    Args:
        max_round_attempts: attempts of one round (>= 1).
        max_job_retries: attempts beyond one per round over a whole job (>= 0).
    """

    max_round_attempts: int | None = None
    max_job_retries: int | None = None


@dataclass(frozen=True)
class SitePolicy:
    """Everything the site decides about which jobs it runs and how (one immutable value).

    Args:
        trusted_signers: operator names whose jobs are accepted; empty = any operator.
        datasets: the datasets this site exposes, by name, with their schemas.
        dataset_policies: per-dataset privacy limits, by dataset name.
        attempt_caps: the site's caps on the attempts it pays for per round and per job.
        max_model_bytes: the largest job model the site accepts (and downloads).
        approval: whether a local operator approves each job (``agent.admission.approvals``).
        approval_expires_s: how long an approval request waits for an answer.
        sandbox: worker isolation, resource limits and GPU ids (workers started after a
            reload get the new ones; running workers keep theirs).
        allowed_models: built-in model kinds jobs may use; None = every kind.
        allowed_bundles: code bundles (hex SHA-256) jobs may name; ``ANY_TRUSTED_BUNDLE``
            admits any bundle of a job signed by a trusted signer; empty = no bundle.
        time_windows: when training may run (local time); empty = any time.
        trust_bundle_dp: count the record-level DP-SGD of code-bundle jobs (it runs in
            the job's code); False counts only their update-level layer.
    """

    trusted_signers: tuple[str, ...] = ()
    datasets: Mapping[str, DatasetDescription] = field(default_factory=dict)
    dataset_policies: Mapping[str, DatasetPolicy] = field(default_factory=dict)
    attempt_caps: AttemptCaps = field(default_factory=AttemptCaps)
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    approval: ApprovalMode = ApprovalMode.AUTO
    approval_expires_s: float = DEFAULT_EXPIRES_S
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    allowed_models: frozenset[str] | None = None
    allowed_bundles: frozenset[str] = frozenset()
    time_windows: tuple[TimeWindow, ...] = ()
    trust_bundle_dp: bool = False


def load_policy(path: str | Path) -> SitePolicy:
    """Read and check a ``policy.toml``; unknown tables and keys are refused.

    Raises:
        ConfigError: the file is unreadable or invalid; names the dotted key at fault and
            the file.
    """
    try:
        root = load_toml(path)
        policy = policy_from_section(root)
        root.done()
    except ConfigError as exc:
        if exc.key == str(path):
            raise
        raise ConfigError(exc.key, f"{exc.problem} (in {path})", reason=exc.reason) from exc
    return policy


def policy_from_section(root: Section) -> SitePolicy:
    """Read the policy tables (``[policy]``, ``[datasets]``, ``[sandbox]``) of ``root``.

    The caller calls ``root.done()`` (``agent.toml`` has other tables too).

    Raises:
        ConfigError: a key is missing, has the wrong type or value, or is unknown.
    """
    sandbox = _sandbox(root.section("sandbox"))

    ds_root = root.section("datasets")
    datasets: dict[str, DatasetDescription] = {}
    for name, table in ds_root.tables().items():
        datasets[name] = dataset_from_config(name, table)
    ds_root.done()

    policy = root.section("policy")
    trusted: list[str] = policy.str_list("trusted_signers", [])
    if any(not s.strip() for s in trusted):
        raise ConfigError(policy.key("trusted_signers"), "names must not be empty")
    caps = AttemptCaps(
        max_round_attempts=policy.int("max_round_attempts", None, min=1),
        max_job_retries=policy.int("max_job_retries", None, min=0),
    )
    max_model_bytes: int = policy.int("max_model_bytes", DEFAULT_MAX_MODEL_BYTES, min=1)
    approval: ApprovalMode = policy.choice("approval", ApprovalMode, ApprovalMode.AUTO)
    expires_s: float = policy.float(
        "approval_expires_s", DEFAULT_EXPIRES_S, min=0.0, min_exclusive=True
    )
    if not math.isfinite(expires_s):
        raise ConfigError(policy.key("approval_expires_s"), "must be a finite number of seconds")
    allowed_models = _allowed_models(policy)
    allowed_bundles = _allowed_bundles(policy)
    windows = _time_windows(policy)
    trust_bundle_dp: bool = policy.bool("trust_bundle_dp", False)
    pol_ds = policy.section("datasets")
    policies = {name: _dataset_policy(table) for name, table in pol_ds.tables().items()}
    for name in policies:
        if name not in datasets:
            raise ConfigError(pol_ds.key(name), f"no [datasets.{name}] table exposes this dataset")
    pol_ds.done()
    policy.done()
    return SitePolicy(
        trusted_signers=tuple(trusted),
        datasets=datasets,
        dataset_policies=policies,
        attempt_caps=caps,
        max_model_bytes=max_model_bytes,
        approval=approval,
        approval_expires_s=expires_s,
        sandbox=sandbox,
        allowed_models=allowed_models,
        allowed_bundles=allowed_bundles,
        time_windows=windows,
        trust_bundle_dp=trust_bundle_dp,
    )


def _allowed_models(policy: Section) -> frozenset[str] | None:
    names: list[str] | None = policy.str_list("allowed_models", None)
    if names is None:
        return None
    unknown = sorted(set(names) - MODEL_NAMES)
    if unknown:
        raise ConfigError(
            policy.key("allowed_models"),
            f"unknown model kind(s) {', '.join(unknown)}; built-in: "
            f"{', '.join(sorted(MODEL_NAMES))}",
        )
    return frozenset(names)


def _allowed_bundles(policy: Section) -> frozenset[str]:
    entries: list[str] = policy.str_list("allowed_bundles", [])
    for e in entries:
        if e != ANY_TRUSTED_BUNDLE and not _SHA256_HEX.match(e):
            raise ConfigError(
                policy.key("allowed_bundles"),
                f"{e!r} is neither a lowercase hex SHA-256 nor {ANY_TRUSTED_BUNDLE!r}",
            )
    return frozenset(entries)


def _time_windows(policy: Section) -> tuple[TimeWindow, ...]:
    texts: list[str] = policy.str_list("time_windows", [])
    try:
        return tuple(parse_window(t) for t in texts)
    except ValueError as exc:
        raise ConfigError(policy.key("time_windows"), str(exc)) from exc


def _dataset_policy(table: Section) -> DatasetPolicy:
    max_eps: float | None
    if table.value("max_epsilon", None) == math.inf:
        max_eps = math.inf  # the site explicitly accepts jobs without privacy on this dataset
    else:
        max_eps = table.float("max_epsilon", None, min=0.0, min_exclusive=True)
    min_noise: float = table.float("min_update_noise", 0.0, min=0.0)
    max_evals: int = table.int("max_evaluations", DEFAULT_MAX_EVALUATIONS, min=0, max=2**32 - 1)
    exact: bool = table.bool("exact_evaluation", False)
    table.done()
    return DatasetPolicy(
        max_epsilon=max_eps,
        min_update_noise=min_noise,
        max_evaluations=max_evals,
        exact_evaluation=exact,
    )


def _sandbox(table: Section) -> SandboxConfig:
    mib = 1024 * 1024
    defaults = Limits()
    memory_mb: int | None = table.int("memory_mb", None, min=64)
    cpu_seconds: int | None = table.int("cpu_seconds", None, min=1)
    wall_seconds: float | None = table.float("wall_seconds", None, min=1.0)
    gpus: list[int] = table.value("gpus", [])
    if not isinstance(gpus, list) or any(
        isinstance(g, bool) or not isinstance(g, int) or g < 0 for g in gpus
    ):
        raise ConfigError(table.key("gpus"), "must be a list of GPU ids (integers >= 0)")
    config = SandboxConfig(
        allow_unsandboxed=table.bool("allow_unsandboxed", False),
        limits=Limits(
            memory_bytes=None if memory_mb is None else memory_mb * mib,
            cpu_seconds=cpu_seconds,
            open_files=table.int("open_files", defaults.open_files, min=16),
            processes=table.int("processes", defaults.processes, min=8),
            file_bytes=table.int("file_mb", defaults.file_bytes // mib, min=1) * mib,
            tmp_bytes=table.int("tmp_mb", defaults.tmp_bytes // mib, min=1) * mib,
            threads=table.int("threads", defaults.threads, min=0),
            wall_seconds=wall_seconds,
            output_bytes=table.int("output_mb", defaults.output_bytes // mib, min=1) * mib,
        ),
        gpus=tuple(sorted(set(gpus))),
    )
    table.done()
    return config


class PolicyHolder:
    """The one owner of the policy in force; ``reload`` swaps it whole or not at all.

    Args:
        policy: the policy read at start.
        path: the ``policy.toml`` it came from; None when it came from ``agent.toml``
            (then there is nothing to reload).
    """

    def __init__(self, policy: SitePolicy, *, path: Path | None = None) -> None:
        self._policy = policy
        self._path = path
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The reloadable file, or None."""
        return self._path

    def current(self) -> SitePolicy:
        """The policy in force now (a snapshot: later reloads do not change it)."""
        with self._lock:
            return self._policy

    def reload(self) -> SitePolicy:
        """Read the file again and put it in force if it is valid.

        Raises:
            ConfigError: there is no file to reload, or it is invalid (naming the key); the
                old policy stays in force.
        """
        if self._path is None:
            raise ConfigError("policy", "agent.toml names no policy file to reload")
        new = load_policy(self._path)
        with self._lock:
            self._policy = new
        return new
