"""Hostile code bundles, each run as a signed job through a real agent in its real sandbox.

One aggregator and one agent serve every attack in turn. Each bundle is an honest linear model
whose ``transform`` (run once in the site's worker, never by ``init-weights``) makes one
attack. The attacks are written so that a sandbox that let them through lets the job finish:
the code raises only when every attempt was stopped. So each test asserts the job FAILED, the
reason the aggregator recorded and ``confide job status`` prints, what the site's log says
stopped it, and what it could not touch. Between attacks the same daemon (same pid) stays up,
and the last test runs an honest job to the end on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.workers.sandbox import probe
from confide.cli.init_weights import write_initial_weights
from confide.cli.main import main
from confide.jobfile import load_job
from confide.v1 import admin_pb2, common_pb2
from confide_dev.localfed import LocalFederation, partition_breast_cancer

from .conftest import site_setup

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(not probe().sandboxed, reason="bubblewrap cannot build a sandbox here"),
]

SITE = "site-1"
MEMORY_MB = 1536
PROCESSES = 96
WALL_S = 30
OUTPUT_MB = 16

MODEL = '''
import torch
from torch import nn


def build_model(spec):
    (features,) = spec.input_shape
    return nn.Linear(features, spec.num_classes)


def _stopped(attempts):
    """Run each attempt; raise only if every one failed (so an escape lets the job finish)."""
    errors = []
    for attempt in attempts:
        try:
            attempt()
        except BaseException as exc:  # noqa: BLE001 - the attack records every refusal
            errors.append(f"{attempt.__name__}: {type(exc).__name__}: {exc}")
        else:
            return
    raise PermissionError("; ".join(errors))


def transform(features):
'''

JOB = """
name = "hostile-{name}"
rounds = 1
min_sites = 1

[model]
code = "{name}"
initial_weights = "{name}.safetensors"

[dataset]
name = "{dataset}"
features = {features}
label = "{label}"
num_classes = 2

[training]
local_epochs = 1
batch_size = 64
learning_rate = 0.1

[evaluation]
noise_multiplier = 0.0
"""


@dataclass
class Stage:
    """The federation every attack runs against."""

    fed: LocalFederation
    root: Path
    features: list[str]
    label: str
    dataset: str
    agent_pid: int
    listener: socket.socket
    own_data: Path
    secret_dataset: Path
    other_site_data: Path


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """An aggregator (no round retries) and one agent whose policy caps its workers."""
    root = tmp_path_factory.mktemp("hostile")
    data = partition_breast_cancer(root / "data", sites=2, seed=1)
    fed = LocalFederation(root / "fed", federation="e2e", log_level="info")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    try:
        fed.make_pki([SITE])
        fed.start_aggregator(extra={"rounds": {"max_round_retries": 0}})
        site = site_setup(SITE, data, 0)
        # A second dataset of this site that these jobs do not name.
        secret = root / "data" / "secret.csv"
        shutil.copy(data.paths[0], secret)
        site.datasets["secret"] = {**site.datasets[data.name], "path": str(secret)}
        site.policy["datasets"]["secret"] = {"max_epsilon": 1.0}
        site.policy["allowed_bundles"] = ["trusted-signers"]
        limits = {
            "allow_unsandboxed": False,
            "memory_mb": MEMORY_MB,
            "processes": PROCESSES,
            "wall_seconds": WALL_S,
            "output_mb": OUTPUT_MB,
            "threads": 2,
        }
        fed.start_agent(site, extra={"sandbox": limits})
        fed.wait_for_sites(1)
        proc = fed.agents[SITE]
        yield Stage(
            fed=fed,
            root=root,
            features=list(data.features),
            label=data.label,
            dataset=data.name,
            agent_pid=proc.pid,
            listener=listener,
            own_data=data.paths[0],
            secret_dataset=secret,
            other_site_data=data.paths[1],
        )
        codes = fed.stop()
        assert codes[SITE] == 0, fed.log_tail(SITE)
    finally:
        listener.close()
        fed.stop()


def _submit(stage: Stage, name: str, attack: str) -> tuple[str, str]:
    """Write a bundle whose transform runs ``attack``, make its weights, sign and submit it;
    returns (job id, code hash)."""
    folder = stage.root / "jobs"
    (folder / name).mkdir(parents=True)
    body = textwrap.indent(textwrap.dedent(attack).strip() + "\nreturn features\n", "    ")
    (folder / name / "model.py").write_text(MODEL + body)
    job_file = folder / f"{name}.toml"
    job_file.write_text(
        JOB.format(
            name=name,
            dataset=stage.dataset,
            features=json.dumps(stage.features),
            label=stage.label,
        )
    )
    write_initial_weights(job_file)  # build_model only: the attack is never run here
    argv = ["--config", str(stage.fed.operator_config), "job", "submit", str(job_file)]
    assert main(argv) == 0
    return load_job(job_file).spec.model.code_sha256.hex(), name


def _attack(
    stage: Stage, capsys: pytest.CaptureFixture[str], name: str, attack: str
) -> tuple[admin_pb2.JobStatus, str, str]:
    """Run one attack to its end; returns the job's status, its ``job status`` text and what
    the site logged about its task."""
    capsys.readouterr()
    code_hash, _ = _submit(stage, name, attack)
    job_id = capsys.readouterr().out.strip()
    status = stage.fed.wait_job(job_id, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_FAILED, (name, status.error)
    assert main(["--config", str(stage.fed.operator_config), "job", "status", job_id]) == 0
    printed = capsys.readouterr().out
    assert stage.fed.agents[SITE].poll() is None, stage.fed.log_tail(SITE)
    events = [
        json.loads(line)
        for line in (stage.fed.site_dirs[SITE] / "agent.log").read_text().splitlines()
        if line.startswith("{") and job_id in line
    ]
    failed = [e for e in events if e.get("event") == "task_failed"]
    assert failed, stage.fed.log_tail(SITE)
    logged = failed[-1]["error"]
    found = re.search(r"the worker's message is in (\S+\.stderr)", logged)
    if found:
        # Job code's own words stay out of the daemon's log: they are in the worker's file.
        assert "Error" not in logged, logged
        path = Path(found.group(1))
        assert path.parent == stage.fed.site_dirs[SITE] / "state" / "workers"
        stage.fed.wait_for(
            lambda: "worker: op " in path.read_text(errors="replace"),
            timeout=30,
            what="the worker's message in its stderr file",
        )
        logged = path.read_text(errors="replace")
    kept = stage.fed.site_dirs[SITE] / "state" / "bundles" / f"{code_hash}.tar"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == code_hash
    return status, printed, logged


def _site_row(status: admin_pb2.JobStatus) -> admin_pb2.SiteRound:
    (row,) = [s for s in status.rounds[0].sites if s.site_id == SITE]
    return row


def _refused_code(status: admin_pb2.JobStatus, printed: str) -> None:
    """The site refused the job's code (it raised at the site): reason invalid_job."""
    row = _site_row(status)
    assert (row.outcome, row.reason) == (common_pb2.OUTCOME_REFUSED, "invalid_job")
    assert f"{SITE}: invalid_job (refused)" in printed


def _limit(status: admin_pb2.JobStatus, printed: str, what: str) -> None:
    """The worker was killed at a site limit, which the aggregator was told by name."""
    row = _site_row(status)
    assert (row.outcome, row.reason) == (common_pb2.OUTCOME_FAILED, "resource_limit")
    assert what in row.detail
    assert f"{SITE}: resource_limit (failed)" in printed


def test_no_connection_to_a_local_listener_or_the_aggregator(stage, capsys):
    """Inet sockets are refused inside; the listener on 127.0.0.1 never sees a connection."""
    port = stage.listener.getsockname()[1]
    agg_port = int(stage.fed.address.rsplit(":", 1)[1])
    status, printed, error = _attack(
        stage,
        capsys,
        "connect",
        f"""
        import socket
        def listener():
            socket.create_connection(("127.0.0.1", {port}), timeout=3).close()
        def aggregator():
            socket.create_connection(("127.0.0.1", {agg_port}), timeout=3).close()
        def any_family():
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.connect(("::1", {agg_port}))
        _stopped([listener, aggregator, any_family])
        """,
    )
    _refused_code(status, printed)
    assert error.count("Address family not supported") == 3
    with pytest.raises(BlockingIOError):
        stage.listener.accept()


def test_no_name_resolution(stage, capsys):
    """There is no resolver and no socket to ask one: host names do not resolve."""
    status, printed, error = _attack(
        stage,
        capsys,
        "resolve",
        """
        import socket
        def aggregator_name():
            socket.getaddrinfo("aggregator.confide.test", 443)
        def public_name():
            socket.gethostbyname("example.org")
        _stopped([aggregator_name, public_name])
        """,
    )
    _refused_code(status, printed)
    assert error.count("gaierror") == 2


def test_the_agents_key_ledger_and_config_are_not_there(stage, capsys):
    """The agent's private key, ledger, config and state directory are not in the worker's
    filesystem at all."""
    d = stage.fed.site_dirs[SITE]
    paths = [d / f"{SITE}.key", d / f"{SITE}.sign.key", d / "state" / "ledger.db", d / "agent.toml"]
    attempts = "\n".join(
        f"def read_{i}():\n    open({str(p)!r}, 'rb').read()" for i, p in enumerate(paths)
    )
    attempts += f"\ndef list_state():\n    import os\n    os.listdir({str(d / 'state')!r})"
    status, printed, error = _attack(
        stage,
        capsys,
        "read_private",
        attempts + f"\n_stopped([{', '.join(f'read_{i}' for i in range(len(paths)))}, list_state])",
    )
    _refused_code(status, printed)
    assert error.count("FileNotFoundError") == len(paths) + 1


def test_nothing_is_written_outside_its_own_tmp(stage, capsys):
    """The root, /dev, system directories and its dataset are read-only; its /tmp is its own
    (the test's site folder lies under the host's /tmp, so inside the sandbox that path is in
    the worker's private /tmp: a write there must not reach the host's)."""
    d = stage.fed.site_dirs[SITE]
    host = [d / "state" / "pwned", d / "pwned"]
    targets = ["/pwned", "/var/lib/pwned", "/usr/lib/pwned", "/etc/pwned", "/dev/shm/pwned"]
    body = "import contextlib\n"
    body += "".join(
        f"with contextlib.suppress(OSError):\n    open({str(p)!r}, 'w').write('x')\n" for p in host
    )
    body += "\n".join(
        f"def write_{i}():\n    open({p!r}, 'w').write('x')" for i, p in enumerate(targets)
    )
    body += f"\ndef dataset():\n    open({str(stage.own_data)!r}, 'a').write('1')"
    status, printed, error = _attack(
        stage,
        capsys,
        "write",
        body + f"\n_stopped([{', '.join(f'write_{i}' for i in range(len(targets)))}, dataset])",
    )
    _refused_code(status, printed)
    # /var/lib is not there at all (no mount point to write into); the rest are read-only.
    assert "write_1: FileNotFoundError" in error
    assert error.count("Read-only file system") == len(targets)
    for path in host:
        assert not path.exists()


def test_another_dataset_is_not_there(stage, capsys):
    """Neither this site's other dataset nor another site's file is visible."""
    status, printed, error = _attack(
        stage,
        capsys,
        "other_dataset",
        f"""
        def same_site():
            open({str(stage.secret_dataset)!r}).read()
        def other_site():
            open({str(stage.other_site_data)!r}).read()
        _stopped([same_site, other_site])
        """,
    )
    _refused_code(status, printed)
    assert error.count("FileNotFoundError") == 2


def test_a_fork_bomb_stops_at_the_process_limit(stage, capsys):
    """Forking past the policy's process cap fails; the worker is dropped, children and all."""
    status, printed, _ = _attack(
        stage,
        capsys,
        "fork_bomb",
        """
        import os, time
        for _ in range(4 * 4096):
            if os.fork() == 0:
                time.sleep(600)
                os._exit(0)
        """,
    )
    _limit(status, printed, f"process limit ({PROCESSES})")


def test_an_allocation_far_past_the_memory_limit_is_killed(stage, capsys):
    """Touching 8 GiB under a 1.5 GiB cap: the kernel kills the worker; the site says why."""
    status, printed, _ = _attack(
        stage,
        capsys,
        "memory",
        """
        hoard = []
        for _ in range(128):
            hoard.append(b"x" * (64 << 20))
        """,
    )
    _limit(status, printed, f"memory limit ({MEMORY_MB} MiB)")


def test_spinning_past_the_wall_time_is_killed(stage, capsys):
    """A worker that never answers is killed at the policy's wall time."""
    status, printed, _ = _attack(stage, capsys, "spin", "while True:\n    pass")
    _limit(status, printed, "ran past its wall time")


def test_no_shell_no_curl(stage, capsys):
    """There is no /bin/sh or curl to exec, by any path."""
    status, printed, error = _attack(
        stage,
        capsys,
        "exec",
        """
        import os, subprocess
        def shell():
            subprocess.run(["/bin/sh", "-c", "true"], check=True)
        def usr_shell():
            subprocess.run(["/usr/bin/sh", "-c", "true"], check=True)
        def curl():
            subprocess.run(["curl", "http://127.0.0.1/"], check=True)
        def execv():
            os.execv("/usr/bin/curl", ["curl"])
        _stopped([shell, usr_shell, curl, execv])
        """,
    )
    _refused_code(status, printed)
    assert error.count("FileNotFoundError") == 4


def test_the_daemon_can_be_neither_traced_nor_signalled(stage, capsys):
    """ptrace is refused by the filter and the daemon's pid is not in the worker's world."""
    pid = stage.agent_pid
    status, printed, error = _attack(
        stage,
        capsys,
        "ptrace",
        f"""
        import ctypes, os, signal
        libc = ctypes.CDLL(None, use_errno=True)
        def attach():
            if libc.ptrace(16, {pid}, None, None) == -1:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        def seize_parent():
            if libc.ptrace(16, os.getppid(), None, None) == -1:
                raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        def kill():
            os.kill({pid}, signal.SIGKILL)
        def stop():
            os.kill({pid}, signal.SIGSTOP)
        _stopped([attach, seize_parent, kill, stop])
        """,
    )
    _refused_code(status, printed)
    assert error.count("Operation not permitted") == 2
    assert error.count("ProcessLookupError") == 2
    assert stage.fed.agents[SITE].pid == pid


def test_gigabytes_on_stdout_are_cut_at_the_output_limit(stage, capsys):
    """4 GiB on stdout in one line: the daemon stops the worker at the output limit."""
    status, printed, _ = _attack(
        stage,
        capsys,
        "flood",
        """
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(4096):
            sys.stdout.write(chunk)
        """,
    )
    _limit(status, printed, f"more than {OUTPUT_MB} MiB")


_PATCH_TRAIN = """
import dataclasses
import numpy as np
import confide_worker.runtime as runtime
honest = runtime.Runtime.train
def train(self, weights, *, dp, round):
    result = honest(self, weights, dp=dp, round=round)
    return dataclasses.replace(result, delta=forge(result.delta))
runtime.Runtime.train = train
"""


@pytest.mark.parametrize(
    ("name", "forge", "said"),
    [
        (
            "shape",
            "[(n, a.reshape(-1)) for n, a in delta]",  # same bytes, flattened
            "does not match the model's tensors",
        ),
        ("dtype", "[(n, a.view(np.int32)) for n, a in delta]", "is int32, not float32"),
        ("nan", "[(n, np.full_like(a, np.nan)) for n, a in delta]", "holds NaN or infinity"),
        ("huge", "[(n, np.full_like(a, 3e38)) for n, a in delta]", "by more than 1e+06"),
    ],
    ids=["shape", "dtype", "nan", "huge"],
)
def test_a_forged_delta_never_leaves_the_site(stage, capsys, name, forge, said):
    """Job code that rewrites the worker's answer (shape, dtype, NaN, huge): the daemon's
    check refuses the delta and nothing is sent."""
    attack = _PATCH_TRAIN + f"def forge(delta):\n    return {forge}\n"
    status, printed, error = _attack(stage, capsys, f"delta_{name}", attack)
    row = _site_row(status)
    assert (row.outcome, row.reason) == (common_pb2.OUTCOME_FAILED, "training_failed")
    assert f"{SITE}: training_failed (failed)" in printed
    assert status.rounds[0].aggregated == 0
    assert said in error


def test_a_delta_larger_than_the_model_is_refused_as_it_is_announced(stage, capsys):
    """float64 doubles the bytes: the daemon refuses the frame by its declared length, before
    holding a byte of it, and drops the worker whose stream it can no longer trust."""
    attack = (
        _PATCH_TRAIN
        + "def forge(delta):\n    return [(n, a.astype(np.float64)) for n, a in delta]\n"
    )
    status, printed, error = _attack(stage, capsys, "delta_oversized", attack)
    row = _site_row(status)
    assert (row.outcome, row.reason) == (common_pb2.OUTCOME_FAILED, "worker_failed")
    assert f"{SITE}: worker_failed (failed)" in printed
    assert status.rounds[0].aggregated == 0
    assert "frame body of" in error and "exceeds" in error


def test_the_bundle_cannot_change_its_own_code(stage, capsys):
    """Its files are bound read-only and the kept archive is not in its world; the archive
    at the site still hashes to the signed value (checked for every attack)."""
    kept = stage.fed.site_dirs[SITE] / "state" / "bundles"
    status, printed, error = _attack(
        stage,
        capsys,
        "tamper",
        f"""
        import os, pathlib
        me = pathlib.Path(__file__)
        def rewrite():
            me.write_text("def build_model(spec):\\n    raise SystemExit")
        def add_file():
            (me.parent / "evil.py").write_text("x = 1")
        def chmod():
            os.chmod(me, 0o777)
        def archive():
            kept = list(pathlib.Path({str(kept)!r}).glob("*.tar"))
            if not kept:
                raise FileNotFoundError("no kept archive in sight")
            kept[0].write_bytes(b"x")
        _stopped([rewrite, add_file, chmod, archive])
        """,
    )
    _refused_code(status, printed)
    assert error.count("Read-only file system") == 3
    assert "no kept archive in sight" in error


def test_after_every_attack_the_same_daemon_runs_an_honest_job(stage, capsys):
    """The same agent process, after all the attacks, trains an honest bundle job to the end."""
    capsys.readouterr()
    _submit(stage, "honest", "pass")
    job_id = capsys.readouterr().out.strip()
    status = stage.fed.wait_job(job_id, timeout=300)
    assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    assert status.rounds[0].aggregated == 1
    assert stage.fed.agents[SITE].pid == stage.agent_pid
