"""Start and drive a real federation of OS processes on 127.0.0.1 over mutual TLS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from confide import pki
from confide.cli.operator import OperatorConfig, connect, load_operator_config
from confide.errors import InternalError
from confide.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from confide.wire.envelope import seal
from confide_dev.localfed.data import DatasetFiles

__all__ = ["LocalFederation", "SiteSetup", "partition_site", "toml_text"]

# How each daemon is started: ``sys.executable`` followed by these arguments.
_AGGREGATOR = ("-c", "import sys; from aggregator.main import main; sys.exit(main(sys.argv[1:]))")
_AGENT = ("-c", "import sys; from agent.main import main; sys.exit(main(sys.argv[1:]))")
_FAULTY_AGENT = ("-m", "confide_dev.faulty_agent")
_TERMINAL = (admin_pb2.JOB_STATE_DONE, admin_pb2.JOB_STATE_FAILED, admin_pb2.JOB_STATE_CANCELLED)


@dataclass
class SiteSetup:
    """One site: its name, the dataset tables of its agent.toml, and its policy."""

    name: str
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    worker: dict[str, Any] = field(default_factory=lambda: {"device": "cpu"})


def partition_site(
    data: DatasetFiles,
    index: int,
    name: str,
    *,
    max_epsilon: float,
    exact_evaluation: bool = False,
    holdout_fraction: float = 0.25,
    trusted_signers: Sequence[str] = ("operator",),
) -> SiteSetup:
    """A site exposing partition ``index`` of ``data`` under its schema, with a budget cap.

    Args:
        max_epsilon: the dataset's record-level cap; ``inf`` accepts non-private jobs.
        exact_evaluation: whether the site's policy gives exact hold-out figures (no noise,
            outside the ledger) to jobs that ask for them.
    """
    table = {
        "path": str(data.paths[index]),
        "features": data.features,
        "label": data.label,
        "holdout_fraction": holdout_fraction,
    }
    return SiteSetup(
        name=name,
        datasets={data.name: table},
        policy={
            "trusted_signers": list(trusted_signers),
            "datasets": {
                data.name: {"max_epsilon": max_epsilon, "exact_evaluation": exact_evaluation}
            },
        },
    )


def toml_text(data: Mapping[str, Any]) -> str:
    """Render nested dicts of str/int/float/bool/list as TOML (enough for our configs)."""
    lines: list[str] = []
    _emit(data, [], lines)
    return "\n".join(lines) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {type(v).__name__} as TOML")


def _emit(data: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    for k, v in data.items():
        if not isinstance(v, Mapping):
            lines.append(f"{k} = {_value(v)}")
    for k, v in tables.items():
        lines.append("")
        lines.append(f"[{'.'.join([*path, k])}]")
        _emit(v, [*path, k], lines)


class LocalFederation:
    """A CA, one aggregator and N agents as processes under ``root``; stop() ends them all.

    Args:
        root: a scratch folder (the caller removes it).
        federation: the federation's name.
        env: extra environment for the daemons.
        log_json: the daemons' ``[log] json``; None leaves it out, so they choose (JSON, as
            their output goes to a file, not a terminal).
    """

    def __init__(
        self,
        root: Path,
        *,
        federation: str = "demo",
        log_level: str = "info",
        env: Mapping[str, str] | None = None,
        log_json: bool | None = True,
    ) -> None:
        self.root = root
        self.federation = federation
        self.log_level = log_level
        self._log: dict[str, Any] = {"level": log_level}
        if log_json is not None:
            self._log["json"] = log_json
        self.ca_dir = root / "ca"
        self.aggregator_dir = root / "aggregator"
        self.address = ""
        self.aggregator: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.site_dirs: dict[str, Path] = {}
        self._env = {**os.environ, **(env or {})}
        self._operator: OperatorConfig | None = None
        self._channel: grpc.Channel | None = None
        self._stub: admin_pb2_grpc.AdminStub | None = None

    # ----- PKI -----

    def make_pki(self, sites: list[str]) -> None:
        """Make the CA, the aggregator and operator identities, and each site's via its CSR."""
        pki.init_ca(self.ca_dir, federation=self.federation)
        pki.issue(
            self.ca_dir,
            "aggregator",
            role=pki.Role.AGGREGATOR,
            dns=["localhost"],
            ips=["127.0.0.1"],
        )
        pki.issue(self.ca_dir, "operator", role=pki.Role.OPERATOR)
        for name in sites:
            d = self.root / name
            d.mkdir(parents=True, exist_ok=True)
            csr = pki.make_key_and_csr(d, name, role=pki.Role.SITE)
            cert = pki.sign_csr(self.ca_dir, csr.read_bytes(), role=pki.Role.SITE)
            (d / f"{name}.crt").write_bytes(cert)
            self.site_dirs[name] = d
        self._write_operator_config()

    def _tls(self, d: Path, name: str) -> dict[str, str]:
        return {
            "ca": str(self.ca_dir / "ca.crt"),
            "cert": str(d / f"{name}.crt"),
            "key": str(d / f"{name}.key"),
            "signing_key": str(d / f"{name}.sign.key"),
            # Revocation is on in every config written here: `confide pki revoke` updates
            # this file and each daemon re-reads it.
            "crl": str(self.ca_dir / "crl.pem"),
        }

    def _write_operator_config(self) -> None:
        cfg = {
            "federation": self.federation,
            "aggregator": {"address": self.address or "127.0.0.1:0", "server_name": "aggregator"},
            "tls": self._tls(self.ca_dir, "operator"),
        }
        self.operator_config = self.root / "operator.toml"
        self.operator_config.write_text(toml_text(cfg))

    # ----- processes -----

    def _spawn(
        self,
        command: Sequence[str],
        config: Path,
        log: Path,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, *command, "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**self._env, **(env or {})},
                cwd=self.root,
            )

    def start_aggregator(
        self,
        *,
        timeout: float = 60.0,
        extra: Mapping[str, Any] | None = None,
        listen: str = "127.0.0.1:0",
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Start the aggregator and return its address.

        Args:
            listen: where to listen; the default picks a free loopback port. A restart passes
                the previous address so running agents find it again.
            env: extra environment for the aggregator (e.g. a test's NOTIFY_SOCKET).
        """
        d = self.aggregator_dir
        d.mkdir(parents=True, exist_ok=True)
        state = d / "state"
        cfg: dict[str, Any] = {
            "federation": self.federation,
            "server": {"listen": listen},
            "tls": self._tls(self.ca_dir, "aggregator"),
            "state": {"dir": str(state)},
            "log": dict(self._log),
        }
        for k, v in (extra or {}).items():
            cfg[k] = {**cfg.get(k, {}), **v}
        (d / "aggregator.toml").write_text(toml_text(cfg))
        addr_file = state / "address"
        addr_file.unlink(missing_ok=True)
        self.aggregator = self._spawn(_AGGREGATOR, d / "aggregator.toml", d / "aggregator.log", env)
        self._wait(
            lambda: addr_file.exists() and addr_file.read_text().strip() != "",
            timeout,
            "the aggregator to listen",
            self.aggregator,
            d / "aggregator.log",
        )
        self.address = addr_file.read_text().strip()
        self._write_operator_config()
        return self.address

    def start_agent(
        self,
        site: SiteSetup,
        *,
        ca: Path | None = None,
        env: Mapping[str, str] | None = None,
        policy_file: bool = False,
        extra: Mapping[str, Any] | None = None,
        kill_on: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one site's agent with its datasets and policy.

        Args:
            ca: the CA certificate the site trusts (default: the federation's); its CRL is
                the ``crl.pem`` next to it.
            env: extra environment for this agent only (e.g. a test's NOTIFY_SOCKET).
            policy_file: write the datasets, policy and sandbox tables to ``policy.toml``
                (which agent.toml names; SIGHUP reloads it) instead of agent.toml.
            extra: more agent.toml tables (e.g. ``{"metrics": {"listen": ...}}``).
            kill_on: ``TASK_KIND_NAME:ROUND``: run ``confide_dev.faulty_agent`` instead, which
                SIGKILLs itself on receiving that task.
        """
        d = self.site_dirs[site.name]
        tls = self._tls(d, site.name)
        if ca is not None:
            tls["ca"] = str(ca)
            tls["crl"] = str(ca.parent / "crl.pem")  # a CRL is its own CA's (pki init made it)
        cfg: dict[str, Any] = {
            "federation": self.federation,
            "aggregator": {"address": self.address, "server_name": "aggregator"},
            "tls": tls,
            "state": {"dir": str(d / "state")},
            "api": {"socket": str(d / "agent.sock")},
            "worker": site.worker,
            # Workers run in bubblewrap where it is installed; a machine without it still
            # runs the local federation, unisolated (the agent logs sandbox_unavailable).
            "sandbox": {"allow_unsandboxed": shutil.which("bwrap") is None},
            "datasets": site.datasets,
            "policy": site.policy,
            "log": dict(self._log),
            **(extra or {}),
        }
        if policy_file:
            tables = {k: cfg.pop(k) for k in ("sandbox", "datasets", "policy")}
            (d / "policy.toml").write_text(toml_text(tables))
            cfg = {"policy": "policy.toml", **cfg}
        (d / "agent.toml").write_text(toml_text(cfg))
        command = _AGENT if kill_on is None else (*_FAULTY_AGENT, "--kill-on", kill_on)
        proc = self._spawn(command, d / "agent.toml", d / "agent.log", env)
        self.agents[site.name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a process's log ("aggregator" or a site name)."""
        path = (
            (self.aggregator_dir / "aggregator.log")
            if name == "aggregator"
            else (self.site_dirs[name] / "agent.log")
        )
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_for(self, cond: Callable[[], bool], *, timeout: float, what: str) -> None:
        """Wait until ``cond()`` holds, failing early if the aggregator exits."""
        self._wait(cond, timeout, what, self.aggregator, self.aggregator_dir / "aggregator.log")

    @staticmethod
    def _wait(
        cond: Callable[[], bool],
        timeout: float,
        what: str,
        proc: subprocess.Popen[bytes] | None = None,
        log: Path | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log else ""
                raise InternalError(
                    f"process exited with {proc.returncode} while waiting for {what}:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise InternalError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.05)

    # ----- operator -----

    def admin(self) -> admin_pb2_grpc.AdminStub:
        """An Admin stub authenticated as the federation's operator."""
        if self._stub is None:
            self._operator = load_operator_config(self.operator_config)
            self._channel, self._stub = connect(self._operator)
        return self._stub

    def close_admin(self) -> None:
        """Close the operator's channel (e.g. before restarting the aggregator)."""
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def wait_for_sites(self, n: int, *, timeout: float = 120.0) -> None:
        """Wait until at least ``n`` sites are connected."""
        stub = self.admin()

        def connected() -> bool:
            sites = stub.ListSites(admin_pb2.ListSitesRequest(), timeout=10)
            return sum(1 for s in sites.sites if s.connected) >= n

        self._wait(
            connected,
            timeout,
            f"{n} connected sites",
            self.aggregator,
            self.aggregator_dir / "aggregator.log",
        )

    def submit(self, spec: common_pb2.JobSpec) -> str:
        """Sign a job as the operator and submit it; returns the job id."""
        stub = self.admin()
        assert self._operator is not None
        env = seal(
            signing_key=self._operator.identity.signing_key,
            federation=self.federation,
            sender=self._operator.identity.info.name,
            stage=common_pb2.STAGE_JOB,
            payload=spec.SerializeToString(),
            now=time.time(),
        )
        return str(stub.SubmitJob(env, timeout=30).job_id)

    def job(self, job_id: str) -> admin_pb2.JobStatus:
        """The job's current status."""
        status: admin_pb2.JobStatus = self.admin().GetJob(
            admin_pb2.JobRef(job_id=job_id), timeout=30
        )
        return status

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        on_status: Callable[[admin_pb2.JobStatus], None] | None = None,
        poll_s: float = 0.1,
    ) -> admin_pb2.JobStatus:
        """Wait until the job is done, failed or cancelled, reporting each status seen."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.job(job_id)
            if on_status is not None:
                on_status(status)
            if status.state in _TERMINAL:
                return status
            if self.aggregator is not None and self.aggregator.poll() is not None:
                raise InternalError(
                    "the aggregator exited during the job:\n" + self.log_tail("aggregator")
                )
            if time.monotonic() > deadline:
                raise InternalError(f"job {job_id} did not finish within {timeout:.0f}s")
            time.sleep(poll_s)

    # ----- teardown -----

    def signal_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Send a signal to one agent (SIGKILL to simulate a crash)."""
        self.agents[name].send_signal(sig)

    def stop(self, *, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every process, wait for it, and return the exit codes by name."""
        self.close_admin()
        procs: dict[str, subprocess.Popen[bytes]] = dict(self.agents)
        if self.aggregator is not None:
            procs["aggregator"] = self.aggregator
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, p in procs.items():
            try:
                codes[name] = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes[name] = None
        return codes

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
