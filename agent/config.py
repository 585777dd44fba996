"""The agent daemon's configuration (``agent.toml``), read once at start-up.

The site policy (``[policy]``, ``[policy.datasets.NAME]``, ``[datasets.NAME]``, ``[sandbox]``;
``agent.admission.site_policy``) is read from here too, unless ``policy = "policy.toml"`` names a
separate policy file: then those tables must be in that file only (in ``agent.toml`` they are
refused, naming the key), and SIGHUP reloads it without dropping the connection.

Every error is a ``ConfigError`` naming the dotted key (``tls.cert``, ``worker.device``), so
``confide-agent`` prints one line and exits 2. Unknown keys are refused (``Section.done``),
which catches typos before the daemon dials anyone. Paths are resolved against the config
file's folder; they are not opened here (``confide.pki.load_identity`` does that, naming the
file at fault).

::

    federation = "acme-health"
    policy = "policy.toml"   # optional; relative to this file; holds the tables marked (P)
    site = "site-1"               # optional; must match the certificate's name when set
    [aggregator]  address = "127.0.0.1:7443"   server_name = "aggregator"
    [tls]         ca = "pki/ca.crt"  cert = "pki/site-1.crt"  key = "pki/site-1.key"
                  signing_key = "pki/site-1.sign.key"  crl = "pki/crl.pem"   # the CA's CRL
    [state]       dir = "/var/lib/confide-agent"
    [api]         socket = "/run/confide-agent/agent.sock"   # default <state.dir>/agent.sock
    [worker]      device = "auto"   # auto | cpu | cuda | cuda:N
                  task_timeout_s = 3600
    [sandbox]     (P) allow_unsandboxed = false   # true: run workers unisolated where bwrap fails
                  memory_mb = 8192  cpu_seconds = 86400  processes = 512  open_files = 1024
                  threads = 0  tmp_mb = 1024  gpus = [0]   # GPU ids the worker may use
    [datasets.NAME]          (P) ...    # agent.data.declared.dataset_from_config reads the table
    [policy]      (P) trusted_signers = ["alice"]    # empty: any operator of the federation CA
                  allowed_models = ["logreg", "mlp"]    # built-in kinds (default: all)
                  allowed_bundles = ["<sha256 hex>"]    # or "trusted-signers"; default none
                  time_windows = ["Mon-Fri 20:00-06:00"]   # local time; default any time
                  max_round_attempts = 2   max_job_retries = 1   # caps on the job's (optional)
                  max_model_bytes = 536870912    # refuse jobs with larger models (default)
                  approval = "auto"   # manual: a local operator approves each job
                  approval_expires_s = 604800   # an unanswered request expires after this
                  trust_bundle_dp = false   # true: count a code bundle's DP-SGD
    [policy.datasets.NAME]   (P) max_epsilon = 8.0   min_update_noise = 0.5
    [log]         level = "info"   json = true   # json absent: JSON unless stderr is a TTY
    [metrics]     listen = "127.0.0.1:9465"   # optional: Prometheus endpoint (off by default)
                  allow_non_loopback = false   # true: listen may be beyond this host
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.admission.approvals import ApprovalMode
from agent.admission.site_policy import (
    POLICY_TABLES,
    AttemptCaps,
    DatasetPolicy,
    SandboxConfig,
    SitePolicy,
    load_policy,
    policy_from_section,
)
from confide.config import Section, load_toml
from confide.data.datasets import DatasetDescription
from confide.errors import ConfigError
from confide.metrics import MetricsConfig, metrics_config

__all__ = [
    "DEFAULT_AGGREGATOR",
    "DEFAULT_SERVER_NAME",
    "AgentConfig",
    "LogLevel",
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
        policy: the site policy in force at start (``agent.admission.site_policy``).
        policy_file: the ``policy.toml`` it came from (SIGHUP reloads it); None when the
            policy tables are in this file.
        log_level: minimum log level.
        log_json: JSON log lines (True), console (False), or by TTY (None).
        site: the site name the operator expects the certificate to carry (None: any).
        metrics: where the Prometheus endpoint listens; None: no endpoint (the default).
    """

    federation: str
    aggregator_address: str
    server_name: str
    tls: TlsFiles
    state_dir: Path
    api_socket: Path
    device: str = "auto"
    task_timeout_s: float = DEFAULT_TASK_TIMEOUT_S
    policy: SitePolicy = field(default_factory=SitePolicy)
    policy_file: Path | None = None
    log_level: LogLevel = LogLevel.INFO
    log_json: bool | None = None
    site: str | None = None
    metrics: MetricsConfig | None = None

    # The policy at start, under the names the daemon and its tests have always used.

    @property
    def sandbox(self) -> SandboxConfig:
        """``policy.sandbox``."""
        return self.policy.sandbox

    @property
    def datasets(self) -> Mapping[str, DatasetDescription]:
        """``policy.datasets``."""
        return self.policy.datasets

    @property
    def trusted_signers(self) -> tuple[str, ...]:
        """``policy.trusted_signers``."""
        return self.policy.trusted_signers

    @property
    def dataset_policies(self) -> Mapping[str, DatasetPolicy]:
        """``policy.dataset_policies``."""
        return self.policy.dataset_policies

    @property
    def attempt_caps(self) -> AttemptCaps:
        """``policy.attempt_caps``."""
        return self.policy.attempt_caps

    @property
    def max_model_bytes(self) -> int:
        """``policy.max_model_bytes``."""
        return self.policy.max_model_bytes

    @property
    def approval(self) -> ApprovalMode:
        """``policy.approval``."""
        return self.policy.approval

    @property
    def approval_expires_s(self) -> float:
        """``policy.approval_expires_s``."""
        return self.policy.approval_expires_s


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
    site: str | None = root.str("site", None)

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

    # `policy = "FILE"` names the policy file; a [policy] table keeps the policy here.
    policy_file: Path | None = None
    if isinstance(root.value("policy", None), str):
        policy_file = root.path("policy")
    if policy_file is None:
        policy = policy_from_section(root)
    else:
        for table in POLICY_TABLES:
            if table != "policy" and root.has(table):
                raise ConfigError(
                    table,
                    f"belongs in the policy file {policy_file} (agent.toml names one), "
                    "so the site's policy has one source",
                )
        policy = load_policy(policy_file)

    log = root.section("log")
    level: LogLevel = log.choice("level", LogLevel, LogLevel.INFO)
    log_json: bool | None = log.bool("json", None)
    log.done()

    metrics = metrics_config(root.section("metrics"))

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
        policy=policy,
        policy_file=policy_file,
        log_level=level,
        log_json=log_json,
        site=site,
        metrics=metrics,
    )
