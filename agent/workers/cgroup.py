"""A control group per sandboxed worker: a process cap and a memory cap the job cannot lift.

rlimits alone do not hold a fork bomb when the daemon runs as root (root's processes are not
counted against RLIMIT_NPROC) and RLIMIT_AS counts reserved, not used, memory. Where the host
lets the daemon manage a cgroup, each worker gets its own, with ``pids.max`` and a memory limit;
the worker's first process joins it before it execs bubblewrap, so everything the job starts
is inside. Two layouts are handled:

- cgroup v2 (unified): a child of the daemon's own cgroup (systemd's ``Delegate=yes`` gives the
  service one); the daemon first moves itself into a ``daemon`` leaf so that its cgroup may
  enable the ``pids`` and ``memory`` controllers for children (the "no internal processes"
  rule);
- cgroup v1: one child in each of the ``pids`` and ``memory`` hierarchies.

Where neither works (no permission, controllers absent), ``create`` returns None and the
sandbox falls back to rlimits; ``agent.workers.sandbox.probe`` reports which is in force.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WorkerCgroup", "create"]

_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class WorkerCgroup:
    """One worker's cgroup directories (one on v2, one per controller on v1)."""

    dirs: tuple[Path, ...]
    version: int
    caps_memory: bool

    def join(self) -> None:
        """Move the calling process in (called in the child before exec; async-signal-safe)."""
        for d in self.dirs:
            fd = os.open(d / "cgroup.procs", os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def limits_hit(self) -> tuple[str, ...]:
        """Which caps the kernel enforced so far: ``memory`` (an OOM kill inside) and
        ``processes`` (a fork refused at ``pids.max``), from the groups' event counters."""
        hit: list[str] = []
        for d in self.dirs:
            if _counter(d / "pids.events", "max") > 0:
                hit.append("processes")
            oom = max(
                _counter(d / "memory.events", "oom_kill"),
                _counter(d / "memory.oom_control", "oom_kill"),
            )
            if oom > 0:
                hit.append("memory")
        return tuple(dict.fromkeys(hit))

    def close(self, *, timeout: float = 5.0) -> None:
        """Kill whatever is left inside, wait until it is gone, remove the directories."""
        deadline = time.monotonic() + timeout
        for d in self.dirs:
            kill = d / "cgroup.kill"
            if kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1")
            while True:
                try:
                    pids = [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                if not pids or time.monotonic() > deadline:
                    break
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)  # exits are asynchronous; the deadline bounds the wait
            with contextlib.suppress(OSError):
                d.rmdir()


def _counter(path: Path, key: str) -> int:
    """The value of ``key`` in a cgroup ``key value`` file; 0 where either is missing."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own_path(controller: str, proc_cgroup: str) -> str | None:
    """This process's cgroup path for ``controller`` ('' for v2) from /proc/self/cgroup."""
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return path
    return None


def _v2(name: str, *, pids: int, memory: int | None, root: Path, mine: str) -> WorkerCgroup:
    base = root / mine.lstrip("/")
    control = base / "cgroup.subtree_control"
    wanted = {"pids"} | ({"memory"} if memory is not None else set())
    if not wanted <= set((base / "cgroup.controllers").read_text().split()):
        raise OSError("controllers not available")
    if not wanted <= set(control.read_text().split()):
        try:
            control.write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        except OSError:
            # "No internal processes": the daemon moves into a leaf of its own first.
            leaf = base / "daemon"
            leaf.mkdir(exist_ok=True)
            for pid in (base / "cgroup.procs").read_text().split():
                (leaf / "cgroup.procs").write_text(pid)
            control.write_text(" ".join(f"+{c}" for c in sorted(wanted)))
    d = base / f"worker-{name}"
    d.mkdir(mode=0o700)
    try:
        (d / "pids.max").write_text(str(pids))
        if memory is not None:
            (d / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
    except OSError:
        d.rmdir()
        raise
    return WorkerCgroup(dirs=(d,), version=2, caps_memory=memory is not None)


def _v1(name: str, *, pids: int, memory: int | None, root: Path, proc: str) -> WorkerCgroup:
    made: list[Path] = []
    try:
        for controller, settings in (
            ("pids", {"pids.max": pids}),
            ("memory", {"memory.limit_in_bytes": memory} if memory is not None else None),
        ):
            if settings is None:
                continue
            mine = _own_path(controller, proc)
            if mine is None:
                raise OSError(f"no {controller} hierarchy")
            d = root / controller / mine.lstrip("/") / f"confide-worker-{name}"
            d.mkdir(mode=0o700)
            made.append(d)
            for key, value in settings.items():
                (d / key).write_text(str(value))
    except OSError:
        for d in made:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return WorkerCgroup(dirs=tuple(made), version=1, caps_memory=memory is not None)


def create(name: str, *, pids: int, memory: int | None, root: Path = _ROOT) -> WorkerCgroup | None:
    """A fresh cgroup for one worker with these caps, or None where the host gives none.

    Args:
        name: unique among this daemon's workers (a job id and a counter).
        pids: most processes and threads inside.
        memory: most bytes of memory inside; None for no memory cap.
        root: the cgroup mount point.
    """
    try:
        proc = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]
    mine = _own_path("", proc)
    if mine is not None and (root / "cgroup.controllers").exists():
        with contextlib.suppress(OSError):
            return _v2(safe, pids=pids, memory=memory, root=root, mine=mine)
    with contextlib.suppress(OSError):
        return _v1(safe, pids=pids, memory=memory, root=root, proc=proc)
    return None
