"""The systemd units: exposure scores, and what the agent's unit must leave bubblewrap.

``systemd-analyze security --offline=yes`` scores a unit file without a running systemd. The
installed files are also verified and scored in test_deb.py, and a real systemd runs both
units in test_systemd_boot.py.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO

UNITS = REPO / "systemd"
LIMITS = {"confide-aggregator.service": 2.0, "confide-agent.service": 3.0}

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (systemd)"
)


def exposure(root: Path, unit: str) -> float:
    """The overall exposure ``systemd-analyze security --offline=yes`` gives ``unit`` in root."""
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, f"no score in:\n{done.stdout}\n{done.stderr}"
    return float(found.group(1))


def service_section(unit: str) -> dict[str, list[str]]:
    """The [Service] section of a repository unit, every value of repeated keys kept."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (UNITS / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _root_with_units(tmp_path: Path, *, gpu: bool = False) -> Path:
    units = tmp_path / "lib/systemd/system"
    units.mkdir(parents=True)
    for unit in LIMITS:
        shutil.copy2(UNITS / unit, units / unit)
    if gpu:
        dropins = tmp_path / "etc/systemd/system/confide-agent.service.d"
        dropins.mkdir(parents=True)
        shutil.copy2(UNITS / "confide-agent-gpu.conf", dropins / "gpu.conf")
    return tmp_path


@pytest.mark.parametrize("unit", sorted(LIMITS))
def test_exposure_within_limit(tmp_path: Path, unit: str) -> None:
    """Each unit scores at most its limit (aggregator 2.0, agent 3.0) in systemd's own rating."""
    assert exposure(_root_with_units(tmp_path), unit) <= LIMITS[unit]


def test_agent_with_gpu_dropin_within_limit(tmp_path: Path) -> None:
    """The agent with the GPU drop-in (host /dev, DeviceAllow for NVIDIA) still scores <= 3.0."""
    root = _root_with_units(tmp_path, gpu=True)
    assert exposure(root, "confide-agent.service") <= LIMITS["confide-agent.service"]
    dropin = configparser.ConfigParser(strict=False)
    dropin.read(UNITS / "confide-agent-gpu.conf")
    assert dropin["Service"]["DevicePolicy"] == "closed"


@pytest.mark.parametrize("unit", sorted(LIMITS))
def test_units_run_as_confide_with_systemd_managed_dirs(unit: str) -> None:
    """Both units run as confide, notify with a watchdog, and get their dirs from systemd."""
    svc = service_section(unit)
    part = unit.removeprefix("confide-").removesuffix(".service")
    assert svc["User"] == ["confide"] and svc["Group"] == ["confide"]
    assert svc["Type"] == ["notify"] and svc["WatchdogSec"]
    assert svc["StateDirectory"] == [f"confide/{part}"]
    assert svc["ExecStart"][0].startswith(f"/opt/confide/{part}/bin/confide-{part} ")
    assert svc["CapabilityBoundingSet"] == [""] and svc["NoNewPrivileges"] == ["yes"]


def test_agent_unit_leaves_bubblewrap_what_it_needs() -> None:
    """The agent unit allows the namespaces, mounts and netlink bwrap uses; nothing masks /proc.

    A mount over part of /proc (ProtectKernelTunables=, ProtectKernelLogs=) makes the kernel
    refuse the worker sandbox its fresh /proc, and ProcSubset=pid hides
    /proc/sys/kernel/overflowuid, which bwrap reads; test_systemd_boot.py shows the result
    under a real systemd.
    """
    svc = service_section("confide-agent.service")
    allowed = set(svc["RestrictNamespaces"][0].split())
    assert {"user", "mnt", "pid", "net", "ipc", "uts", "cgroup"} <= allowed
    for key in (
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProcSubset",
        "ProtectHostname",
        "MemoryDenyWriteExecute",
    ):
        assert svc.get(key, ["no"]) == ["no"], key
    assert "AF_NETLINK" in svc["RestrictAddressFamilies"][0].split()
    allow = svc["SystemCallFilter"][0].split()
    assert {"@mount", "pivot_root", "capset", "setresuid", "sethostname"} <= set(allow)
    assert svc["Delegate"] == ["pids memory"] and svc["RuntimeDirectory"] == ["confide"]
