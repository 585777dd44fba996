"""The .debs: lintian, contents, and a real install into a clean Debian 12 root.

One module-scoped root gets both packages through ``apt-get install ./x.deb`` (so apt fetches
exactly what Depends names and nothing else), then systemd, as a real host has. The tests
run in file order: the one that removes and purges comes after every test that needs the
installed packages, and lintian's verdict (it runs in the background) is collected last.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import PARTS, REPO, VERSION, Chroot, need, sh
from tests.packaging.machine import Machine
from tests.packaging.test_units import LIMITS
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

COMMANDS = {"agent": ("confide-agent",), "aggregator": ("confide-aggregator", "confide")}


def _listing(deb: Path) -> list[str]:
    """The paths in a .deb's data (``./opt/...``), symlink targets cut off."""
    lines = sh(["dpkg-deb", "--contents", deb], timeout=600).stdout.splitlines()
    return [ln.split(None, 5)[5].split(" -> ")[0] for ln in lines]


@pytest.mark.parametrize("part", PARTS)
def test_package_layout(debs: dict[str, Path], lintian, part: str) -> None:
    """Each package holds its venv, unit, conffile and docs, no bytecode, and the right Depends."""
    assert lintian  # requested here so that lintian starts now, in the background
    deb = debs[part]
    field = lambda name: sh(["dpkg-deb", "--field", deb, name]).stdout.strip()  # noqa: E731
    assert field("Package") == f"confide-{part}" and field("Version") == VERSION
    depends = {d.split()[0] for d in field("Depends").split(", ")}
    assert {"python3.11", "adduser", "libc6"} <= depends
    assert ("bubblewrap" in depends) == (part == "agent")
    conffiles = sh(["dpkg-deb", "--info", deb, "conffiles"]).stdout.split()
    assert conffiles == [f"/etc/confide/{part}.toml"]

    names = _listing(deb)
    site = f"./opt/confide/{part}/lib/python3.11/site-packages/"
    for needed in (
        f"./opt/confide/{part}/bin/python",
        f"./opt/confide/{part}/pyvenv.cfg",
        f"./lib/systemd/system/confide-{part}.service",
        f"./etc/confide/{part}.toml",
        f"./usr/share/doc/confide-{part}/copyright",
        f"./usr/share/lintian/overrides/confide-{part}",
        *(f"./usr/bin/{cmd}" for cmd in COMMANDS[part]),
        *(f"./usr/share/man/man1/{cmd}.1.gz" for cmd in COMMANDS[part]),
        f"{site}agent/main.py" if part == "agent" else f"{site}aggregator/main.py",
    ):
        assert needed in names, needed
    # The worker runtime ships with the agent: its package and its script, not in /usr/bin.
    worker = (f"{site}confide_worker/__main__.py", f"./opt/confide/{part}/bin/confide-worker")
    assert all((n in names) == (part == "agent") for n in worker), worker
    assert "./usr/bin/confide-worker" not in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith(("./var/", "./run/"))]  # state: postinst, systemd
    assert any(n.startswith(f"{site}torch/") for n in names) == (part == "agent")
    # What ships is what runs: no benchmarks, no development harness, no tests.
    dev = ("bench/", "confide_dev/", "tests/", "confide/localfed/", "confide/cli/demo.py")
    assert not [n for n in names if n.startswith(tuple(site + d for d in dev))]
    assert not [n for n in names if "confide_dev" in n or "confide-dev" in n]


class Installed:
    """The module's root with both packages, and what was seen before systemd was added."""

    def __init__(self, root: Chroot) -> None:
        self.root = root
        self.versions: dict[str, str] = {}
        self.unresolved = ""


@pytest.fixture(scope="module")
def installed(
    debs: dict[str, Path], bookworm_tar: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """Both packages installed by apt into a fresh minbase bookworm root, then systemd."""
    root = Chroot(tmp_path_factory.mktemp("installed") / "r", bookworm_tar)
    try:
        for deb in debs.values():
            shutil.copy2(deb, root.path / "tmp" / deb.name)
        t0 = time.monotonic()
        root.apt_install(*(f"/tmp/{deb.name}" for deb in debs.values()))
        print(f"apt-get install of both packages: {time.monotonic() - t0:.0f}s")
        seen = Installed(root)
        # Before anything else is installed, so no later package can hide a missing Depends.
        for part in PARTS:
            for cmd in COMMANDS[part]:
                done = root.run(cmd, "--version", net=False, check=False)
                seen.versions[cmd] = (done.stdout + done.stderr).strip()
        seen.unresolved = root.run(
            "sh",
            "-c",
            "find /opt/confide -name '*.cpython-311-*.so' -o -name '*.abi3.so' | xargs ldd",
            check=False,
        ).stdout
        root.apt_install("systemd")
        yield seen
    finally:
        root.close()


def test_commands_report_version_offline(installed: Installed) -> None:
    """confide-agent, confide-aggregator and confide run from a clean root with no network."""
    assert installed.versions == {
        "confide-agent": f"confide-agent {VERSION}",
        "confide-aggregator": f"confide-aggregator {VERSION}",
        "confide": f"confide {VERSION}",
    }


def test_every_extension_module_finds_its_libraries(installed: Installed) -> None:
    """ldd resolves every native extension module in both venvs from the Depends alone."""
    assert "=>" in installed.unresolved
    assert "not found" not in installed.unresolved, [
        ln for ln in installed.unresolved.splitlines() if "not found" in ln or ln.startswith("/")
    ][:40]


def test_worker_runtime_only_in_the_agent(installed: Installed) -> None:
    """The agent's venv has torch, Opacus and onnxruntime; the aggregator's has no torch."""
    r = installed.root
    agent = r.run(
        "/opt/confide/agent/bin/python",
        "-c",
        "import torch, opacus, onnxruntime; print(torch.__version__)",
        net=False,
    )
    pinned = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    assert pinned and agent.stdout.strip().startswith(pinned.group(1))
    agg = r.run("/opt/confide/aggregator/bin/python", "-c", "import torch", check=False)
    assert agg.returncode == 1 and "No module named 'torch'" in agg.stderr


def test_user_state_and_nothing_enabled(installed: Installed) -> None:
    """postinst makes the confide system user and private state dirs, and enables no unit."""
    r = installed.root
    user = r.run("getent", "passwd", "confide").stdout.strip().split(":")
    assert user[5:] == ["/var/lib/confide", "/usr/sbin/nologin"] and int(user[2]) < 1000
    stat = r.run(
        "stat",
        "-c",
        "%n %U %G %a",
        "/var/lib/confide/agent",
        "/var/lib/confide/aggregator",
        "/etc/confide/pki",
        "/etc/confide/agent.toml",
    ).stdout.splitlines()
    assert stat == [
        "/var/lib/confide/agent confide confide 700",
        "/var/lib/confide/aggregator confide confide 700",
        "/etc/confide/pki confide confide 700",
        "/etc/confide/agent.toml root root 644",
    ]
    links = r.run("find", "/etc/systemd/system", "-name", "confide*").stdout.split()
    assert links == []
    for part in PARTS:
        state = r.run("systemctl", "is-enabled", f"confide-{part}.service", check=False)
        assert state.stdout.strip() == "disabled"


def test_bytecode_compiled_at_the_installed_path(installed: Installed) -> None:
    """postinst compiled the venv's bytecode, naming the installed source paths."""
    code = (
        "import marshal, sys; f = open(sys.argv[1], 'rb'); f.read(16); "
        "print(marshal.load(f).co_filename)"
    )
    pyc = "/opt/confide/agent/lib/python3.11/site-packages/agent/__pycache__/main.cpython-311.pyc"
    out = installed.root.run("/opt/confide/agent/bin/python", "-c", code, pyc).stdout.strip()
    assert out == "/opt/confide/agent/lib/python3.11/site-packages/agent/main.py"


def test_installed_units_verify_and_score(installed: Installed) -> None:
    """The installed units are the repository's; verify is clean; exposure is within limits."""
    path = installed.root.path
    for unit in LIMITS:
        shipped = (path / "lib/systemd/system" / unit).read_text()
        assert shipped == (REPO / "systemd" / unit).read_text()
    done = sh(["systemd-analyze", "verify", f"--root={path}", *LIMITS], check=False)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stderr
    for unit, limit in LIMITS.items():
        done = sh(["systemd-analyze", "security", "--offline=yes", f"--root={path}", unit])
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
        assert score and float(score.group(1)) <= limit, done.stdout[-2000:]


# The site's PKI and config as site IT would make them, an operator "alice" (the signer the
# example agent.toml trusts), a toy dataset and a one-round job.
_PKI = """set -eu
confide pki init --dir /root/ca --federation acme
confide pki issue aggregator --role aggregator --dir /root/ca --dns localhost --ip 127.0.0.1
confide pki issue alice --role operator --dir /root/ca
install -o confide -g confide -m 0644 /root/ca/ca.crt /etc/confide/pki/ca.crt
for f in aggregator.crt aggregator.key aggregator.sign.key crl.pem; do
  install -o confide -g confide -m 0600 /root/ca/$f /etc/confide/pki/$f
done
runuser -u confide -- confide-agent enroll --dir /etc/confide/pki --name hospital-a
confide pki sign /etc/confide/pki/hospital-a.csr --role site --dir /root/ca \\
  --out /etc/confide/pki/hospital-a.crt
chown confide:confide /etc/confide/pki/hospital-a.crt
sed -i 's|^address = .*|address = "127.0.0.1:7443"|' /etc/confide/agent.toml
sed -i 's|^listen = .*|listen = "127.0.0.1:7443"|' /etc/confide/aggregator.toml
sed -i 's|^#* *crl = .*|crl = "pki/crl.pem"|' /etc/confide/aggregator.toml
cat >> /etc/confide/agent.toml <<EOF

[datasets.toy]
path = "/srv/data/toy.csv"
features = ["a", "b", "c"]
label = "y"

[policy.datasets.toy]
max_epsilon = inf
EOF
mkdir -p /srv/data
/opt/confide/agent/bin/python - <<EOF
import random
random.seed(1)
rows = ["a,b,c,y"] + [
    ",".join(f"{random.gauss(2.0 * (i % 2), 1.0):.4f}" for _ in range(3)) + f",{i % 2}"
    for i in range(200)
]
open("/srv/data/toy.csv", "w").write("\\n".join(rows) + "\\n")
EOF
chmod 0644 /srv/data/toy.csv
cat > /root/operator.toml <<EOF
federation = "acme"
[aggregator]
address = "127.0.0.1:7443"
[tls]
ca = "ca/ca.crt"
cert = "ca/alice.crt"
key = "ca/alice.key"
signing_key = "ca/alice.sign.key"
EOF
cat > /root/job.toml <<EOF
name = "packaged"
rounds = 1
min_sites = 1
[model]
kind = "logreg"
[dataset]
name = "toy"
features = ["a", "b", "c"]
label = "y"
[training]
local_epochs = 1
learning_rate = 0.1
EOF
"""


def test_units_run_a_sandboxed_job_under_systemd(installed: Installed, tmp_path: Path) -> None:
    """Under a real systemd both hardened units start, and a job trains in a bubblewrap worker.

    The aggregator and the agent run as installed (Type=notify, confide user, every hardening
    setting); the agent must build its worker sandbox (user, mount, PID, network namespaces,
    a fresh /proc, seccomp) from inside its unit and train a one-round logistic regression.
    """
    need(shutil.which("systemd-nspawn") is not None, "needs systemd-nspawn (systemd-container)")
    r = installed.root
    r.run("sh", "-c", _PKI)
    r.unmount()
    try:
        machine = Machine(r.path, tmp_path / "console.log")
    except Exception as exc:
        r.mount()
        need(False, f"systemd-nspawn cannot boot here: {exc}")
        raise
    try:
        machine.boot()
        machine.run("systemctl", "start", "confide-aggregator.service", timeout=120)
        machine.run("systemctl", "start", "confide-agent.service", timeout=120)
        for part in PARTS:
            state = machine.run("systemctl", "is-active", f"confide-{part}.service", check=False)
            assert state.stdout.strip() == "active", machine.run(
                "journalctl", "-u", f"confide-{part}", "--no-pager", check=False
            ).stdout[-4000:]

        def agent_status() -> str:
            return machine.run(
                "confide-agent", "status", "--config", "/etc/confide/agent.toml", check=False
            ).stdout

        status = wait_for(
            agent_status,
            until=lambda out: "(connected)" in out,
            timeout=90,
            what="the agent to connect",
        )
        isolation = next(ln for ln in status.splitlines() if ln.startswith("isolation:"))
        assert "workers run in bubblewrap" in isolation, status

        job = machine.run(
            "sh", "-c", "cd /root && confide --config operator.toml job submit job.toml"
        ).stdout.strip()

        def job_status() -> str:
            return machine.run(
                "sh",
                "-c",
                f"cd /root && confide --config operator.toml job status {job} --json",
                check=False,
            ).stdout

        def finished(out: str) -> bool:
            return bool(out.strip()) and json.loads(out)["state"] in ("done", "failed")

        out = wait_for(job_status, until=finished, timeout=300, what=f"job {job}")
        final = json.loads(out)
        journal = machine.run("journalctl", "-u", "confide-agent", "--no-pager").stdout
        assert final["state"] == "done", journal[-6000:]
        assert '"event": "worker_started"' in journal and '"event": "update_sent"' in journal

        for part in PARTS:
            score = machine.run("systemd-analyze", "security", f"confide-{part}.service").stdout
            found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", score)
            assert found and float(found.group(1)) <= LIMITS[f"confide-{part}.service"]
        machine.run("systemctl", "stop", "confide-agent.service", "confide-aggregator.service")
        for part in PARTS:
            result = machine.run("systemctl", "show", "-p", "Result", "--value", f"confide-{part}")
            assert result.stdout.strip() == "success"
    finally:
        machine.close()
        r.mount()


def test_remove_keeps_state_and_purge_deletes_it(installed: Installed) -> None:
    """remove keeps state and config; purge deletes the package's state and config only."""
    r = installed.root
    for part in PARTS:
        r.run("sh", "-c", f"echo ledger > /var/lib/confide/{part}/marker")
    r.run("apt-get", "remove", "-y", "-qq", "confide-agent")
    assert r.run("cat", "/var/lib/confide/agent/marker").stdout == "ledger\n"
    assert (r.path / "etc/confide/agent.toml").exists()
    assert not (r.path / "opt/confide/agent").exists()  # no bytecode left behind
    r.run("apt-get", "purge", "-y", "-qq", "confide-agent")
    assert not (r.path / "var/lib/confide/agent").exists()
    assert not (r.path / "etc/confide/agent.toml").exists()
    # The other package's state, config and the keys are untouched; the user stays.
    assert r.run("cat", "/var/lib/confide/aggregator/marker").stdout == "ledger\n"
    assert (r.path / "etc/confide/aggregator.toml").exists()
    assert r.run("getent", "passwd", "confide").returncode == 0
    keys = list((r.path / "etc/confide/pki").glob("*.key"))
    r.run("apt-get", "purge", "-y", "-qq", "confide-aggregator")
    assert not (r.path / "var/lib/confide").exists()
    assert not (r.path / "opt/confide").exists()
    # Private keys are never deleted by a package; an empty PKI folder is.
    assert (r.path / "etc/confide/pki").exists() == bool(keys)
    assert all(k.exists() for k in keys)


@pytest.mark.parametrize("part", PARTS)
def test_lintian_reports_no_errors(lintian, part: str) -> None:
    """lintian finds no error in either package (overrides, each with its reason, are shipped).

    lintian started in the background when the packages were built; this test, last in the
    file, collects its verdict.
    """
    done, seconds = lintian[part].result(timeout=3600)
    print(f"lintian confide-{part}: {seconds:.0f}s")
    errors = [ln for ln in done.stdout.splitlines() if ln.startswith("E:")]
    assert errors == [] and done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
