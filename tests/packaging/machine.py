"""A Debian 12 root booted under systemd-nspawn, to run the installed units under a real systemd.

The container gets its own network namespace (loopback only) and shares nothing with the host
but the kernel. Two mounts nspawn itself puts over /proc (a fake /proc/kmsg and
/proc/sys/kernel/random/boot_id) are removed before any unit starts: a real host has neither,
and with them in place the kernel refuses every unprivileged user namespace a fresh /proc
(mount_too_revealing), so the agent's worker sandbox could not be tested at all.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.support.wait import wait_for

_PATH = "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_ENV = ["env", "-i", _PATH, "HOME=/root", "LANG=C.UTF-8"]


class BootError(Exception):
    """The container did not come up."""


class Machine:
    """A booted container; ``run`` executes a command inside all of its namespaces."""

    def __init__(self, root: Path, log: Path, *, name: str = "confide-test") -> None:
        env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="1")
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn",
                "--directory",
                str(root),
                "--machine",
                name,
                "--boot",
                "--private-network",
                "--register=no",
                "--keep-unit",
                "--console=passive",
                "--quiet",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.logfile = log
        self.leader = self._wait_leader(timeout=60)

    def _wait_leader(self, *, timeout: float) -> int:
        def systemd_pid() -> int | None:
            if self.proc.poll() is not None:
                raise BootError(f"systemd-nspawn exited {self.proc.returncode}: {self.log()}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for pid in children.read_text().split() if children.exists() else []:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            return None

        try:
            pid = wait_for(systemd_pid, timeout=timeout, what="systemd inside the container")
        except AssertionError as exc:
            raise BootError(f"{exc}: {self.log()}") from exc
        assert pid is not None
        return pid

    def log(self) -> str:
        """The container's console output so far (the tail)."""
        return self.logfile.read_text(errors="replace")[-4000:]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the container (as root, clean environment)."""
        done = subprocess.run(
            ["nsenter", "--target", str(self.leader), "--all", *_ENV, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{argv!r} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
        return done

    def boot(self) -> str:
        """Wait until systemd reports the boot finished; unmask /proc as a host has it."""
        try:
            # "offline" until systemd's socket exists; --wait then waits out "starting".
            state = wait_for(
                lambda: self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=180
                ).stdout.strip(),
                until=lambda s: s not in ("offline", "initializing", "starting", ""),
                timeout=180,
                what="systemd to finish booting",
            )
        except AssertionError as exc:
            raise BootError(f"{exc}: {self.log()}") from exc
        if state not in ("running", "degraded"):
            raise BootError(f"system state {state!r}: {self.log()}")
        for mask in ("/proc/kmsg", "/proc/sys/kernel/random/boot_id"):
            self.run("umount", mask, check=False)
        masks = self.run("findmnt", "-rno", "TARGET", "-R", "/proc").stdout.split()
        if masks != ["/proc"]:
            raise BootError(f"mounts over /proc remain: {masks}")
        return state

    def close(self) -> None:
        """Power the container off (SIGTERM to nspawn), killing it if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
