"""The worker's seccomp filter: a classic-BPF program refusing the syscalls a job never needs.

Namespaces already take the worker's network and view of the host away; this filter is the
second wall, applied by bubblewrap (``--seccomp FD``) after it has built the sandbox and set
``no_new_privs``. It is a deny list on top of a default-allow, so torch, NumPy and Opacus run
unchanged, and it refuses:

- every socket family but ``AF_UNIX`` (so no inet, inet6, netlink or packet socket can be
  opened, even on a host whose network namespace were shared by mistake);
- ``ptrace``, ``process_vm_readv/writev`` (no reading another process's memory);
- ``mount``, ``umount2``, ``pivot_root``, ``chroot``, the new mount API and ``open_by_handle_at``
  (no way out of the filesystem view);
- ``unshare``, ``setns`` and ``clone`` with any ``CLONE_NEW*`` flag; ``clone3`` answers
  ``ENOSYS`` because its flags sit behind a pointer BPF cannot read, and libc then falls back
  to ``clone``;
- ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, keyrings, kernel modules and
  ``kexec`` (kernel attack surface a training job has no use for).

A refused call fails with ``EPERM`` (``EAFNOSUPPORT`` for socket families), never kills the
process, so the job sees an ordinary error and the daemon reports it. Syscalls of another
architecture than the host's (the x32 ABI, 32-bit compat) are refused outright.

The program is built by hand (``struct sock_filter`` as the kernel defines it in
``linux/filter.h``) so the agent needs no libseccomp binding.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

from confide.errors import ConfigError

__all__ = ["Arch", "build_filter", "host_arch"]

# BPF instruction classes and fields (linux/bpf_common.h).
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
_BPF_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
_BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# seccomp return values (linux/seccomp.h).
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_RET_KILL_PROCESS = 0x80000000

# Offsets into struct seccomp_data: int nr; __u32 arch; __u64 ip; __u64 args[6].
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LOW = 16  # little-endian: the low 32 bits of args[0]

_AF_UNIX = 1
_CLONE_NEW_FLAGS = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)


@dataclass(frozen=True, slots=True)
class Arch:
    """One architecture's audit id and the syscall numbers the filter names."""

    name: str
    audit_arch: int
    socket: int
    clone: int
    clone3: int
    denied: dict[str, int]
    x32_bit: int = 0  # the x32 ABI's flag bit on x86_64; 0 where there is none


# Numbers from the kernel's syscall tables (arch/x86/entry/syscalls/syscall_64.tbl and
# include/uapi/asm-generic/unistd.h for arm64).
_X86_64 = Arch(
    name="x86_64",
    audit_arch=0xC000003E,
    socket=41,
    clone=56,
    clone3=435,
    x32_bit=0x40000000,
    denied={
        "ptrace": 101,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "mount": 165,
        "umount2": 166,
        "pivot_root": 155,
        "chroot": 161,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "mount_setattr": 442,
        "open_by_handle_at": 304,
        "name_to_handle_at": 303,
        "unshare": 272,
        "setns": 308,
        "bpf": 321,
        "perf_event_open": 298,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "init_module": 175,
        "finit_module": 313,
        "delete_module": 176,
        "kexec_load": 246,
        "kexec_file_load": 320,
        "reboot": 169,
        "swapon": 167,
        "swapoff": 168,
        "acct": 163,
    },
)
_AARCH64 = Arch(
    name="aarch64",
    audit_arch=0xC00000B7,
    socket=198,
    clone=220,
    clone3=435,
    denied={
        "ptrace": 117,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "mount": 40,
        "umount2": 39,
        "pivot_root": 41,
        "chroot": 51,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "mount_setattr": 442,
        "open_by_handle_at": 265,
        "name_to_handle_at": 264,
        "unshare": 97,
        "setns": 268,
        "bpf": 280,
        "perf_event_open": 241,
        "userfaultfd": 282,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "init_module": 105,
        "finit_module": 273,
        "delete_module": 106,
        "kexec_load": 104,
        "kexec_file_load": 294,
        "reboot": 142,
        "swapon": 224,
        "swapoff": 225,
        "acct": 89,
    },
)
_ARCHES = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}


def host_arch(machine: str | None = None) -> Arch:
    """The filter tables for this host (``platform.machine()``).

    Raises:
        ConfigError: no table for this architecture (the sandbox cannot be built here).
    """
    name = (machine or platform.machine()).lower()
    try:
        return _ARCHES[name]
    except KeyError:
        raise ConfigError(
            "sandbox",
            f"the worker's seccomp filter has no syscall table for architecture {name!r}",
        ) from None


def build_filter(arch: Arch | None = None) -> bytes:
    """The compiled filter, as the bytes of a ``struct sock_filter`` array for ``--seccomp``.

    Args:
        arch: the syscall tables to use; the host's by default.
    """
    arch = arch or host_arch()
    denied = sorted(set(arch.denied.values()))

    # Layout: head | one check per number | allow | socket block | clone block | tail.
    head_len = 4 if arch.x32_bit else 3
    n_checks = len(denied) + 3  # the denied numbers, socket, clone, clone3
    start_socket = head_len + n_checks + 1
    start_clone = start_socket + 2
    allow, eperm, enosys, eafnosupport, kill = (start_clone + 2 + i for i in range(5))

    program: list[bytes] = []

    def emit(code: int, k: int, *, jt: int | None = None, jf: int | None = None) -> None:
        pc = len(program)
        offsets = [0 if to is None else to - pc - 1 for to in (jt, jf)]
        if not all(0 <= o <= 255 for o in offsets):
            raise AssertionError("seccomp program too long for 8-bit jumps")
        program.append(struct.pack("<HBBI", code, offsets[0], offsets[1], k))

    emit(_BPF_LD_W_ABS, _OFF_ARCH)
    emit(_BPF_JEQ_K, arch.audit_arch, jf=kill)
    emit(_BPF_LD_W_ABS, _OFF_NR)
    if arch.x32_bit:
        emit(_BPF_JGE_K, arch.x32_bit, jt=eperm)
    for nr in denied:
        emit(_BPF_JEQ_K, nr, jt=eperm)
    emit(_BPF_JEQ_K, arch.socket, jt=start_socket)
    emit(_BPF_JEQ_K, arch.clone, jt=start_clone)
    emit(_BPF_JEQ_K, arch.clone3, jt=enosys)
    emit(_BPF_RET_K, _RET_ALLOW)
    assert len(program) == start_socket
    emit(_BPF_LD_W_ABS, _OFF_ARG0_LOW)
    emit(_BPF_JEQ_K, _AF_UNIX, jt=allow, jf=eafnosupport)
    emit(_BPF_LD_W_ABS, _OFF_ARG0_LOW)
    emit(_BPF_JSET_K, _CLONE_NEW_FLAGS, jt=eperm, jf=allow)
    assert len(program) == allow
    emit(_BPF_RET_K, _RET_ALLOW)
    emit(_BPF_RET_K, _RET_ERRNO | errno.EPERM)
    emit(_BPF_RET_K, _RET_ERRNO | errno.ENOSYS)
    emit(_BPF_RET_K, _RET_ERRNO | errno.EAFNOSUPPORT)
    emit(_BPF_RET_K, _RET_KILL_PROCESS)
    return b"".join(program)
