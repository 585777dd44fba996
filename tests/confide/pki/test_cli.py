"""`confide pki` subcommands, driven through a throwaway parser that calls register()."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pytest

from confide import pki
from confide.cli import pki as cli
from confide.exits import run_command


def _run(*argv: str) -> int:
    """Parse ``argv`` the way ``confide`` will and run the chosen handler as it does."""
    parser = argparse.ArgumentParser(prog="confide")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["pki", *argv])
    rc = run_command("confide", lambda: args.func(args))
    assert isinstance(rc, int)
    return rc


def test_full_enrollment_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """init, issue, sign, show and revoke work end to end and leave a verifiable CRL."""
    ca, site = tmp_path / "ca", tmp_path / "site"
    assert _run("init", "--dir", str(ca), "--federation", "acme") == 0
    assert (
        _run("issue", "agg", "--role", "aggregator", "--dir", str(ca), "--dns", "agg.example") == 0
    )
    csr = pki.enroll(site, "site-1")
    assert _run("sign", str(csr), "--role", "site", "--dir", str(ca)) == 0
    cert = site / "site-1.crt"
    assert cert.exists()
    capsys.readouterr()
    assert _run("show", str(cert), "--ca", str(ca / "ca.crt")) == 0
    shown = capsys.readouterr().out
    assert "site-1" in shown and "verified" in shown
    assert _run("revoke", "site-1", "--dir", str(ca)) == 0
    with pytest.raises(pki.BadCertificate):
        pki.verify_certificate(
            cert.read_bytes(),
            ca_pem=(ca / "ca.crt").read_bytes(),
            crl_pem=(ca / "crl.pem").read_bytes(),
            now=datetime.now(UTC),
        )


def test_aggregator_sans_from_cli(tmp_path: Path) -> None:
    """--dns and --ip end up in the aggregator certificate's SAN with its own name."""
    from cryptography import x509

    _run("init", "--dir", str(tmp_path), "--federation", "acme")
    _run("issue", "agg", "--role", "aggregator", "--dir", str(tmp_path), "--ip", "10.0.0.5")
    cert = x509.load_pem_x509_certificate((tmp_path / "agg.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["agg"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


def test_config_error_prints_one_line_and_returns_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing CA is a ConfigError: one stderr line naming the file, exit code 2."""
    assert _run("issue", "agg", "--role", "aggregator", "--dir", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ca.crt" in err


def test_escalation_returns_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Signing a CSR for another role than requested is a peer error: exit code 1."""
    _run("init", "--dir", str(tmp_path / "ca"), "--federation", "acme")
    csr = pki.make_key_and_csr(tmp_path / "s", "s1", role=pki.Role.OPERATOR)
    capsys.readouterr()
    assert _run("sign", str(csr), "--role", "site", "--dir", str(tmp_path / "ca")) == 1
    assert "unauthorized" in capsys.readouterr().err
    assert not (tmp_path / "s" / "s1.crt").exists()


def test_sign_refuses_to_overwrite_output(tmp_path: Path) -> None:
    """sign will not overwrite an existing --out file."""
    _run("init", "--dir", str(tmp_path / "ca"), "--federation", "acme")
    csr = pki.enroll(tmp_path / "s", "s1")
    out = tmp_path / "out.crt"
    out.write_text("keep")
    assert (
        _run("sign", str(csr), "--role", "site", "--dir", str(tmp_path / "ca"), "--out", str(out))
        == 2
    )
    assert out.read_text() == "keep"


def test_revoke_unknown_name_returns_2(tmp_path: Path) -> None:
    """Revoking a name the CA never issued to is a config error."""
    _run("init", "--dir", str(tmp_path), "--federation", "acme")
    assert _run("revoke", "nobody", "--dir", str(tmp_path)) == 2


def test_unknown_role_is_a_usage_error(tmp_path: Path) -> None:
    """An unknown --role is rejected by argparse before anything runs."""
    with pytest.raises(SystemExit) as exc:
        _run("issue", "x", "--role", "admin", "--dir", str(tmp_path))
    assert exc.value.code == 2


def test_init_writes_the_crl_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pki init` writes an empty, CA-signed crl.pem and tells the operator to configure it."""
    from cryptography import x509

    assert _run("init", "--dir", str(tmp_path), "--federation", "acme") == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "crl.pem") in out and "[tls] crl" in out
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert len(list(crl)) == 0
    _run("issue", "op", "--role", "operator", "--dir", str(tmp_path))
    assert _run("revoke", "op", "--dir", str(tmp_path)) == 0
    serial = x509.load_pem_x509_certificate((tmp_path / "op.crt").read_bytes()).serial_number
    crl = x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes())
    assert [r.serial_number for r in crl] == [serial]
