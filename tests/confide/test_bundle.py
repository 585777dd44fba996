"""Code bundles: deterministic packing, and every refusal of a hostile archive (confide.bundle)."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import bundle
from confide.errors import ConfigError, MalformedMessage, OversizedMessage, PeerError, Reason

_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
_ENTRIES = st.dictionaries(
    st.lists(_NAME, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + ".py"),
    st.binary(max_size=600),
    max_size=8,
)


def _folder_ok(entries: dict[str, bytes]) -> bool:
    try:
        bundle._check_tree(entries)
    except MalformedMessage:
        return False
    return True


@settings(max_examples=60, deadline=None)
@given(_ENTRIES.filter(_folder_ok))
def test_pack_then_unpack_gives_back_the_same_files(entries):
    """Any set of files unpacks to exactly those files, and packs to the same bytes twice."""
    data = bundle.pack(entries)
    assert bundle.pack(dict(reversed(list(entries.items())))) == data
    assert bundle.unpack(data) == dict(sorted(entries.items()))


def _write(root, files):
    for path, data in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


_FILES = {"model.py": b"def build_model(spec): ...\n", "nets/layers.py": b"X = 1\n"}


def test_a_copy_with_other_times_and_permissions_packs_to_the_same_bytes(tmp_path):
    """The archive depends on the files' paths and bytes only, not mtimes, modes or order."""
    a, b = tmp_path / "a", tmp_path / "b"
    _write(a, _FILES)
    _write(b, dict(reversed(list(_FILES.items()))))
    os.utime(b / "model.py", (1, 1))
    os.utime(b / "nets" / "layers.py", (2_000_000_000, 2_000_000_000))
    (b / "model.py").chmod(0o755)
    (b / "nets" / "layers.py").chmod(0o600)
    (b / "nets").chmod(0o711)
    first = bundle.pack_folder(a)
    assert bundle.pack_folder(a) == first
    assert bundle.pack_folder(b) == first
    (b / "nets" / "layers.py").write_bytes(b"X = 2\n")
    assert bundle.pack_folder(b) != first


def test_caches_and_hidden_files_are_left_out(tmp_path):
    """__pycache__, *.pyc and dot-files do not change the archive (running the code locally)."""
    _write(tmp_path, _FILES)
    before = bundle.pack_folder(tmp_path)
    _write(
        tmp_path,
        {
            "__pycache__/model.cpython-311.pyc": b"\0",
            "nets/old.pyc": b"\0",
            ".git/HEAD": b"ref",
            ".DS_Store": b"\0",
        },
    )
    assert bundle.pack_folder(tmp_path) == before
    assert sorted(bundle.unpack(before)) == ["model.py", "nets/layers.py"]


def test_a_folder_with_a_link_or_without_model_py_is_refused(tmp_path):
    """Packing names the job-file key: no model.py, a symbolic link, or a missing folder."""
    _write(tmp_path / "nomodel", {"other.py": b""})
    with pytest.raises(ConfigError) as exc:
        bundle.pack_folder(tmp_path / "nomodel")
    assert exc.value.key == "model.code"
    _write(tmp_path / "linked", _FILES)
    (tmp_path / "linked" / "secret.py").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError):
        bundle.pack_folder(tmp_path / "linked")
    (tmp_path / "linked" / "secret.py").unlink()
    (tmp_path / "linked" / "sub").symlink_to(tmp_path / "nomodel")
    with pytest.raises(ConfigError):
        bundle.pack_folder(tmp_path / "linked")
    with pytest.raises(ConfigError):
        bundle.pack_folder(tmp_path / "absent")


def test_check_digest_refuses_other_bytes_and_a_short_digest():
    """The archive must hash to the signed code_sha256, compared before it is parsed."""
    data = bundle.pack(_FILES)
    bundle.check_digest(data, code_sha256=bundle.digest(data))
    for wrong in (bundle.digest(data + b"\0"), bundle.digest(data)[:31], b""):
        with pytest.raises(PeerError) as exc:
            bundle.check_digest(data, code_sha256=wrong)
        assert exc.value.reason is Reason.BUNDLE_MISMATCH


# ----- crafted archives: one per refusal -----


def _tar(*members: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out.getvalue()


def _member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, **kw) -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = kw.pop("mode", 0o644)
    info.mtime = kw.pop("mtime", 0)
    for k, v in kw.items():
        setattr(info, k, v)
    return info, data


def _refused(data: bytes, reason: Reason, **limits) -> None:
    with pytest.raises(PeerError) as exc:
        bundle.unpack(data, **limits)
    assert exc.value.reason is reason, exc.value.message


@pytest.mark.parametrize(
    "name", ["/etc/cron.d/x", "../escape.py", "a/../../b.py", "a//b.py", "./model.py", "a\\b.py"]
)
def test_an_unsafe_path_is_refused(name):
    """Absolute paths, '..', empty or '.' components and backslashes are refused by path."""
    _refused(_tar(_member("model.py"), _member(name, b"x")), Reason.BUNDLE_UNSAFE_PATH)


def test_a_path_hidden_in_an_extended_header_is_checked_too():
    """A pax or GNU long-name header that renames an entry is checked by the name it gives."""
    pax = _tar(
        _member("model.py", b"x", pax_headers={"path": "../../etc/passwd"}),
        fmt=tarfile.PAX_FORMAT,
    )
    _refused(pax, Reason.BUNDLE_UNSAFE_PATH)
    gnu = _tar(_member("/" + "a" * 150 + ".py", b"x"), fmt=tarfile.GNU_FORMAT)
    _refused(gnu, Reason.BUNDLE_UNSAFE_PATH)


@pytest.mark.parametrize(
    "kind,extra",
    [
        (tarfile.SYMTYPE, {"linkname": "/home/agent/.confide/identity.key"}),
        (tarfile.LNKTYPE, {"linkname": "model.py"}),
        (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
        (tarfile.BLKTYPE, {"devmajor": 8, "devminor": 0}),
        (tarfile.FIFOTYPE, {}),
        (tarfile.CONTTYPE, {}),
    ],
)
def test_links_devices_and_fifos_are_refused(kind, extra):
    """Only regular files: every link, device and FIFO entry is refused as special."""
    _refused(
        _tar(_member("model.py"), _member("evil", kind=kind, **extra)),
        Reason.BUNDLE_SPECIAL_FILE,
    )


def test_too_many_entries_is_refused_and_the_limit_itself_is_not():
    """The entry count is checked on both sides of the limit, while the entries are read."""
    data = bundle.pack({f"f{i}.py": b"" for i in range(4)})
    assert len(bundle.unpack(data, max_entries=4)) == 4
    _refused(data, Reason.BUNDLE_TOO_LARGE, max_entries=3)


def test_too_many_expanded_bytes_is_refused_and_the_limit_itself_is_not():
    """The files' total size is checked on both sides of the limit, before data is read."""
    data = bundle.pack({"a.py": b"x" * 60, "b.py": b"y" * 40})
    assert bundle.unpack(data, max_expanded=100)
    _refused(data, Reason.BUNDLE_TOO_LARGE, max_expanded=99)


def test_an_archive_over_the_byte_limit_is_refused_before_parsing():
    """The archive's own size is bounded (both sides of the limit)."""
    data = bundle.pack(_FILES)
    assert bundle.unpack(data, max_bytes=len(data))
    _refused(data, Reason.BUNDLE_TOO_LARGE, max_bytes=len(data) - 1)
    _refused(b"\0" * 10, Reason.BUNDLE_TOO_LARGE, max_bytes=9)


def test_a_member_claiming_more_data_than_the_archive_holds_is_refused():
    """A huge declared size is refused by the size limit, a short archive as malformed."""
    data = bytearray(bundle.pack({"model.py": b"x" * 600}))
    cut = bytes(data[:1024])  # header and the first data block only
    _refused(cut, Reason.MALFORMED)
    info = tarfile.TarInfo("model.py")
    info.size = 1 << 32
    big = info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024
    _refused(big, Reason.BUNDLE_TOO_LARGE)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"not a tar archive" * 100, id="garbage"),
        pytest.param(gzip.compress(bundle.pack(_FILES), mtime=0), id="gzip"),
        pytest.param(_tar(_member("model.py"), _member("model.py", b"again")), id="duplicate"),
        pytest.param(_tar(_member("a"), _member("a/b.py")), id="file-and-folder"),
        pytest.param(_tar(_member("model.py", mtime=1_700_000_000)), id="mtime"),
        pytest.param(_tar(_member("model.py", mode=0o4755)), id="setuid"),
        pytest.param(_tar(_member("model.py", uid=1000, uname="alice")), id="owner"),
        pytest.param(
            _tar(_member("model.py", pax_headers={"comment": "x"}), fmt=tarfile.PAX_FORMAT),
            id="pax",
        ),
        pytest.param(bundle.pack(_FILES) + b"\0" * 512, id="trailing-zeros"),
        pytest.param(bundle.pack(_FILES) + b"junk", id="trailing-junk"),
        pytest.param(_tar(_member("pkg", kind=tarfile.DIRTYPE), _member("pkg/a.py")), id="dir"),
    ],
)
def test_an_archive_that_is_not_canonical_is_refused_as_malformed(data):
    """Unreadable, compressed, duplicate, clashing or non-canonical archives are malformed."""
    _refused(data, Reason.MALFORMED)


def test_pack_refuses_what_unpack_would_refuse():
    """No archive is made that a site cannot open: paths, clashes and sizes are checked."""
    with pytest.raises(MalformedMessage) as exc:
        bundle.pack({"../x.py": b""})
    assert exc.value.reason is Reason.BUNDLE_UNSAFE_PATH
    with pytest.raises(MalformedMessage):
        bundle.pack({"a": b"", "a/b.py": b""})
    with pytest.raises(OversizedMessage) as big:
        bundle.pack({"a.py": b"x" * (bundle.MAX_EXPANDED_BYTES + 1)})
    assert big.value.reason is Reason.BUNDLE_TOO_LARGE


def test_write_folder_writes_read_only_files_into_a_new_folder_only(tmp_path):
    """Unpacked files are read-only, in a folder that must not exist yet."""
    dest = tmp_path / "b"
    bundle.write_folder(bundle.unpack(bundle.pack(_FILES)), dest)
    assert (dest / "nets" / "layers.py").read_bytes() == b"X = 1\n"
    assert stat.S_IMODE((dest / "model.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((dest / "nets").stat().st_mode) == 0o555
    with pytest.raises(FileExistsError):
        bundle.write_folder(_FILES, dest)
    with pytest.raises(MalformedMessage):
        bundle.write_folder({"../up.py": b""}, tmp_path / "c")
    assert not (tmp_path / "up.py").exists()
    for d in (dest, dest / "nets"):
        d.chmod(0o755)
    shutil.rmtree(dest)
