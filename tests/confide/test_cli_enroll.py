"""`confide pki enroll`: an operator makes its keys where it works; the CA only signs."""

from __future__ import annotations

import stat

from confide.cli.main import main
from confide.pki import init_ca


def test_an_operator_enrolls_and_the_ca_signs_the_csr(tmp_path, capsys):
    """Keys stay in the operator's folder (0600); `confide pki sign` turns the CSR into a cert."""
    init_ca(tmp_path / "ca", federation="acme")
    here = tmp_path / "alice"
    assert main(["pki", "enroll", "alice", "--role", "operator", "--dir", str(here)]) == 0
    assert "confide pki sign alice.csr --role operator" in capsys.readouterr().out
    assert stat.S_IMODE((here / "alice.sign.key").stat().st_mode) == 0o600
    csr = str(here / "alice.csr")
    assert main(["pki", "sign", csr, "--role", "operator", "--dir", str(tmp_path / "ca")]) == 0
    assert (here / "alice.crt").exists()
    other = ["--out", str(here / "as-site.crt"), "--dir", str(tmp_path / "ca")]
    assert main(["pki", "sign", csr, "--role", "site", *other]) == 1  # role must match the CSR
