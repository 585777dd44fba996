"""load_identity names the file at fault for every missing, loose or mismatched piece."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from confide import pki
from confide.errors import ConfigError

from .conftest import Federation


@pytest.fixture
def site(fed: Federation, site_dir: Path) -> Path:
    """A freshly enrolled site folder holding site-1's keys and certificate."""
    fed.enroll_site(site_dir, "site-1")
    return site_dir


def _load(fed: Federation, d: Path, **override: Path) -> pki.Identity:
    kw = {
        "cert": d / "site-1.crt",
        "key": d / "site-1.key",
        "signing_key": d / "site-1.sign.key",
        "ca": fed.ca_dir / "ca.crt",
        "crl": fed.ca_dir / "crl.pem",
    }
    kw.update(override)
    return pki.load_identity(
        cert=kw["cert"], key=kw["key"], signing_key=kw["signing_key"], ca=kw["ca"], crl=kw["crl"]
    )


def test_loads_good_identity(fed: Federation, site: Path) -> None:
    """A consistent set of files loads into an Identity with the cert's facts."""
    ident = _load(fed, site)
    assert ident.info.name == "site-1" and ident.info.role is pki.Role.SITE
    assert bytes(ident.signing_key.verify_key) == ident.info.signing_public_key
    assert ident.crl_pem == fed.crl_pem
    assert "BEGIN" not in repr(ident)


def test_mismatched_tls_key_names_key_file(fed: Federation, site: Path, tmp_path: Path) -> None:
    """A TLS key from another identity is refused with a ConfigError naming the key file."""
    other = tmp_path / "other"
    pki.enroll(other, "site-2")
    with pytest.raises(ConfigError) as err:
        _load(fed, site, key=other / "site-2.key")
    assert err.value.key == str(other / "site-2.key")
    assert "does not match" in err.value.problem


def test_mismatched_signing_key_names_file(fed: Federation, site: Path, tmp_path: Path) -> None:
    """A signing key that differs from the certificate's extension names the signing-key file."""
    other = tmp_path / "other"
    pki.enroll(other, "site-3")
    with pytest.raises(ConfigError) as err:
        _load(fed, site, signing_key=other / "site-3.sign.key")
    assert err.value.key == str(other / "site-3.sign.key")


@pytest.mark.parametrize("which", ["site-1.key", "site-1.sign.key"])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_loose_key_mode_names_file(fed: Federation, site: Path, which: str, mode: int) -> None:
    """A private key readable by group or others is refused, naming that file."""
    os.chmod(site / which, mode)
    with pytest.raises(ConfigError) as err:
        _load(fed, site)
    assert err.value.key == str(site / which)
    assert "readable" in err.value.problem


def test_stricter_key_mode_is_accepted(fed: Federation, site: Path) -> None:
    """A key with mode 0400 (stricter than 0600) is fine."""
    os.chmod(site / "site-1.key", 0o400)
    assert _load(fed, site).info.name == "site-1"


@pytest.mark.parametrize("which", ["cert", "key", "signing_key", "ca", "crl"])
def test_missing_file_is_named(fed: Federation, site: Path, which: str) -> None:
    """Each missing file is reported by its own path."""
    missing = site / "nope.pem"
    with pytest.raises(ConfigError) as err:
        _load(fed, site, **{which: missing})
    assert err.value.key == str(missing)


def test_certificate_from_foreign_ca_names_cert(
    fed: Federation, foreign: Federation, site: Path
) -> None:
    """A certificate not issued by the configured CA is refused, naming the cert file."""
    with pytest.raises(ConfigError) as err:
        _load(fed, site, ca=foreign.ca_dir / "ca.crt", crl=foreign.ca_dir / "crl.pem")
    assert err.value.key == str(site / "site-1.crt")


def test_expired_own_certificate_names_cert(fed: Federation, site: Path) -> None:
    """An identity whose certificate has expired is refused at load time."""
    from datetime import UTC, datetime

    with pytest.raises(ConfigError) as err:
        pki.load_identity(
            cert=site / "site-1.crt",
            key=site / "site-1.key",
            signing_key=site / "site-1.sign.key",
            ca=fed.ca_dir / "ca.crt",
            now=datetime.now(UTC) + timedelta(days=400),
        )
    assert "expired" in err.value.problem


def test_garbage_key_names_key_file(fed: Federation, site: Path, tmp_path: Path) -> None:
    """A key file that is not PEM is refused, naming it."""
    bad = tmp_path / "bad.key"
    fd = os.open(bad, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"garbage")
    os.close(fd)
    with pytest.raises(ConfigError) as err:
        _load(fed, site, key=bad)
    assert err.value.key == str(bad)


def test_copy_preserving_mode_still_loads(fed: Federation, site: Path, tmp_path: Path) -> None:
    """Keys copied with their 0600 mode (as an installer would) still load."""
    dest = tmp_path / "copy"
    shutil.copytree(site, dest)
    assert _load(fed, dest).info.name == "site-1"


def test_crl_from_another_ca_names_crl_file(
    fed: Federation, foreign: Federation, site: Path
) -> None:
    """A revocation list signed by another CA is refused, naming the CRL file."""
    with pytest.raises(ConfigError) as err:
        _load(fed, site, crl=foreign.ca_dir / "crl.pem")
    assert err.value.key == str(foreign.ca_dir / "crl.pem")
