"""`confide-aggregator enroll`: the aggregator makes its own keys and CSR, like a site."""

from __future__ import annotations

import stat

from aggregator.main import main
from confide.pki import Role, init_ca, load_identity, sign_csr


def test_enroll_makes_private_keys_here_and_a_csr_the_ca_signs(tmp_path, capsys):
    """Keys are 0600 where the aggregator runs; the signed CSR loads as its identity."""
    ca, here = tmp_path / "ca", tmp_path / "agg"
    init_ca(ca, federation="acme")
    assert main(["enroll", "--dir", str(here)]) == 0
    out = capsys.readouterr().out
    assert "confide pki sign aggregator.csr --role aggregator --dns" in out
    for key in ("aggregator.key", "aggregator.sign.key"):
        assert stat.S_IMODE((here / key).stat().st_mode) == 0o600
    assert not any(p.name.endswith(".key") for p in ca.glob("aggregator*"))
    cert = sign_csr(ca, (here / "aggregator.csr").read_bytes(), role=Role.AGGREGATOR, dns=["h"])
    (here / "aggregator.crt").write_bytes(cert)
    identity = load_identity(
        cert=here / "aggregator.crt",
        key=here / "aggregator.key",
        signing_key=here / "aggregator.sign.key",
        ca=ca / "ca.crt",
    )
    assert (identity.info.name, identity.info.role) == ("aggregator", Role.AGGREGATOR)


def test_enroll_refuses_to_overwrite_keys_and_running_needs_a_config(tmp_path, capsys):
    """A second enroll into the same folder exits 2; no --config exits 2 with one line."""
    assert main(["enroll", "--dir", str(tmp_path)]) == 0
    assert main(["enroll", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([]) == 2
    assert capsys.readouterr().err.strip().endswith("confide-aggregator: --config FILE is required")
