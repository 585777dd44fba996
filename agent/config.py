"""The agent daemon's configuration (``agent.toml``), read once at start-up.

Every error is a ``ConfigError`` naming the dotted key (``tls.cert``, ``worker.device``), so
``confide-agent`` prints one line and exits 2. Unknown keys are refused (``Section.done``),
which catches typos before the daemon dials anyone. Paths are resolved against the config
file's folder; they are not opened here (``confide.pki.load_identity`` does that, naming the
file at fault).

::

    federation = "acme-health"
    [aggregator]  address = "127.0.0.1:7443"   server_name = "aggregator"
    [tls]         ca = "pki/ca.crt"  cert = "pki/site-1.crt"  key = "pki/site-1.key"
                  signing_key = "pki/site-1.sign.key"  crl = "pki/crl.pem"   # the CA's CRL
    [state]       dir = "/var/lib/confide-agent"
    [api]         socket = "/run/confide-agent/agent.sock"   # default <state.dir>/agent.sock
    [worker]      device = "auto"   # auto | cpu | cuda | cuda:N
                  task_timeout_s = 3600
    [sandbox]     allow_unsandboxed = false   # true: run workers unisolated where bwrap fails
                  memory_mb = 8192  cpu_seconds = 86400  processes = 512  open_files = 1024
                  threads = 0  tmp_mb = 1024  gpus = [0]   # GPU ids the worker may use
    [datasets.NAME]          ...    # agent.datasets.dataset_from_config reads the table
    [policy]      trusted_signers = ["alice"]    # empty: any operator of the federation CA
                  max_round_attempts = 2   max_job_retries = 1   # caps on the job's (optional)
                  max_model_bytes = 536870912    # refuse jobs with larger models (default)
                  approval = "auto"   # manual: a local operator approves each job
                  approval_expires_s = 604800   # an unanswered request expires after this
    [policy.datasets.NAME]   max_epsilon = 8.0   min_update_noise = 0.5
    [log]         level = "info"   json = true   # json absent: JSON unless stderr is a TTY
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.approvals import DEFAULT_EXPIRES_S, ApprovalMode
from agent.datasets import DatasetConfig, dataset_from_config
from agent.policy import DEFAULT_MAX_MODEL_BYTES
from agent.sandbox import Limits
from confide.config import Section, load_toml
from confide.errors import ConfigError

__all__ = [
    "DEFAULT_AGGREGATOR",
    "DEFAULT_SERVER_NAME",
    "AgentConfig",
    "AttemptCaps",
    "DatasetPolicy",
    "LogLevel",
    "SandboxConfig",
    "TlsFiles",
    "config_from_section",
    "load_config",
]

DEFAULT_AGGREGATOR = "127.0.0.1:7443"
DEFAULT_SERVER_NAME = "aggregator"
DEFAULT_TASK_TIMEOUT_S = 3600.0

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d{1,3})$")
_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
_MAX_SOCKET_PATH = 100
"""A unix socket path must fit ``sun_path`` (108 bytes on Linux, 104 on BSDs)."""


class LogLevel(enum.Enum):
    """Minimum level of emitted log events."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class TlsFiles:
    """Where the site's federation identity lives (loaded by ``confide.pki.load_identity``)."""

    ca: Path
    cert: Path
    key: Path
    signing_key: Path
    crl: Path | None = None


@dataclass(frozen=True)
class DatasetPolicy:
    """A data owner's limits for one dataset; the privacy ledger enforces them.

    Args:
        max_epsilon: total record-level epsilon the dataset may ever spend (None: not set
            here, the ledger's default cap of 10 applies; ``inf``: no cap, which is the only
            way a site accepts jobs without any privacy protection on this dataset).
        min_update_noise: the floor on the update-level noise multiplier z a job may ask for.
    """

    max_epsilon: float | None = None
    min_update_noise: float = 0.0


@dataclass(frozen=True)
class SandboxConfig:
    """How workers are isolated (``[sandbox]``; ``agent.sandbox`` builds it).

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
class AgentConfig:
    """Everything ``confide-agent`` reads from its config file.

    Args:
        federation: the federation name (the CA's O); every envelope is bound to it.
        aggregator_address: ``host:port`` the daemon dials (it never listens on the network).
        server_name: the aggregator's certificate name, checked instead of the dialled host.
        tls: the identity files.
        state_dir: the daemon's private state folder (ledger, audit, socket by default).
        api_socket: the local control API's unix socket.
        device: where the worker trains: auto, cpu, cuda or cuda:N.
        task_timeout_s: the longest one worker call may take before the worker is killed.
        sandbox: how workers are isolated and limited.
        datasets: the datasets this site exposes, by name.
        trusted_signers: operator names whose jobs are accepted; empty = any operator.
        dataset_policies: per-dataset privacy limits, by dataset name.
        attempt_caps: the site's caps on the attempts it pays for per round and per job.
        max_model_bytes: the largest job model the site accepts (and downloads).
        approval: whether a local operator approves each job (``agent.approvals``).
        approval_expires_s: how long an approval request waits for an answer.
        log_level: minimum log level.
        log_json: JSON log lines (True), console (False), or by TTY (None).
    """

    federation: str
    aggregator_address: str
    server_name: str
    tls: TlsFiles
    state_dir: Path
    api_socket: Path
    device: str = "auto"
    task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    datasets: Mapping[str, DatasetConfig] = field(default_factory=dict)
    trusted_signers: tuple[str, ...] = ()
    dataset_policies: Mapping[str, DatasetPolicy] = field(default_factory=dict)
    attempt_caps: AttemptCaps = field(default_factory=AttemptCaps)
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    approval: ApprovalMode = ApprovalMode.AUTO
    approval_expires_s: float = DEFAULT_EXPIRES_S
    log_level: LogLevel = LogLevel.INFO
    log_json: bool | None = None


def load_config(path: str | Path) -> AgentConfig:
    """Read and check ``agent.toml``.

    Args:
        path: the config file.

    Raises:
        ConfigError: the file is unreadable or invalid; names the dotted key at fault.
    """
    return config_from_section(load_toml(path))


def config_from_section(root: Section) -> AgentConfig:
    """Build an ``AgentConfig`` from a parsed root table.

    Raises:
        ConfigError: a key is missing, has the wrong type or value, or is unknown.
    """
    federation: str = root.str("federation")

    agg = root.section("aggregator")
    address: str = agg.str("address", DEFAULT_AGGREGATOR)
    if not _ADDRESS.match(address):
        raise ConfigError(agg.key("address"), f"must be host:port, got {address!r}")
    server_name: str = agg.str("server_name", DEFAULT_SERVER_NAME)
    agg.done()

    tls_s = root.section("tls", required=True)
    tls = TlsFiles(
        ca=tls_s.path("ca"),
        cert=tls_s.path("cert"),
        key=tls_s.path("key"),
        signing_key=tls_s.path("signing_key"),
        crl=tls_s.path("crl", None),
    )
    tls_s.done()

    state = root.section("state", required=True)
    state_dir: Path = state.path("dir")
    state.done()

    api = root.section("api")
    api_socket: Path = api.path("socket", state_dir / "agent.sock")
    if len(str(api_socket)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            api.key("socket"), f"unix socket paths must be at most {_MAX_SOCKET_PATH} characters"
        )
    api.done()

    worker = root.section("worker")
    device: str = worker.str("device", "auto")
    if not _DEVICE.match(device):
        raise ConfigError(
            worker.key("device"), f"must be auto, cpu, cuda or cuda:N; got {device!r}"
        )
    task_timeout_s: float = worker.float(
        "task_timeout_s", DEFAULT_TASK_TIMEOUT_S, min=0.0, min_exclusive=True
    )
    worker.done()

    sandbox = _sandbox(root.section("sandbox"))

    ds_root = root.section("datasets")
    datasets: dict[str, DatasetConfig] = {}
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
    pol_ds = policy.section("datasets")
    policies = {name: _dataset_policy(table) for name, table in pol_ds.tables().items()}
    for name in policies:
        if name not in datasets:
            raise ConfigError(pol_ds.key(name), f"no [datasets.{name}] table exposes this dataset")
    pol_ds.done()
    policy.done()

    log = root.section("log")
    level: LogLevel = log.choice("level", LogLevel, LogLevel.INFO)
    log_json: bool | None = log.bool("json", None)
    log.done()

    root.done()
    return AgentConfig(
        federation=federation,
        aggregator_address=address,
        server_name=server_name,
        tls=tls,
        state_dir=state_dir,
        api_socket=api_socket,
        device=device,
        task_timeout_s=task_timeout_s,
        sandbox=sandbox,
        datasets=datasets,
        trusted_signers=tuple(trusted),
        dataset_policies=policies,
        attempt_caps=caps,
        max_model_bytes=max_model_bytes,
        approval=approval,
        approval_expires_s=expires_s,
        log_level=level,
        log_json=log_json,
    )


def _dataset_policy(table: Section) -> DatasetPolicy:
    max_eps: float | None
    if table.value("max_epsilon", None) == math.inf:
        max_eps = math.inf  # the site explicitly accepts jobs without privacy on this dataset
    else:
        max_eps = table.float("max_epsilon", None, min=0.0, min_exclusive=True)
    min_noise: float = table.float("min_update_noise", 0.0, min=0.0)
    table.done()
    return DatasetPolicy(max_epsilon=max_eps, min_update_noise=min_noise)


def _sandbox(table: Section) -> SandboxConfig:
    mib = 1024 * 1024
    defaults = Limits()
    memory_mb: int | None = table.int("memory_mb", None, min=64)
    cpu_seconds: int | None = table.int("cpu_seconds", None, min=1)
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
        ),
        gpus=tuple(sorted(set(gpus))),
    )
    table.done()
    return config
