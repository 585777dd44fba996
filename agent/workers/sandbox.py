"""The worker's sandbox: a bubblewrap command line, its limits, and whether this host can build it.

Job code is untrusted by the site (DESIGN.md, trust model), so the worker that runs it is
started inside ``bwrap`` (Debian's ``bubblewrap``) with:

- new user, mount, PID, IPC, UTS, cgroup and network namespaces (``--unshare-all``): no network
  at all, not even the host's loopback;
- a filesystem built from nothing: the Python runtime and the worker's code read-only, the one
  dataset file read-only, a code bundle's unpacked folder read-only at ``BUNDLE_MOUNT``
  (``agent.workers.bundles``; not at its path in the agent's state, which the worker never
  learns), a private size-bounded ``/tmp``, a minimal ``/dev`` and its own
  ``/proc``; the root and ``/dev`` are remounted read-only, so ``/tmp`` is the one place it
  can write. No ``/etc`` beyond the dynamic loader's cache, no ``/usr/bin`` (no shell, no
  curl), none of the agent's state, keys, config, ledger or other datasets;
- the seccomp filter of ``agent.workers.seccomp`` (refuses inet sockets, ptrace, mount, bpf, new
  namespaces, ...);
- ``--die-with-parent`` and ``--new-session`` (a dying daemon takes its worker with it; the
  worker cannot push keystrokes into the daemon's terminal);
- resource limits from the site policy: a cgroup per worker (``agent.workers.cgroup``: processes and
  memory) where the host gives one, and rlimits set by a ``/bin/sh`` prefix before bwrap
  (address space where no cgroup caps memory, open files, processes, CPU seconds). Wall
  time per task is the worker handle's own timeout.

GPUs are reached only through device nodes bound for the ids the policy allows, with
``CUDA_VISIBLE_DEVICES`` set to them.

The daemon talks to the worker only over the stdin/stdout pipes it created (the seccomp
program travels on one extra inherited descriptor that bwrap reads and closes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.workers import cgroup
from agent.workers.cgroup import WorkerCgroup
from agent.workers.seccomp import build_filter

__all__ = [
    "BUNDLE_MOUNT",
    "Confinement",
    "Isolation",
    "Limits",
    "SandboxSpec",
    "bwrap_argv",
    "launcher",
    "probe",
    "runtime_paths",
    "seccomp_fd",
    "start",
]

_MiB = 1024 * 1024

BUNDLE_MOUNT = "/bundle"
"""Where a sandboxed worker finds its job's code bundle."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Resource limits for one worker, from the site policy.

    Args:
        memory_bytes: address-space limit (RLIMIT_AS); None leaves it unset (CUDA reserves far
            more virtual memory than it uses, so GPU sites usually leave it to a cgroup).
        cpu_seconds: CPU time limit (RLIMIT_CPU); None for none.
        open_files: RLIMIT_NOFILE.
        processes: RLIMIT_NPROC (threads count too; torch starts one per core).
        file_bytes: largest file the worker may write (RLIMIT_FSIZE), e.g. in its /tmp.
        tmp_bytes: size of its private /tmp.
        threads: CPU threads (OMP/MKL/torch), passed as environment.
        wall_seconds: the longest one worker operation (start included) may take before the
            worker is killed; None leaves the agent's ``[worker] task_timeout_s``.
        output_bytes: the most the worker may write to its stdout and stderr together; past
            it, it is killed (the daemon reads every byte, so a flood costs it CPU, not
            memory, and is cut short).
    """

    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    open_files: int = 1024
    processes: int = 512
    file_bytes: int = 1024 * _MiB
    tmp_bytes: int = 512 * _MiB
    threads: int = 0
    wall_seconds: float | None = None
    output_bytes: int = 64 * _MiB


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What one sandboxed worker may see.

    Args:
        interpreter: the Python executable (its real path is bound).
        runtime: directories bound read-only (interpreter prefix, site-packages, worker code).
        dataset: the dataset file, bound read-only at the same path (None: no data).
        bundle: a job's unpacked code bundle, bound read-only at ``BUNDLE_MOUNT`` (None: none).
        gpus: GPU ids whose device nodes are bound; empty for none.
        env: the worker's whole environment (nothing is inherited).
        limits: resource limits.
    """

    interpreter: Path
    runtime: tuple[Path, ...]
    dataset: Path | None
    bundle: Path | None = None
    gpus: tuple[int, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True, slots=True)
class Isolation:
    """Which isolation this host gives workers, for ``status``/``doctor`` and job admission.

    Args:
        sandboxed: True when bwrap built a test sandbox with every namespace.
        bwrap: the bwrap executable found, or None.
        detail: one line: what is in force, or what is missing and how to get it.
    """

    sandboxed: bool
    bwrap: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Confinement:
    """A started sandbox's resources: which caps the kernel enforced, and their removal.

    Args:
        group: the worker's cgroup, or None where the host gives none (rlimits only).
    """

    group: WorkerCgroup | None = None

    def limits_hit(self) -> tuple[str, ...]:
        """The cgroup caps the worker ran into so far (``memory``, ``processes``); call it
        before ``close``."""
        return () if self.group is None else self.group.limits_hit()

    def close(self) -> None:
        """Kill whatever is left inside and remove the cgroup; safe to call twice."""
        if self.group is not None:
            self.group.close()


def runtime_paths(code_roots: Sequence[Path] = ()) -> tuple[Path, ...]:
    """The directories a worker needs to run Python and its code, as real paths, deduplicated.

    Args:
        code_roots: package directories of the worker's own code (bound in addition to the
            interpreter's prefixes and site-packages).
    """
    import site
    import sysconfig

    wanted = [
        Path(sys.prefix),
        Path(sys.base_prefix),
        Path(sys.exec_prefix),
        Path(sysconfig.get_paths()["stdlib"]),
        Path(sysconfig.get_paths()["platstdlib"]),
        Path(sysconfig.get_paths()["purelib"]),
        Path(sysconfig.get_paths()["platlib"]),
        *(Path(p) for p in site.getsitepackages()),
        *code_roots,
    ]
    seen: list[Path] = []
    for path in wanted:
        real = path.resolve()
        if real.exists() and not any(real == s or real.is_relative_to(s) for s in seen):
            seen = [s for s in seen if not s.is_relative_to(real)] + [real]
    return tuple(sorted(seen))


def _system_binds() -> list[str]:
    """Shared libraries and the loader, read-only; /usr/bin and /bin are deliberately absent."""
    args: list[str] = []
    for lib in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32"):
        if os.path.isdir(lib):
            args += ["--ro-bind", lib, lib]
    for top in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d"):
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    return args


def _gpu_binds(gpus: Sequence[int]) -> list[str]:
    if not gpus:
        return []
    args: list[str] = []
    nodes = [f"/dev/nvidia{i}" for i in gpus]
    nodes += ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    for node in nodes:
        if os.path.exists(node):
            args += ["--dev-bind", node, node]
    return args


def bwrap_argv(spec: SandboxSpec, *, bwrap: str, seccomp: int, command: Sequence[str]) -> list[str]:
    """The full command line that runs ``command`` inside the sandbox.

    Args:
        spec: what the worker may see.
        bwrap: the bwrap executable.
        seccomp: the inherited descriptor holding the compiled filter (``seccomp_fd``).
        command: the worker's argv, starting with the interpreter.
    """
    interpreter = spec.interpreter.resolve()
    args = [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--hostname",
        "confide-worker",
        # Mounted first, so binds below /tmp (a dataset there) stay visible on top.
        "--size",
        str(spec.limits.tmp_bytes),
        "--tmpfs",
        "/tmp",
        "--dev",
        "/dev",
        *_gpu_binds(spec.gpus),
        "--proc",
        "/proc",
        *_system_binds(),
    ]
    for path in spec.runtime:
        args += ["--ro-bind", str(path), str(path)]
    if not any(interpreter.is_relative_to(p) for p in spec.runtime):
        args += ["--ro-bind", str(interpreter), str(interpreter)]
    if spec.dataset is not None:
        # The file itself, at the path the worker was told (a link's target, not the link).
        args += ["--ro-bind", str(spec.dataset.resolve()), str(spec.dataset.absolute())]
    if spec.bundle is not None:
        # Read-only whatever the files' modes: the job cannot change the code it was checked as.
        args += ["--ro-bind", str(spec.bundle.resolve()), BUNDLE_MOUNT]
    # Last: the root and /dev that bwrap built are tmpfs the worker could otherwise write to
    # (and fill); read-only, only its own size-bounded /tmp takes writes (device nodes still
    # work: the flag is the file system's, not the devices').
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    args += ["--chdir", "/tmp", "--seccomp", str(seccomp)]
    env = dict(spec.env)
    env.setdefault("HOME", "/tmp")
    env.setdefault("TMPDIR", "/tmp")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in spec.gpus)
    if spec.limits.threads > 0:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(spec.limits.threads)
    for key in sorted(env):
        args += ["--setenv", key, env[key]]
    # Run it by the given path: a virtual environment is found from the link's location.
    return [*args, "--", str(spec.interpreter), *command[1:]]


def seccomp_fd() -> int:
    """A fresh inheritable descriptor positioned at the start of the compiled filter."""
    fd = os.memfd_create("confide-seccomp", 0)
    os.write(fd, build_filter())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def launcher(limits: Limits, *, cgroup: WorkerCgroup | None = None) -> list[str]:
    """The prefix that joins ``cgroup``, applies ``limits`` with ``prlimit``, then execs bwrap.

    A command line rather than a ``preexec_fn``: Python runs a ``preexec_fn`` after a plain
    fork(), which in the daemon (gRPC threads running) sets off gRPC's fork handlers; a
    command line lets ``subprocess`` use vfork/posix_spawn as for any other child. ``/bin/sh``
    moves itself into the cgroup, then execs util-linux's ``prlimit`` (Essential on Debian),
    which sets the rlimits and execs bwrap. With a cgroup that caps memory the address-space
    limit is left unset: the cgroup counts memory used, not address space reserved. File
    sizes are bounded by the size of the private /tmp.
    """
    limit = [
        f"--nofile={int(limits.open_files)}",
        f"--nproc={int(limits.processes)}",
        "--core=0",
    ]
    if limits.memory_bytes is not None and (cgroup is None or not cgroup.caps_memory):
        limit.append(f"--as={int(limits.memory_bytes)}")
    if limits.cpu_seconds is not None:
        limit.append(f"--cpu={int(limits.cpu_seconds)}")
    prlimit = [shutil.which("prlimit") or "/usr/bin/prlimit", *limit, "--"]
    if cgroup is None:
        return prlimit
    join = (
        'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 125; shift; done; '
        'shift; exec "$@"'
    )
    procs = [str(d / "cgroup.procs") for d in cgroup.dirs]
    return ["/bin/sh", "-c", join, "confide-sandbox", *procs, "--", *prlimit]


def start(
    spec: SandboxSpec, *, bwrap: str, command: Sequence[str], name: str
) -> tuple[subprocess.Popen[bytes], Confinement]:
    """Start ``command`` in the sandbox with stdin/stdout/stderr pipes.

    Args:
        spec: what the worker may see and its limits.
        bwrap: the bwrap executable.
        command: the worker's argv, starting with the interpreter.
        name: unique among this daemon's running workers (names its cgroup).

    Returns:
        The process, and its confinement: ``close`` it once the process has exited.

    Raises:
        OSError: bwrap could not be started.
    """
    group = cgroup.create(name, pids=spec.limits.processes, memory=spec.limits.memory_bytes)
    fd = seccomp_fd()
    try:
        proc = subprocess.Popen(
            [
                *launcher(spec.limits, cgroup=group),
                *bwrap_argv(spec, bwrap=bwrap, seccomp=fd, command=command),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            pass_fds=(fd,),
        )
    except OSError:
        if group is not None:
            group.close()
        raise
    finally:
        os.close(fd)
    return proc, Confinement(group)


def probe(*, bwrap: str | None = None, timeout: float = 10.0) -> Isolation:
    """Try to build a sandbox here (every namespace, the filter) and say what is in force."""
    exe = bwrap or shutil.which("bwrap")
    if exe is None:
        return Isolation(
            sandboxed=False,
            bwrap=None,
            detail="bubblewrap is not installed: apt-get install bubblewrap",
        )
    fd = seccomp_fd()
    try:
        spec = SandboxSpec(interpreter=Path(sys.executable), runtime=runtime_paths(), dataset=None)
        argv = bwrap_argv(spec, bwrap=exe, seccomp=fd, command=[sys.executable, "-c", "import sys"])
        done = subprocess.run(
            argv, pass_fds=(fd,), capture_output=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Isolation(sandboxed=False, bwrap=exe, detail=f"bwrap could not run: {exc}")
    finally:
        os.close(fd)
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return Isolation(
            sandboxed=False,
            bwrap=exe,
            detail=f"bwrap cannot build the sandbox here ({why[0]}); if unprivileged user "
            "namespaces are disabled, enable them (sysctl kernel.unprivileged_userns_clone=1, "
            "or kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu)",
        )
    return Isolation(
        sandboxed=True,
        bwrap=exe,
        detail="workers run in bubblewrap: user, mount, pid, ipc, uts, net namespaces; "
        "seccomp filter; rlimits",
    )
