"""Build the offline bundle for air-gapped sites: one tar with everything an install needs.

Run as ``packaging/build-bundle [--out dist]``. The archive,
``confide-bundle-<version>-<arch>.tar``, unpacks to ``confide-<version>/`` holding:

- ``wheelhouse/``: the project's wheel and every dependency pinned by constraints.txt
  (agent and aggregator; binary wheels only, so nothing is compiled at the site);
- ``install.sh``: checks SHA256SUMS, makes the venv with the site's python3.11 and installs
  with ``pip --no-index`` from the wheelhouse; as root also the user, folders, config and
  unit (not enabled);
- ``systemd/`` units, ``examples/`` configs (set up as the .deb sets them), constraints.txt;
- ``SHA256SUMS`` over all of it, and ``SHA256SUMS`` of the archive beside it in --out.

The wheels are for this host's Python (3.11) and architecture: build on the site's platform.
Uncompressed: the wheels already are compressed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_deb import PARTS, config_source, set_key
from common import ROOT, build_wheel, deb_arch, log, run, sha256, tools_python, version

HERE = ROOT / "packaging"


def _reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Root-owned entries with no build-host user names."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def main(argv: list[str] | None = None) -> int:
    """Build the bundle into --out; prints its path."""
    parser = argparse.ArgumentParser(prog="build-bundle", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="default: dist/")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bundle", help="scratch")
    args = parser.parse_args(argv)
    ver, arch = version(), deb_arch()
    os.umask(0o022)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    wheel = build_wheel(args.work)

    top = f"confide-{ver}"
    tree = args.work / top
    shutil.rmtree(tree, ignore_errors=True)
    wheelhouse = tree / "wheelhouse"
    wheelhouse.mkdir(parents=True)
    run(
        [
            tools_python(args.work),
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "-c",
            ROOT / "constraints.txt",
            "-d",
            wheelhouse,
            f"{wheel}[agent]",
        ]
    )
    shutil.copy2(wheel, wheelhouse / wheel.name)
    shutil.copy2(ROOT / "constraints.txt", tree / "constraints.txt")
    (tree / "VERSION").write_text(ver + "\n")
    shutil.copy2(HERE / "bundle" / "install.sh", tree / "install.sh")
    (tree / "install.sh").chmod(0o755)
    shutil.copy2(HERE / "README.md", tree / "README.md")
    (tree / "systemd").mkdir()
    for unit in sorted((ROOT / "systemd").iterdir()):
        shutil.copy2(unit, tree / "systemd" / unit.name)
    (tree / "examples").mkdir()
    for part in PARTS.values():
        text = config_source(part.config).read_text()
        for section, key, value in part.settings:
            text = set_key(text, section, key, value)
        (tree / "examples" / part.config).write_text(text)
    shutil.copy2(config_source("operator.toml"), tree / "examples" / "operator.toml")

    files = sorted(p for p in tree.rglob("*") if p.is_file())
    sums = "".join(f"{sha256(p)}  {p.relative_to(tree).as_posix()}\n" for p in files)
    (tree / "SHA256SUMS").write_text(sums)

    bundle = args.out / f"confide-bundle-{ver}-{arch}.tar"
    with tarfile.open(bundle, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=top, filter=_reset)
    (args.out / f"{bundle.name}.sha256").write_text(f"{sha256(bundle)}  {bundle.name}\n")
    log(
        f"{bundle} {bundle.stat().st_size / 1e6:.1f} MB, {len(files)} files, "
        f"{time.monotonic() - t0:.0f}s"
    )
    print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
