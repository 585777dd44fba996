"""The offline bundle: checksums, contents, and an install with no network at all.

The install runs ``install.sh`` inside ``unshare --net`` (a network namespace holding only a
downed loopback) chrooted into a clean Debian 12 root that has only python3.11 and
python3.11-venv added, as an air-gapped site would install them from its own media.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import REPO, VERSION, Chroot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def _pins() -> dict[str, str]:
    """constraints.txt as {normalized name: version}."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver.strip()
    return pins


def _wheel_packages(bundle: Path, member: str) -> set[str]:
    """The top-level packages of one wheel inside the bundle (its .dist-info left out)."""
    with tarfile.open(bundle) as tar:
        data = tar.extractfile(member)
        assert data is not None
        with zipfile.ZipFile(io.BytesIO(data.read())) as wheel:
            tops = {n.split("/", 1)[0] for n in wheel.namelist()}
    return {t for t in tops if not t.endswith(".dist-info")}


def test_bundle_is_complete_and_pinned(bundle: Path) -> None:
    """The archive's SHA256SUMS cover every file, its wheels are exactly the pinned versions,
    and the project's wheel holds confide, confide_worker, agent and aggregator only (no bench,
    no harness)."""
    sidecar = bundle.with_name(bundle.name + ".sha256").read_text().split()
    assert sidecar == [hashlib.sha256(bundle.read_bytes()).hexdigest(), bundle.name]
    top = f"confide-{VERSION}/"
    with tarfile.open(bundle) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        sums_file = tar.extractfile(top + "SHA256SUMS")
        assert sums_file is not None
        sums = dict(reversed(ln.split("  ", 1)) for ln in sums_file.read().decode().splitlines())
        assert set(sums) | {"SHA256SUMS"} == {n.removeprefix(top) for n in members}
        for name in ("install.sh", "constraints.txt", "VERSION", "systemd/confide-agent.service"):
            data = tar.extractfile(top + name)
            assert data is not None
            assert hashlib.sha256(data.read()).hexdigest() == sums[name]
        assert members[top + "install.sh"].mode & 0o111
    wheels = [n.removeprefix("wheelhouse/") for n in sums if n.startswith("wheelhouse/")]
    pins = _pins()
    names = {}
    for wheel in wheels:
        dist, ver = wheel.split("-")[:2]
        names[re.sub(r"[-_.]+", "-", dist).lower()] = ver
    assert names.pop("confide") == VERSION
    assert "confide-dev" not in names and "scikit-learn" not in names
    (confide_wheel,) = [w for w in wheels if w.startswith(f"confide-{VERSION}-")]
    assert _wheel_packages(bundle, top + "wheelhouse/" + confide_wheel) == {
        "confide",
        "confide_worker",
        "agent",
        "aggregator",
    }
    for dist, ver in names.items():
        assert ver.split("+")[0] == pins[dist].split("+")[0], dist  # torch: 2.13.0+cpu
    assert {"torch", "opacus", "onnxruntime", "grpcio", "numpy"} <= set(names)


@pytest.fixture(scope="module")
def site(
    bundle: Path, bookworm_tar: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chroot]:
    """A clean bookworm root with only python3.11 and python3.11-venv added, the bundle in /tmp.

    The tests that must install nothing run first (pytest keeps file order).
    """
    root = Chroot(tmp_path_factory.mktemp("site") / "r", bookworm_tar)
    try:
        root.apt_install("python3.11", "python3.11-venv")
        with tarfile.open(bundle) as tar:
            tar.extractall(root.path / "tmp", filter="tar")
        yield root
    finally:
        root.close()


def test_unknown_option_is_refused(site: Chroot) -> None:
    """install.sh names an unknown argument or part and exits 1 before touching anything."""
    for args, message in (
        (["--part", "worker"], "--part must be agent or aggregator"),
        (["--prefix"], "--prefix needs a folder"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
    ):
        done = site.run(f"/tmp/confide-{VERSION}/install.sh", *args, net=False, check=False)
        assert done.returncode == 1 and message in done.stderr, (args, done.stderr)
    assert not (site.path / "opt/confide").exists()


def test_altered_bundle_is_refused(site: Chroot) -> None:
    """A wheel changed after the build fails the checksum check and nothing is installed."""
    altered = site.path / "tmp/altered"
    shutil.copytree(site.path / f"tmp/confide-{VERSION}", altered, symlinks=True)
    with next((altered / "wheelhouse").glob("structlog-*.whl")).open("ab") as f:
        f.write(b"\0")
    done = site.run("/tmp/altered/install.sh", "--part", "agent", net=False, check=False)
    assert done.returncode == 1
    assert "SHA256SUMS does not match" in done.stderr
    assert not (site.path / "opt/confide").exists()


def test_installs_and_runs_without_any_network(site: Chroot) -> None:
    """install.sh installs the agent from the bundle in an empty network namespace; it runs."""
    probe = "import socket; socket.create_connection(('deb.debian.org', 80), timeout=5)"
    cut_off = site.run("python3.11", "-c", probe, net=False, check=False)
    assert cut_off.returncode != 0  # the namespace really has no network
    install = site.run(f"/tmp/confide-{VERSION}/install.sh", "--part", "agent", net=False)
    assert "Nothing is running yet" in install.stdout
    version = site.run("confide-agent", "--version", net=False)
    assert version.stdout.strip() == f"confide-agent {VERSION}"
    site.run("/opt/confide/agent/bin/python", "-c", "import torch, opacus, onnxruntime", net=False)
    unit = (site.path / "etc/systemd/system/confide-agent.service").read_text()
    assert "ExecStart=/opt/confide/agent/bin/confide-agent " in unit
    assert site.run("getent", "passwd", "confide").returncode == 0
    assert not list((site.path / "etc/systemd/system").rglob("*.wants/confide*"))
