"""Build ``confide-agent`` and ``confide-aggregator`` Debian packages with dpkg-deb.

Run as ``packaging/build-deb [--out dist] [--only agent|aggregator] [--xz-level N]``.

Each package holds one part of Confide in its own virtual environment of Debian's
python3.11 under ``/opt/confide/<part>`` (pinned by constraints.txt), its systemd unit
(installed, never enabled or started by the package), its config under ``/etc/confide`` as a
conffile, docs under ``/usr/share/doc``, and maintainer scripts that create the ``confide``
system user and delete state (``/var/lib/confide/<part>``) only on purge. The agent package
carries the worker runtime too (torch CPU, Opacus, onnxruntime) and depends on bubblewrap;
the aggregator package carries no torch and the operator CLI ``confide``. The worker runtime
is the ``confide_worker`` package in the agent's venv, which the daemon starts per job as
``/opt/confide/agent/bin/python -m confide_worker``; its ``confide-worker`` script stays in
that venv and is not linked into /usr/bin (it is no command for people).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, build_venv, build_wheel, deb_arch, log, run, version

HERE = ROOT / "packaging"
MAINTAINER = "Confide maintainers <confide@example.org>"


@dataclass(frozen=True)
class Part:
    """One binary package: what it holds and how its config is adjusted for it."""

    name: str
    summary: str
    description: str
    depends: tuple[str, ...]
    commands: tuple[str, ...]  # linked into /usr/bin
    internal: tuple[str, ...]  # kept in the venv only, not linked: what the daemon itself runs
    drop: tuple[str, ...]  # packages of the project's wheel this part never runs
    config: str  # examples/<config>, installed as /etc/confide/<config>
    settings: tuple[tuple[str, str, str], ...]  # (section, key, value) set in the conffile
    docs: tuple[tuple[Path, str], ...]  # (source, name under /usr/share/doc/<pkg>/examples)


# manylinux wheels may link only these system libraries (PEP 600); the rest are vendored.
# procps: /bin/kill, which the units' ExecReload= runs (systemctl reload sends SIGHUP).
_BASE_DEPENDS = (
    "python3.11",
    "adduser",
    "procps",
    "libc6 (>= 2.28)",
    "libgcc-s1",
    "libstdc++6",
)

PARTS = {
    "agent": Part(
        name="agent",
        summary="Confide federated-learning site agent",
        description=(
            "The site daemon of Confide: it dials the federation's aggregator over mutual\n"
            "TLS, checks each job against the site's policy and privacy budget, trains in a\n"
            "sandboxed worker process (bubblewrap; torch CPU, Opacus) and sends only\n"
            "clipped, noised, masked and signed model updates. Data never leaves the site.\n"
            "Includes confide-agent (daemon, enroll, status, budget) and its systemd unit,\n"
            "installed but not enabled."
        ),
        depends=(*_BASE_DEPENDS, "bubblewrap"),
        commands=("confide-agent",),
        # The worker runtime's script (package confide_worker, which the daemon starts per job
        # as `python -m confide_worker` inside the sandbox): in the venv, not in /usr/bin.
        internal=("confide-worker",),
        drop=(),
        config="agent.toml",
        settings=(
            ("state", "dir", "/var/lib/confide/agent"),
            ("api", "socket", "/run/confide/agent.sock"),
        ),
        docs=((ROOT / "systemd" / "confide-agent-gpu.conf", "gpu.conf"),),
    ),
    "aggregator": Part(
        name="aggregator",
        summary="Confide federated-learning aggregator and operator CLI",
        description=(
            "The server of a Confide federation: sites connect to it over mutual TLS; it\n"
            "runs secure aggregation, the round state machine and the server optimizer,\n"
            "keeps jobs and model versions in SQLite, and never sees one site's update.\n"
            "Includes confide-aggregator and its systemd unit (installed, not enabled),\n"
            "and the operator CLI confide (PKI, jobs, sites, privacy planning). No torch."
        ),
        depends=_BASE_DEPENDS,
        commands=("confide-aggregator", "confide"),
        internal=(),
        drop=("confide_worker",),  # the aggregator never starts a worker
        config="aggregator.toml",
        settings=(("state", "dir", "/var/lib/confide/aggregator"),),
        docs=(),
    ),
}

_AGENT_CHECK = """\
    if [ "$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo 1)" = 0 ] ||
       [ "$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo 1)" = 0 ]; then
        echo "confide-agent: user namespaces are disabled here, so worker sandboxes cannot" \\
             "start (README: The worker sandbox)" >&2
    fi"""


def config_source(name: str) -> Path:
    """The commented example config the package ships: examples/<name>.

    Raises:
        SystemExit: the tree has no such example.
    """
    path = ROOT / "examples" / name
    if not path.is_file():
        sys.exit(f"{path} is missing: the packages ship the examples' configs")
    return path


def set_key(text: str, section: str, key: str, value: str) -> str:
    """Set ``key = "value"`` in TOML ``[section]``, replacing its one line or commented line.

    Raises:
        SystemExit: the section or the key's line is missing, or there are several.
    """
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == f"[{section}]")
    except StopIteration:
        sys.exit(f"config has no [{section}] table to set {key} in")
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
        len(lines),
    )
    pattern = re.compile(rf"^\s*(#\s*)?{re.escape(key)}\s*=")
    hits = [i for i in range(start + 1, end) if pattern.match(lines[i])]
    live = [i for i in hits if not lines[i].lstrip().startswith("#")]
    chosen = live or hits
    if len(chosen) != 1:
        sys.exit(f"config [{section}] has {len(chosen)} lines for {key}, expected one")
    lines[chosen[0]] = f'{key} = "{value}"\n'
    return "".join(lines)


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)


def _gzip(path: Path, data: bytes) -> None:
    """gzip -9n: no name or time in the header, so builds are repeatable."""
    _write(path, gzip.compress(data, compresslevel=9, mtime=0))


def _epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else now (dates the changelog)."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return int(time.time())


def _copyright(year: int) -> str:
    return (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: confide\n"
        "Comment: The virtual environment under /opt/confide holds third-party Python\n"
        " packages (pinned in constraints.txt); each one's license is in its\n"
        " *.dist-info directory under /opt/confide/*/lib/python3.11/site-packages.\n"
        "\n"
        "Files: *\n"
        f"Copyright: {year} The Confide authors\n"
        "License: Apache-2.0\n"
        " On Debian systems the full text of the Apache License, Version 2.0 is in\n"
        " /usr/share/common-licenses/Apache-2.0.\n"
    )


def _changelog(pkg: str, ver: str, epoch: int) -> str:
    return (
        f"{pkg} ({ver}) unstable; urgency=medium\n\n"
        f"  * Confide {ver}, built by packaging/build-deb.\n\n"
        f" -- {MAINTAINER}  {formatdate(epoch, usegmt=False)}\n"
    )


def _overrides(pkg: str) -> str:
    """lintian overrides, one reason each (packaging/debian/lintian-overrides)."""
    text = (HERE / "debian" / "lintian-overrides").read_text()
    return text.replace("@PKG@", pkg).replace("@PART@", pkg.removeprefix("confide-"))


def _maintainer_script(name: str, part: Part) -> str:
    text = (HERE / "debian" / name).read_text().replace("@PART@", part.name)
    return text.replace("@AGENT_CHECK@\n", _AGENT_CHECK + "\n" if part.name == "agent" else "")


_SUMMARY = {
    "confide-agent": "Confide site agent: the daemon and its local commands",
    "confide-aggregator": "Confide federation aggregator",
    "confide": "Confide operator command line",
}


def _manpage(cmd: str, pkg: str, help_text: str, ver: str, epoch: int) -> str:
    """A short manual page: the command's own --help, and where the full docs are."""

    def roff(line: str) -> str:
        line = line.replace("\\", "\\e").replace("-", "\\-")
        return "\\&" + line if line.startswith((".", "'")) else line

    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    body = "\n".join(roff(ln) for ln in help_text.rstrip().splitlines())
    return (
        f'.TH {cmd.upper()} 1 "{date}" "confide {ver}" "Confide"\n'
        f".SH NAME\n{roff(cmd)} \\- {_SUMMARY[cmd]}\n"
        f".SH SYNOPSIS\n.nf\n{body}\n.fi\n"
        f".SH SEE ALSO\n/usr/share/doc/{roff(pkg)}/README.md.gz,\n"
        f"/usr/share/doc/{roff(pkg)}/packaging.md.gz\n"
    )


def _md5sums(root: Path, conffiles: set[str]) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("DEBIAN/") or not path.is_file() or path.is_symlink():
            continue
        if "/" + rel in conffiles:
            continue
        digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
        lines.append(f"{digest}  {rel}\n")
    return "".join(lines)


def _installed_kib(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "DEBIAN"]
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += (st.st_size + 1023) // 1024
        total += len(dirnames)
    return total


def stage(part: Part, *, wheel: Path, work: Path, ver: str, arch: str) -> Path:
    """Lay out the package's tree (venv, unit, conffile, docs, DEBIAN/) under work/<pkg>."""
    pkg = f"confide-{part.name}"
    root = work / pkg
    if root.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)
    prefix = build_venv(
        part=part.name,
        wheel=wheel,
        stage=root / "opt/confide" / part.name,
        work=work,
        keep_commands=part.commands,
        internal_commands=part.internal,
        drop_packages=part.drop,
    )

    for cmd in part.commands:
        link = root / "usr/bin" / cmd
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"{prefix}/bin/{cmd}")
        helped = (work / "help" / f"{cmd}.txt").read_text()
        page = _manpage(cmd, pkg, helped, ver, _epoch()).encode()
        _gzip(root / "usr/share/man/man1" / f"{cmd}.1.gz", page)

    unit = f"{pkg}.service"
    _write(root / "lib/systemd/system" / unit, (ROOT / "systemd" / unit).read_text())

    text = config_source(part.config).read_text()
    for section, key, value in part.settings:
        text = set_key(text, section, key, value)
    _write(root / "etc/confide" / part.config, text)
    conffiles = {f"/etc/confide/{part.config}"}

    doc = root / "usr/share/doc" / pkg
    _write(doc / "copyright", _copyright(time.gmtime(_epoch()).tm_year))
    _gzip(doc / "changelog.gz", _changelog(pkg, ver, _epoch()).encode())
    _gzip(doc / "README.md.gz", (ROOT / "README.md").read_bytes())
    _gzip(doc / "packaging.md.gz", (HERE / "README.md").read_bytes())
    _write(doc / "examples" / part.config, config_source(part.config).read_text())
    for source, name in part.docs:
        _write(doc / "examples" / name, source.read_text())
    if part.name == "aggregator":
        _write(doc / "examples" / "operator.toml", config_source("operator.toml").read_text())
    _write(root / "usr/share/lintian/overrides" / pkg, _overrides(pkg))

    debian = root / "DEBIAN"
    debian.mkdir()
    for script in ("postinst", "prerm", "postrm"):
        _write(debian / script, _maintainer_script(script, part), 0o755)
    _write(debian / "conffiles", "".join(f"{c}\n" for c in sorted(conffiles)))
    _write(debian / "md5sums", _md5sums(root, conffiles))
    description = "\n".join(f" {ln}" if ln else " ." for ln in part.description.splitlines())
    control = (
        f"Package: {pkg}\n"
        f"Version: {ver}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: {MAINTAINER}\n"
        f"Installed-Size: {_installed_kib(root)}\n"
        f"Depends: {', '.join(part.depends)}\n"
        "Section: science\n"
        "Priority: optional\n"
        f"Description: {part.summary}\n"
        f"{description}\n"
    )
    _write(debian / "control", control)
    return root


def main(argv: list[str] | None = None) -> int:
    """Build the requested packages into --out; prints each .deb's path, size and time."""
    parser = argparse.ArgumentParser(prog="build-deb", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "deb", help="scratch")
    parser.add_argument("--only", choices=sorted(PARTS), action="append", help="repeatable")
    parser.add_argument(
        "--xz-level",
        type=int,
        default=1,
        choices=range(10),
        metavar="0-9",
        help="xz preset for dpkg-deb (default 1: the agent's torch makes 9 slow for little)",
    )
    args = parser.parse_args(argv)
    ver, arch = version(), deb_arch()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    os.umask(0o022)
    t0 = time.monotonic()
    wheel = build_wheel(args.work)
    log(f"wheel {wheel.name} in {time.monotonic() - t0:.0f}s")
    for name in args.only or sorted(PARTS):
        t1 = time.monotonic()
        root = stage(PARTS[name], wheel=wheel, work=args.work, ver=ver, arch=arch)
        t2 = time.monotonic()
        deb = args.out / f"confide-{name}_{ver}_{arch}.deb"
        run(["dpkg-deb", "--root-owner-group", "-Zxz", f"-z{args.xz_level}", "--build", root, deb])
        t3 = time.monotonic()
        log(
            f"{deb} {deb.stat().st_size / 1e6:.1f} MB "
            f"(installed {_installed_kib(root) / 1024:.0f} MiB): "
            f"venv+stage {t2 - t1:.0f}s, dpkg-deb {t3 - t2:.0f}s"
        )
        print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
