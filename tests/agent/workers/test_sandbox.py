"""The worker sandbox, attacked from inside: real bubblewrap, the real filter, real limits."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import sys
import textwrap
from pathlib import Path

import pytest

from agent.workers.sandbox import BUNDLE_MOUNT, Limits, SandboxSpec, probe, runtime_paths, start

BWRAP = shutil.which("bwrap")
pytestmark = pytest.mark.skipif(
    BWRAP is None or not probe().sandboxed, reason="bubblewrap cannot build a sandbox here"
)


def _inside(
    script: str,
    *,
    dataset: Path,
    limits: Limits | None = None,
    timeout: float = 60,
    may_die: bool = False,
    bundle: Path | None = None,
) -> dict[str, object]:
    """Run ``script`` in the sandbox; it prints one JSON object as its last line.

    With ``may_die``, a worker killed by a limit gives ``{"killed": exit status}``.
    """
    assert BWRAP is not None
    spec = SandboxSpec(
        interpreter=Path(sys.executable),
        runtime=runtime_paths(),
        dataset=dataset,
        bundle=bundle,
        env={"PATH": "/usr/bin:/bin"},
        limits=limits or Limits(),
    )
    proc, confinement = start(
        spec,
        bwrap=BWRAP,
        command=[sys.executable, "-c", textwrap.dedent(script)],
        name=f"test-{next(_SEQ)}",
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
        confinement.close()
    assert not _leftover_cgroups(), "a worker's cgroup outlived it"
    lines = stdout.decode().strip().splitlines()
    if may_die and not lines:
        return {"killed": proc.returncode}
    assert lines, stderr.decode()[-2000:]
    return dict(json.loads(lines[-1]))


_SEQ = itertools.count()


def _leftover_cgroups() -> list[Path]:
    """Cgroup directories this test process's workers left behind."""
    root = Path("/sys/fs/cgroup")
    return [p for p in root.glob("**/confide-worker-test-*") if p.is_dir()] + [
        p for p in root.glob("**/worker-test-*") if p.is_dir()
    ]


def _try(label: str, body: str) -> str:
    """A script fragment that records ``ok`` or the errno name of ``body`` under ``label``."""
    return textwrap.dedent(f"""
        try:
            {body}
            out[{label!r}] = "ok"
        except OSError as exc:
            out[{label!r}] = errno.errorcode.get(exc.errno, str(exc))
    """)


@pytest.fixture()
def site(tmp_path: Path) -> dict[str, Path]:
    """A site's private files beside one exposed dataset."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "site.key").write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    (state / "ledger.db").write_bytes(b"SQLite format 3\x00")
    data = tmp_path / "data"
    data.mkdir()
    (data / "exposed.csv").write_text("a,label\n1,0\n")
    (data / "other.csv").write_text("a,label\n2,1\n")
    return {"state": state, "data": data}


def test_no_network_not_even_the_hosts_loopback(site):
    """Inet sockets are refused by the filter and the host's listener is unreachable anyway."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        out = _inside(
            "import errno, json, socket\nout = {}\n"
            + _try("inet", f"socket.create_connection(('127.0.0.1', {port}), timeout=2)")
            + _try("inet6", "socket.socket(socket.AF_INET6)")
            + _try("netlink", "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)")
            + _try("dns", "socket.getaddrinfo('example.org', 443)")
            + _try("unix", "socket.socketpair()")
            + "print(json.dumps(out))",
            dataset=site["data"] / "exposed.csv",
        )
    finally:
        listener.close()
    assert out["inet"] == "EAFNOSUPPORT"
    assert out["inet6"] == "EAFNOSUPPORT"
    assert out["netlink"] == "EAFNOSUPPORT"
    assert out["dns"] != "ok"
    assert out["unix"] == "ok"


def test_the_filesystem_holds_only_the_runtime_and_the_dataset(site):
    """Keys, ledger, other datasets, a shell and curl are absent; only /tmp is writable."""
    state, data = site["state"], site["data"]
    out = _inside(
        "import errno, json, os\nout = {}\n"
        + _try("dataset", f"open({str(data / 'exposed.csv')!r}).read()")
        + _try("other", f"open({str(data / 'other.csv')!r}).read()")
        + _try("key", f"open({str(state / 'site.key')!r}).read()")
        + _try("ledger", f"open({str(state / 'ledger.db')!r}, 'rb').read()")
        + _try("write_dataset", f"open({str(data / 'exposed.csv')!r}, 'a').write('x')")
        + _try("write_runtime", f"open({sys.prefix!r} + '/evil', 'w').write('x')")
        + _try("tmp", "open('/tmp/scratch', 'w').write('x')")
        + _try("sh", "os.execv('/bin/sh', ['sh', '-c', 'true'])")
        + _try("curl", "os.execv('/usr/bin/curl', ['curl', 'http://127.0.0.1'])")
        + _try("passwd", "open('/etc/passwd').read()")
        + _try("root", "open('/evil', 'w').write('x')")
        + _try("dev", "open('/dev/evil', 'w').write('x')")
        + _try("shm", "os.makedirs('/dev/shm', exist_ok=True); open('/dev/shm/x', 'w')")
        + _try("devnull", "open('/dev/null', 'w').write('x')")
        + "print(json.dumps(out))",
        dataset=data / "exposed.csv",
    )
    assert out["dataset"] == "ok" and out["tmp"] == "ok"
    # bwrap's root and /dev are tmpfs: read-only, so /tmp (bounded) is the one writable place;
    # device nodes still work.
    assert out["root"] == out["dev"] == out["shm"] == "EROFS" and out["devnull"] == "ok"
    assert out["other"] == out["key"] == out["ledger"] == "ENOENT"
    assert out["write_dataset"] == "EROFS" and out["write_runtime"] == "EROFS"
    assert out["sh"] == out["curl"] == out["passwd"] == "ENOENT"


def test_the_bundle_is_readable_but_nothing_in_it_can_change(site, tmp_path):
    """The unpacked code is bound read-only: no write, chmod, unlink, rename or new file."""
    from agent.workers.bundles import SiteBundles
    from confide import bundle

    archive = bundle.pack({"model.py": b"X = 1\n", "nets/a.py": b"A = 1\n"})
    copy = SiteBundles(tmp_path / "bundles").unpacked(bundle.digest(archive), lambda: archive)
    model = copy / "model.py"
    inside = Path(BUNDLE_MOUNT)
    out = _inside(
        "import errno, json, os\nout = {}\n"
        + _try("read", f"open({str(inside / 'model.py')!r}).read()")
        + _try("host_path", f"open({str(model)!r}).read()")
        + _try("write", f"open({str(inside / 'model.py')!r}, 'a').write('x')")
        + _try("chmod", f"os.chmod({str(inside / 'model.py')!r}, 0o777)")
        + _try("unlink", f"os.unlink({str(inside / 'model.py')!r})")
        + _try("rename", f"os.rename({str(inside / 'model.py')!r}, {str(inside / 'x.py')!r})")
        + _try("create", f"open({str(inside / 'nets' / 'b.py')!r}, 'w')")
        + "print(json.dumps(out))",
        dataset=site["data"] / "exposed.csv",
        bundle=copy,
    )
    assert out["read"] == "ok"
    assert out["host_path"] == "ENOENT"  # where the agent keeps it is not in the worker's world
    assert out["chmod"] == "EROFS"  # the bind, not the files' modes: their owner could chmod
    assert {out[k] for k in ("write", "unlink", "rename", "create")} <= {"EROFS", "EACCES"}
    assert model.read_bytes() == b"X = 1\n"


def test_ptrace_namespaces_and_mounts_are_refused(site):
    """The worker can neither trace a process, make namespaces nor mount; fork still works."""
    out = _inside(
        """
        import ctypes, errno, json, os
        libc = ctypes.CDLL(None, use_errno=True)
        out = {}
        def call(label, fn):
            out[label] = "ok" if fn() == 0 else errno.errorcode[ctypes.get_errno()]
        call("ptrace", lambda: libc.ptrace(16, 1, 0, 0))
        call("unshare", lambda: libc.unshare(0x40000000))
        call("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitpid(pid, 0)[1] >> 8
        out["pid"] = os.getpid()
        out["kill_parent"] = "ok"
        try:
            os.kill(os.getppid(), 0)
        except OSError as exc:
            out["kill_parent"] = errno.errorcode[exc.errno]
        print(json.dumps(out))
        """,
        dataset=site["data"] / "exposed.csv",
    )
    assert out["ptrace"] == out["unshare"] == out["mount"] == "EPERM"
    assert out["fork"] == 7
    # Its own PID namespace: the daemon is not even a visible process.
    assert out["pid"] <= 3


def test_an_allocation_past_the_memory_limit_is_stopped(site):
    """Allocating past the policy's memory limit fails or gets the worker killed, never more."""
    out = _inside(
        """
        import json
        try:
            blob = bytearray(1024 * 1024 * 1024)
            blob[::4096] = b"x" * len(blob[::4096])
            print(json.dumps({"alloc": "ok"}))
        except MemoryError:
            print(json.dumps({"alloc": "MemoryError"}))
        """,
        dataset=site["data"] / "exposed.csv",
        limits=Limits(memory_bytes=512 * 1024 * 1024),
        may_die=True,
    )
    assert out.get("alloc") != "ok"


def test_a_sandboxed_worker_trains_and_evaluates(tmp_path):
    """The real worker runs its ops inside the sandbox and still learns."""
    from agent.workers.handle import Sandboxing, Worker
    from confide.models import initial_weights
    from tests.confide_worker.conftest import add, make_job, write_breast_cancer_csv

    assert BWRAP is not None
    dataset = write_breast_cancer_csv(tmp_path / "bc.csv")
    job = make_job(local_epochs=1)
    worker = Worker.start(
        job=job,
        job_id="job-sandboxed",
        dataset=dataset,
        device="cpu",
        timeout=120,
        sandbox=Sandboxing(bwrap=BWRAP, limits=Limits(threads=1)),
    )
    try:
        weights = initial_weights(job.model, job.dataset, seed=1)
        before = worker.evaluate(weights)
        result = worker.train(weights, dp=None, round=1)
        after = worker.evaluate(add(weights, result.delta))
        assert worker.info is not None and worker.info.pid <= 3
        assert after.loss < before.loss
    finally:
        worker.stop()


def test_a_fork_bomb_stops_at_the_process_limit(site):
    """Forking past the policy's process limit fails inside the sandbox; the host is unharmed."""
    out = _inside(
        """
        import json, os
        out = {"forked": 0, "error": None}
        children = []
        try:
            for _ in range(10_000):
                pid = os.fork()
                if pid == 0:
                    import time
                    time.sleep(30)  # the child keeps its pid while the parent forks on
                    os._exit(0)
                children.append(pid)
                out["forked"] += 1
        except OSError as exc:
            out["error"] = exc.strerror
        for pid in children:
            os.kill(pid, 9)
        print(json.dumps(out))
        """,
        dataset=site["data"] / "exposed.csv",
        limits=Limits(processes=32),
    )
    assert out["error"] is not None
    assert out["forked"] < 32
