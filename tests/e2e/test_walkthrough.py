"""README "Operating a federation", start to finish, with the shipped example files.

Each party gets its own folder (its "host"), makes its own keys, and starts from what
`confide init` writes, editing only what the README says to edit. So the walkthrough, the
examples and the commands cannot drift apart without this test failing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIDE = [sys.executable, "-m", "confide.cli.main"]
AGENT = [sys.executable, "-m", "agent"]
AGGREGATOR = [
    sys.executable,
    "-c",
    "import sys; from aggregator.main import main; sys.exit(main(sys.argv[1:]))",
]
COLUMNS = ["age", "resting_bp", "cholesterol", "max_heart_rate"]


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out.stdout


def _edit(path: Path, *pairs: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in pairs:
        assert old in text, f"{path.name} no longer contains {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def _heart_csv(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    x = np.column_stack(
        [
            rng.normal(55, 9, n),
            rng.normal(130, 15, n),
            rng.normal(240, 40, n),
            rng.normal(150, 20, n),
        ]
    )
    y = (x[:, 0] / 9 - x[:, 3] / 20 + rng.normal(0, 0.5, n) > 55 / 9 - 150 / 20).astype(int)
    lines = [",".join([*COLUMNS, "disease"])]
    lines += [
        ",".join(f"{v:.1f}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")


def test_the_readme_walkthrough_runs_with_the_example_files(tmp_path):
    """CA, aggregator and two sites each enroll; init files run a job; the model downloads.

    (`confide-agent check` on such a file is tested in tests/agent/test_selfcheck.py.)
    """
    ca, agg, op = tmp_path / "ca", tmp_path / "agg", tmp_path / "op"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # 1. The CA and the operator's identity, at the operator.
        _run([*CONFIDE, "pki", "init", "--dir", str(ca), "--federation", "acme"])
        _run([*CONFIDE, "pki", "issue", "alice", "--role", "operator", "--dir", str(ca)])
        # 2. The aggregator makes its own keys; the CA signs its CSR.
        _run([*AGGREGATOR, "enroll", "--dir", str(agg / "pki")])
        csr = str(agg / "pki" / "aggregator.csr")
        san = ["--dns", "localhost", "--ip", "127.0.0.1"]
        _run([*CONFIDE, "pki", "sign", csr, "--role", "aggregator", *san, "--dir", str(ca)])
        for name in ("ca.crt", "crl.pem"):
            shutil.copy(ca / name, agg / "pki" / name)
        _run([*CONFIDE, "init", "aggregator", "--out", str(agg / "aggregator.toml")])
        _edit(agg / "aggregator.toml", ('listen = "0.0.0.0:7443"', 'listen = "127.0.0.1:0"'))
        with (agg / "log").open("wb") as log:
            cmd = [*AGGREGATOR, "--config", "aggregator.toml"]
            procs.append(subprocess.Popen(cmd, cwd=agg, stdout=log, stderr=log))
        address_file = agg / "state" / "address"
        wait_for(
            lambda: address_file.exists() and address_file.read_text().strip(),
            timeout=120,
            what="the aggregator's address file",
        )
        address = address_file.read_text().strip()
        # 3. Each site: keys and CSR, signed; agent.toml from init; check; run.
        for i, site in enumerate(["hospital-a", "hospital-b"]):
            d = tmp_path / site
            _run([*AGENT, "enroll", "--dir", str(d / "pki"), "--name", site])
            csr = str(d / "pki" / f"{site}.csr")
            _run([*CONFIDE, "pki", "sign", csr, "--role", "site", "--dir", str(ca)])
            shutil.copy(ca / "ca.crt", d / "pki" / "ca.crt")
            _heart_csv(d / "heart.csv", seed=i)
            _run([*CONFIDE, "init", "agent", "--out", str(d / "agent.toml")])
            _edit(
                d / "agent.toml",
                ('address = "agg.example.org:7443"', f'address = "{address}"'),
                ('dir = "/var/lib/confide"', 'dir = "state"'),
                ('path = "/srv/data/heart.csv"', 'path = "heart.csv"'),
                ('# site = "hospital-a"', f'site = "{site}"'),
                ("# standardize = false", "standardize = true"),
                ("hospital-a.", f"{site}."),
            )
            with (d / "log").open("wb") as log:
                cmd = [*AGENT, "--config", "agent.toml"]
                procs.append(subprocess.Popen(cmd, cwd=d, stdout=log, stderr=log))
        # 4. The operator: operator.toml from init, then sites, a job, its model.
        (op / "pki").mkdir(parents=True)
        for name in ("ca.crt", "alice.crt", "alice.key", "alice.sign.key"):
            shutil.copy(ca / name, op / "pki" / name)
        _run([*CONFIDE, "init", "operator", "--out", str(op / "operator.toml")])
        _edit(op / "operator.toml", ('address = "agg.example.org:7443"', f'address = "{address}"'))
        cli = [*CONFIDE, "--config", str(op / "operator.toml")]

        def connected() -> int:
            sites = json.loads(_run([*cli, "sites", "--json"]))
            return sum(s.get("connected", False) for s in sites)

        wait_for(connected, until=lambda n: n == 2, timeout=120, what="both sites")
        _run([*CONFIDE, "init", "job", "--out", str(op / "job.toml")])
        _edit(op / "job.toml", ("rounds = 20", "rounds = 2"))
        job_id = _run([*cli, "job", "submit", str(op / "job.toml")]).strip()

        def state() -> str:
            state = json.loads(_run([*cli, "job", "status", job_id, "--json"]))["state"]
            assert state in ("running", "done"), _run([*cli, "job", "status", job_id])
            return str(state)

        wait_for(state, until=lambda s: s == "done", timeout=300, what="the job")
        status = json.loads(_run([*cli, "job", "status", job_id, "--json"]))
        assert [v["version"] for v in status["versions"]] == [0, 1, 2]
        _run([*cli, "model", "download", job_id, "--out", str(op / "model.safetensors")])
        from confide_worker.training.saved import load_model

        model, spec = load_model(op / "model.safetensors")
        assert list(spec.dataset.features) == COLUMNS and not model.training
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
