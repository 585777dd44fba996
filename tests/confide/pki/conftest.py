"""Fixtures: one federation CA per test module, and helpers to enroll identities in it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide import pki


@dataclass(frozen=True)
class Federation:
    """A CA folder plus convenience readers used across the PKI tests."""

    ca_dir: Path
    name: str

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return (self.ca_dir / "ca.crt").read_bytes()

    @property
    def crl_pem(self) -> bytes:
        """The current revocation list, PEM."""
        return (self.ca_dir / "crl.pem").read_bytes()

    def enroll_site(self, directory: Path, name: str) -> Path:
        """Make a site's keys and CSR in ``directory``, sign it, write ``<name>.crt``."""
        csr = pki.enroll(directory, name)
        cert = directory / f"{name}.crt"
        cert.write_bytes(pki.sign_csr(self.ca_dir, csr.read_bytes(), role=pki.Role.SITE))
        return cert

    def identity(self, directory: Path, name: str, *, crl: bool = True) -> pki.Identity:
        """Load the identity ``name`` from ``directory`` against this CA."""
        return pki.load_identity(
            cert=directory / f"{name}.crt",
            key=directory / f"{name}.key",
            signing_key=directory / f"{name}.sign.key",
            ca=self.ca_dir / "ca.crt",
            crl=self.ca_dir / "crl.pem" if crl else None,
        )


def _make(tmp_path_factory: pytest.TempPathFactory, name: str) -> Federation:
    ca_dir = tmp_path_factory.mktemp(f"{name}-ca")
    pki.init_ca(ca_dir, federation=name)
    return Federation(ca_dir=ca_dir, name=name)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """The federation under test, made once per module."""
    return _make(tmp_path_factory, "acme")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    """Another federation's CA, whose certificates must be refused by ``fed``."""
    return _make(tmp_path_factory, "evil")


@pytest.fixture
def now() -> datetime:
    """The current UTC time, passed explicitly to pure checks."""
    return datetime.now(UTC)


@pytest.fixture
def site_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh folder standing for a site's own machine."""
    d = tmp_path / "site"
    yield d
