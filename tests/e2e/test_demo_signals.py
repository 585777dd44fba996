"""`confide demo` stopped by a signal leaves no process behind; without its extras it says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import psutil
import pytest

from confide.cli.main import COMMANDS_GROUP, build_parser
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


DEMO = [sys.executable, "-m", "confide.cli.main", "demo"]


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _ended(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE  # exited; only its parent's wait is pending
    except psutil.NoSuchProcess:
        return True


def _demo() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*DEMO, "--sites", "2", "--rounds", "500", "--no-privacy"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _read_until(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    while text not in (line := proc.stdout.readline()):
        assert line, f"the demo ended before printing {text!r}"


def _stop_and_check(proc: subprocess.Popen[str], sig: int, root: Path) -> None:
    started = _descendants(proc.pid)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig
    _, alive = psutil.wait_procs(started, timeout=10)
    assert all(_ended(p) for p in alive), f"left running: {[p.pid for p in alive]}"
    assert not root.exists()


def _cleanup(proc: subprocess.Popen[str]) -> None:
    left = _descendants(proc.pid)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    for p in left:
        p.kill()


@pytest.mark.slow
def test_sigterm_mid_job_stops_the_aggregator_the_agents_and_their_workers():
    """SIGTERM while sites train: every process the demo started ends, and its temp dir."""
    proc = _demo()
    try:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().rsplit(" ", 1)[-1].strip())
        _read_until(proc, "job ")
        wait_for(
            lambda: [w for c in _descendants(proc.pid) for w in c.children()],
            timeout=120,
            what="a worker to start training",
        )
        assert len(_descendants(proc.pid)) >= 4  # aggregator, two agents, a worker at least
        _stop_and_check(proc, signal.SIGTERM, root)
    finally:
        _cleanup(proc)


def test_sigint_sent_to_the_demo_alone_stops_its_processes():
    """Ctrl-C's SIGINT, even when only the demo gets it, ends the aggregator and the agents."""
    proc = _demo()
    try:
        assert proc.stdout is not None
        root = Path(proc.stdout.readline().rsplit(" ", 1)[-1].strip())
        _read_until(proc, "site-2:")
        # The aggregator and two agents; a worker may already train on a fast machine.
        assert len(_descendants(proc.pid)) >= 3
        _stop_and_check(proc, signal.SIGINT, root)
    finally:
        _cleanup(proc)


def test_the_demo_without_scikit_learn_says_what_to_install():
    """No scikit-learn: one line naming it and the install command, exit 2, no traceback."""
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "from confide.cli.main import main; sys.exit(main(['demo']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "confide demo: needs scikit-learn; install them with: pip install -c constraints.txt "
        "-e '.[dev]' -e ./dev (README: Try it)"
    ]


@pytest.mark.parametrize("argv", [["demo"], ["demo", "--sites", "2", "--json"], ["demo", "-h"]])
def test_without_the_dev_harness_confide_demo_names_the_install(argv, capsys):
    """A production install (no confide-dev) answers `confide demo` with the checkout install
    it needs, in one line, exit 2, whatever options follow."""
    args = build_parser(extensions=()).parse_args(argv)
    assert args.func(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "confide demo: the demo comes with the development harness (confide-dev), which "
        "production installs do not ship; from a checkout: pip install -c constraints.txt "
        "-e '.[dev]' -e ./dev (README: Try it)"
    ]


def test_the_dev_harness_adds_the_demo_through_its_entry_point():
    """Installed, confide-dev's entry point gives `confide demo` its real options."""
    (demo,) = [e for e in entry_points(group=COMMANDS_GROUP) if e.name == "demo"]
    assert demo.value == "confide_dev.demo:register"
    args = build_parser(extensions=[demo]).parse_args(["demo", "--sites", "4"])
    assert args.sites == 4 and args.func is not None
