"""Fixtures for the packaging tests: built artifacts and clean Debian 12 roots.

These tests build the real .debs and the offline bundle, and install them into a clean
Debian 12 (bookworm) root made by ``debootstrap --variant=minbase`` from the mirror apt uses.
They need root, debootstrap, dpkg-deb, lintian and network access to that mirror; where any
is missing they are skipped, unless ``CONFIDE_REQUIRE_PACKAGING=1`` (set by .ci/run), which
turns a skip into a failure.

Speed-ups for local runs (CI uses neither and builds everything from scratch):
- ``CONFIDE_PACKAGING_DIST=DIR`` takes the .debs and the bundle from DIR instead of building;
- the debootstrap root is cached as a tar under ``CONFIDE_PACKAGING_CACHE`` (default
  /var/cache/confide-tests), keyed by date, so it is made at most once a day.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)  # type: ignore[union-attr]
PARTS = ("agent", "aggregator")
CACHE = Path(os.environ.get("CONFIDE_PACKAGING_CACHE", "/var/cache/confide-tests"))
_TOOLS = ("debootstrap", "dpkg-deb", "lintian", "unshare", "chroot", "systemd-analyze")


def need(condition: bool, why: str) -> None:
    """Skip the test when ``condition`` is false, or fail it when CI requires these tests."""
    if condition:
        return
    if os.environ.get("CONFIDE_REQUIRE_PACKAGING") == "1":
        pytest.fail(f"packaging test cannot run: {why}")
    pytest.skip(why)


def need_packaging_host() -> None:
    """Root and the Debian tools the packaging tests drive."""
    need(os.geteuid() == 0, "needs root (debootstrap, chroot, mount namespaces)")
    missing = [t for t in _TOOLS if shutil.which(t) is None]
    need(not missing, f"missing {', '.join(missing)} (apt-get install debootstrap lintian)")
    need(Path("/usr/bin/python3.11").exists(), "needs Debian's /usr/bin/python3.11")


def sh(
    argv: Sequence[str | Path], *, timeout: float = 900, check: bool = True, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a command and capture its output as text; a failure shows both streams."""
    done = subprocess.run(  # type: ignore[call-overload]
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{argv!r} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}"
            f"\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done  # type: ignore[no-any-return]


def _mirror() -> str:
    """The Debian mirror apt on this host uses for bookworm (deb822 or one-line sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        if not src.is_file():
            continue
        text = src.read_text()
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:.*\bbookworm\b", stanza, re.M)
            if uris and suites and "debian-security" not in uris.group(1):
                return uris.group(1)
        one = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M)
        if one:
            return one.group(1)
    return "http://deb.debian.org/debian"


def _debootstrap_tar() -> Path:
    """A tar of a fresh ``debootstrap --variant=minbase bookworm`` root, made once a day."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"bookworm-minbase-{datetime.date.today():%Y%m%d}.tar"
    if tar.exists():
        return tar
    for old in CACHE.glob("bookworm-minbase-*.tar"):
        old.unlink()
    root = CACHE / "debootstrap.tmp"
    _remove_root(root)
    done = sh(["debootstrap", "--variant=minbase", "bookworm", root, _mirror()], check=False)
    need(done.returncode == 0, f"debootstrap failed (mirror reachable?): {done.stderr[-500:]}")
    _unmount_below(root)
    partial = tar.with_suffix(".partial")
    sh(["tar", "-C", root, "-cf", partial, "."])
    partial.rename(tar)
    _remove_root(root)
    return tar


def _unmount_below(root: Path) -> None:
    """Unmount everything mounted at or below ``root``, deepest first."""
    real = os.path.realpath(root)
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == real or point.startswith(real + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _remove_root(root: Path) -> None:
    """Delete a root tree, never following a mount into the host (unmount first)."""
    if not root.exists():
        return
    _unmount_below(root)
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)


class Chroot:
    """A fresh Debian 12 root with /proc, /sys and /dev mounted, run with ``chroot``."""

    def __init__(self, path: Path, tar: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        with tarfile.open(tar) as t:
            t.extractall(path, filter="fully_trusted")
        shutil.copy2("/etc/resolv.conf", path / "etc/resolv.conf")
        # Maintainer scripts must not start services in the test root (policy-rc.d, 101).
        rc = path / "usr/sbin/policy-rc.d"
        rc.write_text("#!/bin/sh\nexit 101\n")
        rc.chmod(0o755)
        self._apt_updated = False
        self.mount()

    def mount(self) -> None:
        """Mount /proc, /sys and the host's /dev into the root (for chroot use)."""
        for fs, point, opts in (
            ("proc", "proc", ["-t", "proc"]),
            ("sysfs", "sys", ["-t", "sysfs"]),
            ("/dev", "dev", ["--rbind"]),
        ):
            sh(["mount", *opts, fs, self.path / point])

    def unmount(self) -> None:
        """Unmount what ``mount`` mounted (before booting the root as a container)."""
        _unmount_below(self.path)

    def run(
        self, *argv: str, net: bool = True, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the root (in a new, empty network namespace unless ``net``)."""
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "DEBIAN_FRONTEND": "noninteractive",
        }
        prefix = [] if net else ["unshare", "--net"]
        return sh([*prefix, "chroot", self.path, *argv], env=env, check=check, timeout=timeout)

    def apt_install(self, *what: str) -> None:
        """apt-get install (no recommends) inside the root, from the host's mirror."""
        if not self._apt_updated:
            self.run("apt-get", "update", "-qq")
            self._apt_updated = True
        self.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *what)

    def close(self) -> None:
        """Unmount and delete the root."""
        _remove_root(self.path)


# Two cores in CI: debootstrap (mostly download) and lintian (one core for minutes on the
# agent's 1.2 GB) run in the background while the builds and installs use the other core.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="packaging")


@pytest.fixture(scope="session")
def _bookworm_future() -> concurrent.futures.Future[Path]:
    """debootstrap (or the day's cached tar), started as soon as any packaging test needs it."""
    need_packaging_host()
    return _POOL.submit(_debootstrap_tar)


@pytest.fixture(scope="session")
def bookworm_tar(_bookworm_future: concurrent.futures.Future[Path]) -> Path:
    """The cached (or freshly made) minbase bookworm root as a tar."""
    return _bookworm_future.result(timeout=1800)


def _dist_override() -> Path | None:
    value = os.environ.get("CONFIDE_PACKAGING_DIST")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def debs(
    tmp_path_factory: pytest.TempPathFactory, _bookworm_future: concurrent.futures.Future[Path]
) -> dict[str, Path]:
    """Both .debs, built by packaging/build-deb (or taken from CONFIDE_PACKAGING_DIST)."""
    out = _dist_override()
    if out is None:
        out = tmp_path_factory.mktemp("dist")
        work = tmp_path_factory.mktemp("work")
        t0 = time.monotonic()
        sh([REPO / "packaging/build-deb", "--out", out, "--work", work], timeout=1800)
        print(f"build-deb: {time.monotonic() - t0:.0f}s")
        _remove_root(work)
    found = {p: next(out.glob(f"confide-{p}_{VERSION}_*.deb"), None) for p in PARTS}
    assert all(found.values()), f"build-deb made {sorted(out.iterdir())}"
    return {p: path for p, path in found.items() if path is not None}


def _lintian(deb: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = sh(["lintian", "--tag-display-limit", "0", deb], check=False, timeout=3600)
    return done, time.monotonic() - t0


@pytest.fixture(scope="session")
def lintian(
    debs: dict[str, Path],
) -> dict[str, concurrent.futures.Future[tuple[subprocess.CompletedProcess[str], float]]]:
    """lintian's run on each .deb (output, seconds), started in the background once built."""
    return {part: _POOL.submit(_lintian, deb) for part, deb in debs.items()}


@pytest.fixture(scope="session")
def bundle(
    tmp_path_factory: pytest.TempPathFactory, _bookworm_future: concurrent.futures.Future[Path]
) -> Path:
    """The offline bundle, built by packaging/build-bundle (or from CONFIDE_PACKAGING_DIST)."""
    out = _dist_override()
    if out is None:
        out = tmp_path_factory.mktemp("bundle")
        work = tmp_path_factory.mktemp("bwork")
        t0 = time.monotonic()
        sh([REPO / "packaging/build-bundle", "--out", out, "--work", work], timeout=1800)
        print(f"build-bundle: {time.monotonic() - t0:.0f}s")
        shutil.rmtree(work)
    found = next(out.glob(f"confide-bundle-{VERSION}-*.tar"), None)
    assert found is not None, f"build-bundle made {sorted(out.iterdir())}"
    return found
