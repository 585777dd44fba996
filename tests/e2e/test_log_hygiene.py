"""What the daemons leave behind holds no key material and no training data (issue 13 item 7).

A private job with secure aggregation and hold-out evaluation runs on three real sites whose
configs do not say how to log, as under systemd (output to a file, not a terminal). Then
every line every process wrote (each daemon's stdout and stderr) and every file in every
state folder (the aggregator's database and blobs; each site's ledger, audit and other
databases) is searched for the private keys of every identity and for the feature values of
the sites' CSV files. Model weights may be there (they are what a federation makes); keys and
records may not.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from confide.v1 import admin_pb2
from confide_dev.demo import demo_job
from confide_dev.localfed import LocalFederation

from .conftest import site_setup

pytestmark = pytest.mark.e2e

_NUMBER = re.compile(rb"(?<![0-9.])-?[0-9]+\.[0-9]+(?:[eE][-+]?[0-9]+)?(?![0-9])")
_MIN_DIGITS = 5  # a value with fewer significant digits could be anything (a rate, a time)


def _key_forms(path: Path) -> dict[bytes, str]:
    """Every rendering of the private key in ``path`` worth searching for, with its name."""
    text = path.read_bytes()
    if text.startswith(b"-----BEGIN"):
        key = serialization.load_pem_private_key(text, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        raw = key.private_numbers().private_value.to_bytes(32, "big")
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        body = b"".join(line for line in text.splitlines() if not line.startswith(b"-----"))
        forms = {der: "DER", body: "PEM body"}
        forms.update({line: "a PEM line" for line in text.splitlines()[1:-1] if len(line) > 20})
    else:
        raw = bytes.fromhex(text.decode().strip())  # an Ed25519 seed, hex
    assert len(raw) == 32
    forms_raw = {
        raw: "raw bytes",
        raw.hex().encode(): "hex",
        raw.hex().upper().encode(): "HEX",
        base64.b64encode(raw): "base64",
        base64.b64encode(raw).rstrip(b"="): "base64",
        base64.urlsafe_b64encode(raw).rstrip(b"="): "base64url",
    }
    if text.startswith(b"-----BEGIN"):
        forms_raw.update(forms)
    return {k: f"{path.name} ({v})" for k, v in forms_raw.items()}


def _significant(cell: str) -> int:
    mantissa = cell.lower().split("e")[0].lstrip("-+").replace(".", "").lstrip("0")
    return len(mantissa)


def _feature_values(csv_paths: list[Path]) -> set[float]:
    """Each feature cell with enough significant digits to be told apart, as float64 and as
    the float32 a tensor would hold it (the label column is left out: it is 0 or 1)."""
    values: set[float] = set()
    for path in csv_paths:
        for line in path.read_text().splitlines()[1:]:
            for cell in line.split(",")[:-1]:
                if _significant(cell) >= _MIN_DIGITS:
                    values.add(float(cell))
                    values.add(float(np.float32(cell)))
    return values


def _scan_text(data: bytes, values: set[float]) -> list[bytes]:
    found = []
    for token in _NUMBER.findall(data):
        if _significant(token.decode()) >= _MIN_DIGITS and float(token) in values:
            found.append(token)
    return found


def _scan_binary(data: bytes, packed: dict[bytes, float]) -> list[float]:
    """Feature values stored as 8-byte floats (SQLite's REAL is big-endian, NumPy's little)."""
    windows = {data[i : i + 8] for i in range(len(data) - 7)}
    return [packed[w] for w in windows & packed.keys()]


def test_logs_and_state_hold_no_private_key_and_no_feature_value(tmp_path, bc3):
    """After a private, securely aggregated, evaluated job, no log line and no state file holds
    'PRIVATE KEY', any identity's private key in any encoding, or a training feature value;
    every log line is JSON (the default off a terminal) without colour codes."""
    fed = LocalFederation(tmp_path, federation="e2e", log_level="debug", log_json=None)
    try:
        names = ["site-1", "site-2", "site-3"]
        fed.make_pki(names)
        fed.start_aggregator()
        for i, name in enumerate(names):
            fed.start_agent(site_setup(name, bc3, i, max_epsilon=50.0))
        fed.wait_for_sites(3)
        spec = demo_job(sites=3, rounds=2, features=bc3.features, secure=True, private=True, seed=0)
        status = fed.wait_job(fed.submit(spec), timeout=300)
        assert status.state == admin_pb2.JOB_STATE_DONE, status.error
    finally:
        codes = fed.stop()
    assert set(codes.values()) == {0}

    logs = [fed.aggregator_dir / "aggregator.log"] + [fed.site_dirs[n] / "agent.log" for n in names]
    state = [fed.aggregator_dir / "state"] + [fed.site_dirs[n] / "state" for n in names]
    state_files = [p for d in state for p in sorted(d.rglob("*")) if p.is_file()]
    assert any(p.suffix == ".db" for p in state_files) and len(state_files) >= 5
    keys = sorted(fed.ca_dir.glob("*.key")) + [
        p for n in names for p in sorted(fed.site_dirs[n].glob("*.key"))
    ]
    assert len(keys) == 2 * (2 + len(names)) + 1  # aggregator, operator, sites: 2 each; CA
    secrets: dict[bytes, str] = {b"PRIVATE KEY": "the PEM marker"}
    for key in keys:
        secrets.update(_key_forms(key))
    values = _feature_values(list(bc3.paths))
    assert len(values) > 1000
    packed = {struct.pack(fmt, v): v for v in values for fmt in ("<d", ">d")}

    lines = 0
    for log in logs:
        for line in log.read_bytes().splitlines():
            lines += 1
            assert b"\x1b[" not in line, f"{log.name}: colour codes: {line[:200]!r}"
            assert isinstance(json.loads(line), dict), f"{log.name}: not JSON: {line[:200]!r}"
    assert lines > 50

    leaks: list[str] = []
    for path in logs + state_files:
        data = path.read_bytes()
        where = path.relative_to(tmp_path)
        leaks += [f"{where}: {what}" for secret, what in secrets.items() if secret in data]
        leaks += [f"{where}: feature value {t.decode()}" for t in _scan_text(data, values)]
        if path in state_files:
            leaks += [f"{where}: feature value {v!r} (binary)" for v in _scan_binary(data, packed)]
    assert not leaks, "\n".join(leaks[:40])
