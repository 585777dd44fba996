"""What ``build-deb`` and ``build-bundle`` share: the version, the project wheel, the venvs.

Standard library only, so the build host needs nothing but Debian's ``python3.11`` (with
``python3.11-venv``), ``dpkg-deb`` and ``unshare`` (util-linux).

The virtual environments a package ships are built at the very path they are installed at
(``/opt/confide/<part>``) inside a private mount namespace, where that path is a bind mount
of a staging folder. So every absolute path pip and venv write (script shebangs, pyvenv.cfg,
activate scripts) is already the installed one and nothing is rewritten afterwards; the build
host's own ``/opt`` is left untouched. Root, or unprivileged user namespaces, is needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = "/usr/bin/python3.11"
PREFIX = "/opt/confide"

# What each installable part pulls from pyproject.toml's extras; the aggregator needs no torch.
EXTRAS = {"agent": "[agent]", "aggregator": ""}

# Files of a source tree that are never part of a build.
_SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".mypy_cache", ".ruff_cache"}
_SKIP_SUFFIX = (".pyc", ".egg-info")


def log(*words: object) -> None:
    """One progress line on stderr, prefixed with the script's name."""
    print(f"{Path(sys.argv[0]).name}:", *words, file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], *, cwd: Path | None = None) -> None:
    """Run a command, echoing it; a failure raises CalledProcessError."""
    log("+", shlex.join(str(a) for a in argv))
    subprocess.run([str(a) for a in argv], check=True, cwd=cwd)


def version() -> str:
    """The project version from pyproject.toml, checked against ``confide.__version__``."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    ver = str(meta["project"]["version"])
    init = (ROOT / "confide" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', init, re.M)
    if found is None or found.group(1) != ver:
        sys.exit(f"pyproject.toml says {ver} but confide/__init__.py says {found and found[1]}")
    return ver


def deb_arch() -> str:
    """This host's Debian architecture (the venvs hold compiled wheels for it)."""
    return subprocess.run(
        ["dpkg", "--print-architecture"], check=True, capture_output=True, text=True
    ).stdout.strip()


def source_files() -> list[Path]:
    """The tree's files that belong in a build, relative to ROOT.

    From git when this is a checkout (tracked files plus new, not ignored ones), otherwise
    every file except caches and build outputs.
    """
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            check=True,
            capture_output=True,
        ).stdout
        names = [Path(n) for n in out.decode().split("\0") if n]
        return sorted(n for n in names if (ROOT / n).is_file() and not (ROOT / n).is_symlink())
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in _SKIP and not d.endswith(_SKIP_SUFFIX)]
        for name in filenames:
            if not name.endswith(_SKIP_SUFFIX):
                found.append((Path(dirpath) / name).relative_to(ROOT))
    return sorted(found)


def tools_python(work: Path) -> Path:
    """A throwaway venv with pip for driving the builds (Debian's python3.11 has no pip)."""
    tools = work / "tools"
    py = tools / "bin" / "python"
    if not py.exists():
        run([DEBIAN_PYTHON, "-m", "venv", tools])
    return py


def build_wheel(work: Path) -> Path:
    """Build the project's wheel from a clean copy of the source tree; returns its path.

    A copy, so that setuptools' build/ and egg-info never land in the checkout.
    """
    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    for rel in source_files():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    out = work / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    run([tools_python(work), "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, src])
    wheels = sorted(out.glob("confide-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one confide wheel in {out}, found {wheels}")
    return wheels[0]


def _namespace_script(stage: Path, target: str, commands: Iterable[Sequence[str | Path]]) -> str:
    """Shell that mounts ``stage`` at ``target`` in a private mount namespace and runs commands.

    ``/opt`` is replaced by a tmpfs holding ``target`` and bind mounts of everything the real
    ``/opt`` held (a local package index may live there), so the host's ``/opt`` is untouched.
    """
    lines = [
        "set -eu",
        "mount --make-rprivate /",
        'keep=$(mktemp -d) && mount --rbind /opt "$keep"',
        "mount -t tmpfs -o mode=0755 confide-build /opt",
        'for entry in "$keep"/* "$keep"/.[!.]*; do',
        '  [ -e "$entry" ] || [ -L "$entry" ] || continue',
        '  name=${entry#"$keep"/}',
        '  [ "$name" = confide ] && continue  # a Confide installed here stays hidden',
        '  if [ -d "$entry" ] && [ ! -L "$entry" ]; then mkdir "/opt/$name"; '
        'else touch "/opt/$name"; fi',
        '  mount --rbind "$entry" "/opt/$name"',
        "done",
        f"mkdir -p {shlex.quote(target)}",
        f"mount --bind {shlex.quote(str(stage))} {shlex.quote(target)}",
        "umask 022",
    ]
    lines += [shlex.join(str(a) for a in cmd) for cmd in commands]
    return "\n".join(lines) + "\n"


def build_venv(
    *,
    part: str,
    wheel: Path,
    stage: Path,
    work: Path,
    keep_commands: Sequence[str],
    internal_commands: Sequence[str] = (),
    drop_packages: Sequence[str] = (),
) -> str:
    """Build ``PREFIX/part`` (a venv of Debian's python3.11) into ``stage``; returns the prefix.

    Installs the project wheel with the part's extras, pinned by constraints.txt, without pip
    in the venv (it is the package manager's, not for pip) and without bytecode (the
    package's postinst compiles it at the installed path; Debian packages ship no .pyc).
    Then runs each kept command's ``--help`` at the installed path, which proves the venv
    works there and leaves the text in ``work/help/COMMAND.txt`` for the manual pages.

    Args:
        part: ``agent`` or ``aggregator``.
        wheel: the project's wheel.
        stage: an empty folder that receives the venv's files.
        work: scratch folder (holds the tools venv).
        keep_commands: the console scripts this part ships (others are removed).
        internal_commands: console scripts kept in the venv that are no user command (no
            ``--help`` run, no manual page): the agent's worker runtime, ``confide-worker``.
        drop_packages: top-level packages of the project's wheel this part never runs (the
            aggregator has no worker): removed from the venv and from the wheel's RECORD.
    """
    target = f"{PREFIX}/{part}"
    stage.mkdir(parents=True, exist_ok=True)
    tools = tools_python(work)
    install = [
        tools,
        "-m",
        "pip",
        "--python",
        f"{target}/bin/python",
        "install",
        "-q",
        "--no-compile",
        "--no-warn-script-location",
        "-c",
        ROOT / "constraints.txt",
        f"{wheel}{EXTRAS[part]}",
    ]
    helps = work / "help"
    helps.mkdir(exist_ok=True)
    run_help = [
        [
            "sh",
            "-c",
            f"PYTHONDONTWRITEBYTECODE=1 COLUMNS=80 {target}/bin/{cmd} --help"
            f" > {shlex.quote(str(helps / cmd))}.txt",
        ]
        for cmd in keep_commands
    ]
    script = _namespace_script(
        stage,
        target,
        [[DEBIAN_PYTHON, "-m", "venv", "--without-pip", target], install, *run_help],
    )
    unshare = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    run([*unshare, "sh", "-c", script])
    _scrub_venv(
        stage, keep_commands=(*keep_commands, *internal_commands), drop_packages=drop_packages
    )
    return target


def _scrub_venv(
    venv: Path, *, keep_commands: Sequence[str], drop_packages: Sequence[str] = ()
) -> None:
    """Tidy a venv for shipping: no bytecode, no build paths, no stray execute bits.

    - ``__pycache__``: Debian packages ship no bytecode (postinst compiles it);
    - the project's ``direct_url.json`` names the build host's wheel path;
    - console scripts other than ``keep_commands`` (a venv holds one part's commands);
    - ``drop_packages``: the project's packages this part never runs, with their RECORD lines;
    - execute bits on shared libraries and on files that are neither ELF nor ``#!`` scripts
      (wheels carry some: numpy.libs/*.so, protobuf's *.py); nothing executes them, and
      ELF executables (torch_shm_manager) and scripts keep theirs.
    """
    for cache in sorted(venv.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache)
    for direct in venv.glob("lib/python3.*/site-packages/confide-*.dist-info/direct_url.json"):
        record = direct.parent / "RECORD"
        kept = [ln for ln in record.read_text().splitlines() if "/direct_url.json," not in ln]
        record.write_text("\n".join(kept) + "\n")
        direct.unlink()
    for site in venv.glob("lib/python3.*/site-packages"):
        for package in drop_packages:
            shutil.rmtree(site / package, ignore_errors=True)
        for record in site.glob("confide-*.dist-info/RECORD"):
            kept = [
                ln
                for ln in record.read_text().splitlines()
                if ln.split("/", 1)[0] not in drop_packages
            ]
            record.write_text("\n".join(kept) + "\n")
    for script in ("confide", "confide-agent", "confide-aggregator", "confide-worker"):
        if script not in keep_commands:
            (venv / "bin" / script).unlink(missing_ok=True)
    for path in (venv / "lib").rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        mode = path.stat().st_mode
        if not mode & 0o111:
            continue
        with path.open("rb") as f:
            head = f.read(4)
        library = path.name.endswith(".so") or ".so." in path.name
        if library or (head != b"\x7fELF" and head[:2] != b"#!"):
            path.chmod(mode & ~0o111)


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
