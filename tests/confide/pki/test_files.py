"""Private keys are 0600 from birth and are never overwritten."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from confide import pki
from confide.errors import ConfigError
from confide.pki import files

from .conftest import Federation


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so only the mode given to os.open can protect the keys."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_issue_writes_private_keys_0600_even_with_umask_0(fed: Federation) -> None:
    """issue() creates both private keys with mode 0600 regardless of the umask."""
    pki.issue(fed.ca_dir, "ops-umask", role=pki.Role.OPERATOR)
    assert _mode(fed.ca_dir / "ops-umask.key") == 0o600
    assert _mode(fed.ca_dir / "ops-umask.sign.key") == 0o600
    assert _mode(fed.ca_dir / "ca.key") == 0o600


@pytest.mark.usefixtures("open_umask")
def test_enroll_writes_private_keys_0600(site_dir: Path) -> None:
    """The site side of enrollment writes its two private keys with mode 0600."""
    pki.enroll(site_dir, "site-umask")
    assert _mode(site_dir / "site-umask.key") == 0o600
    assert _mode(site_dir / "site-umask.sign.key") == 0o600
    assert _mode(site_dir / "site-umask.csr") == 0o644


def test_issue_refuses_to_overwrite_existing_keys(fed: Federation) -> None:
    """A second issue() for the same name fails and leaves the first key bytes untouched."""
    pki.issue(fed.ca_dir, "agg-once", role=pki.Role.AGGREGATOR)
    before = (fed.ca_dir / "agg-once.key").read_bytes()
    with pytest.raises(ConfigError) as err:
        pki.issue(fed.ca_dir, "agg-once", role=pki.Role.AGGREGATOR)
    assert "agg-once" in err.value.key
    assert (fed.ca_dir / "agg-once.key").read_bytes() == before


def test_enroll_refuses_to_overwrite_existing_keys(site_dir: Path) -> None:
    """enroll() twice fails the second time and keeps the original signing key."""
    pki.enroll(site_dir, "site-once")
    before = (site_dir / "site-once.sign.key").read_bytes()
    with pytest.raises(ConfigError):
        pki.enroll(site_dir, "site-once")
    assert (site_dir / "site-once.sign.key").read_bytes() == before


def test_write_new_refuses_existing_file_without_truncating(tmp_path: Path) -> None:
    """write_new never truncates a file that is already there."""
    p = tmp_path / "k"
    files.write_new(p, b"first", mode=0o600)
    with pytest.raises(ConfigError):
        files.write_new(p, b"second", mode=0o600)
    assert p.read_bytes() == b"first"


def test_init_ca_refuses_second_ca_in_same_folder(fed: Federation) -> None:
    """init_ca refuses a folder that already holds a CA."""
    before = (fed.ca_dir / "ca.key").read_bytes()
    with pytest.raises(ConfigError):
        pki.init_ca(fed.ca_dir, federation="acme")
    assert (fed.ca_dir / "ca.key").read_bytes() == before


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", "x" * 64, "ca", "crl", "é"])
def test_bad_identity_names_are_refused(site_dir: Path, name: str) -> None:
    """Names that are not safe file names and DNS labels are refused before writing."""
    with pytest.raises(ConfigError):
        pki.enroll(site_dir, name)
    assert not site_dir.exists() or not any(site_dir.iterdir())


def test_name_length_limit_is_inclusive(site_dir: Path) -> None:
    """A 63-character name is accepted (one below the refused 64)."""
    from cryptography import x509

    csr = x509.load_pem_x509_csr(pki.enroll(site_dir, "s" * 63).read_bytes())
    (cn,) = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert cn.value == "s" * 63


def test_signing_key_file_is_hex_seed(site_dir: Path) -> None:
    """The signing-key file holds the 32-byte seed as 64 hex characters and a newline."""
    pki.enroll(site_dir, "site-hex")
    text = (site_dir / "site-hex.sign.key").read_text()
    assert text.endswith("\n") and len(bytes.fromhex(text.strip())) == 32


@pytest.mark.parametrize("n", [31, 33])
def test_signing_key_of_wrong_length_is_refused(n: int) -> None:
    """Seeds one byte short or long are refused, naming the source."""
    with pytest.raises(ConfigError) as err:
        files.parse_signing_key(bytes(n).hex().encode(), source="x.sign.key")
    assert err.value.key == "x.sign.key"
