"""The site's code bundles: checked against the signed hash first, unpacked read-only per worker."""

from __future__ import annotations

import io
import stat
import tarfile

import pytest

from agent.workers.bundles import SiteBundles, remove_copy
from confide import bundle
from confide.errors import PolicyRefusal, Reason

_FILES = {"model.py": b"def build_model(spec): ...\n", "nets/a.py": b"A = 1\n"}


class _Fetch:
    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.data


def _symlink_archive() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("model.py")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(info)
    return out.getvalue()


def test_each_worker_gets_its_own_read_only_copy_from_one_download(tmp_path):
    """The archive is fetched once and kept; every copy is fresh, complete and read-only."""
    data = bundle.pack(_FILES)
    fetch = _Fetch(data)
    bundles = SiteBundles(tmp_path / "bundles")
    a = bundles.unpacked(bundle.digest(data), fetch)
    b = bundles.unpacked(bundle.digest(data), fetch)
    assert fetch.calls == 1 and a != b
    for copy in (a, b):
        assert (copy / "nets" / "a.py").read_bytes() == b"A = 1\n"
        assert stat.S_IMODE((copy / "model.py").stat().st_mode) == 0o444
        assert stat.S_IMODE(copy.stat().st_mode) == 0o555
    remove_copy(a)
    assert not a.exists() and b.exists()


def test_other_bytes_are_refused_by_hash_before_they_are_parsed(tmp_path):
    """A lying aggregator's archive is refused bundle_mismatch even when it is also unsafe."""
    bundles = SiteBundles(tmp_path / "bundles")
    signed = bundle.digest(bundle.pack(_FILES))
    for served in (bundle.pack({"model.py": b"import os\n"}), _symlink_archive(), b""):
        with pytest.raises(PolicyRefusal) as exc:
            bundles.unpacked(signed, _Fetch(served))
        assert exc.value.reason is Reason.BUNDLE_MISMATCH and exc.value.public
    assert not list((tmp_path / "bundles").glob("*.tar"))
    assert not list(bundles.runs.iterdir())


def test_a_signed_but_unsafe_archive_is_refused_with_its_reason(tmp_path):
    """The hash matches, but a link inside is still refused, and nothing is written."""
    hostile = _symlink_archive()
    bundles = SiteBundles(tmp_path / "bundles")
    with pytest.raises(PolicyRefusal) as exc:
        bundles.unpacked(bundle.digest(hostile), _Fetch(hostile))
    assert exc.value.reason is Reason.BUNDLE_SPECIAL_FILE
    assert not list(bundles.runs.iterdir())


def test_a_kept_archive_altered_on_disk_is_fetched_again(tmp_path):
    """A kept archive is hashed before each use; an altered one is replaced by a new download."""
    data = bundle.pack(_FILES)
    sha = bundle.digest(data)
    bundles = SiteBundles(tmp_path / "bundles")
    remove_copy(bundles.unpacked(sha, _Fetch(data)))
    kept = tmp_path / "bundles" / f"{sha.hex()}.tar"
    kept.write_bytes(bundle.pack({"model.py": b"import socket\n"}))
    fetch = _Fetch(data)
    copy = bundles.unpacked(sha, fetch)
    assert fetch.calls == 1 and (copy / "model.py").read_bytes() == _FILES["model.py"]
    assert kept.read_bytes() == data


def test_copies_left_by_a_dead_daemon_are_removed_at_start(tmp_path):
    """A new SiteBundles clears the unpacked copies of workers that no longer exist."""
    data = bundle.pack(_FILES)
    left = SiteBundles(tmp_path / "bundles").unpacked(bundle.digest(data), _Fetch(data))
    assert left.exists()
    SiteBundles(tmp_path / "bundles")
    assert not left.exists()
