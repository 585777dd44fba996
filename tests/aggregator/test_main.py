"""Config loading and the command line (the no-torch rule is in tests/test_import_rules.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aggregator.config import DEFAULT_MAX_MODEL_BYTES, parse_config
from aggregator.main import main
from aggregator.quota import Limits
from aggregator.store import StoreBackend, StoreConfig
from aggregator.store.blobs import FileBlobStore
from confide.errors import ConfigError, Reason

ROOT = Path(__file__).resolve().parents[2]


def _toml(pki: Path, state: Path, extra: str = "") -> str:
    return f"""
federation = "testfed"
[server]
listen = "127.0.0.1:0"
[tls]
ca = "{pki}/ca.crt"
cert = "{pki}/aggregator.crt"
key = "{pki}/aggregator.key"
signing_key = "{pki}/aggregator.sign.key"
crl = "{pki}/crl.pem"
[state]
dir = "{state}"
{extra}
"""


def test_config_defaults(pki, tmp_path):
    """A minimal config gets the documented defaults."""
    cfg = parse_config(_toml(pki, tmp_path))
    assert (cfg.max_update_bytes, cfg.max_concurrent_uploads) == (2 * 1024**3, 16)
    assert (cfg.heartbeat_interval_s, cfg.site_timeout_s, cfg.max_round_retries) == (5, 30, 3)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("[rounds]\nheartbeat_intervl_s = 5", "rounds.heartbeat_intervl_s"),
        ("[rounds]\nsite_timeout_s = 1", "rounds.site_timeout_s"),
        ("[log]\nlevel = 'loud'", "log.level"),
        ("bogus = 1", "state.bogus"),
        ("[store]\nbackend = 'postgresql'", "store.backend"),
        ("[store]\nbackend = 1", "store.backend"),
        ("[store]\nunreferenced_blob_grace_s = 3599", "store.unreferenced_blob_grace_s"),
        ("[store]\nunreferenced_blob_grace_s = 'a day'", "store.unreferenced_blob_grace_s"),
    ],
)
def test_config_errors_name_the_key(pki, tmp_path, extra, key):
    """An unknown or invalid key raises ConfigError naming it."""
    with pytest.raises(ConfigError) as err:
        parse_config(_toml(pki, tmp_path, extra))
    assert err.value.key == key


def test_unreferenced_blob_grace_defaults_to_a_day_and_takes_an_hour_or_more(pki, tmp_path):
    """[store] unreferenced_blob_grace_s: a day when left out; 3600 (the least) is taken."""
    assert parse_config(_toml(pki, tmp_path)).store.unreferenced_blob_grace_s == 86400.0
    cfg = parse_config(_toml(pki, tmp_path, "[store]\nunreferenced_blob_grace_s = 3600"))
    assert cfg.store.unreferenced_blob_grace_s == 3600.0


def test_config_bad_listen(pki, tmp_path):
    """A listen address without a port is refused, naming server.listen."""
    text = _toml(pki, tmp_path).replace('"127.0.0.1:0"', '"nowhere"')
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert err.value.key == "server.listen"


def test_main_config_error_exits_2(tmp_path, capsys):
    """A bad config prints one line naming the key and exits 2."""
    (tmp_path / "a.toml").write_text("federation = 3\n")
    assert main(["--config", str(tmp_path / "a.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["confide-aggregator: config key 'federation': must be a string, got int"]


def test_main_exits_2_naming_an_unknown_store_backend(pki, tmp_path, capsys):
    """A store backend this aggregator lacks is one line naming store.backend, exit 2, and
    nothing is created in the state folder."""
    text = _toml(pki, tmp_path / "state", "[store]\nbackend = 'mysql'")
    (tmp_path / "a.toml").write_text(text)
    assert main(["--config", str(tmp_path / "a.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "confide-aggregator: config key 'store.backend': must be one of sqlite; got 'mysql'"
    ]
    assert not (tmp_path / "state").exists()


def test_store_backend_defaults_to_sqlite_and_can_be_named(pki, tmp_path):
    """Without [store] the backend is SQLite; naming it explicitly gives the same."""
    assert parse_config(_toml(pki, tmp_path)).store == StoreConfig(backend=StoreBackend.SQLITE)
    named = parse_config(_toml(pki, tmp_path, "[store]\nbackend = 'sqlite'"))
    assert named.store.backend is StoreBackend.SQLITE


def test_a_failure_at_start_is_one_line_with_its_reason_and_exit_1(pki, tmp_path):
    """A state file from a newer version stops the process with one line ending in its
    reason and exit 1, as every Confide command reports a non-config error; no traceback."""
    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "aggregator.db") as db:
        db.execute("PRAGMA user_version = 99")
    (tmp_path / "a.toml").write_text(_toml(pki, state))
    done = subprocess.run(
        [sys.executable, "-m", "aggregator.main", "--config", str(tmp_path / "a.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("confide-aggregator: ") and line.endswith("(internal)")
    assert "schema 99" in line


def test_process_listens_and_stops_on_sigterm(pki, tmp_path):
    """The process writes its address, logs aggregator_listening, and exits 0 on SIGTERM."""
    (tmp_path / "a.toml").write_text(_toml(pki, tmp_path / "state"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aggregator.main",
            "--config",
            str(tmp_path / "a.toml"),
            "--log-json",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        line = proc.stderr.readline()
        assert '"aggregator_listening"' in line
        assert (tmp_path / "state" / "address").read_text().startswith("127.0.0.1:")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_config_without_crl_is_refused_naming_tls_crl(pki, tmp_path, capsys):
    """An aggregator config that names no CRL does not start: exit 2, naming tls.crl."""
    text = _toml(pki, tmp_path).replace(f'crl = "{pki}/crl.pem"\n', "")
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert (err.value.key, err.value.reason) == ("tls.crl", Reason.MISSING_KEY)
    (tmp_path / "a.toml").write_text(text)
    assert main(["--config", str(tmp_path / "a.toml")]) == 2
    assert "tls.crl" in capsys.readouterr().err


def test_config_crl_none_must_be_said_explicitly(pki, tmp_path):
    """crl = "none" runs without revocation; a CRL path that does not exist is refused."""
    text = _toml(pki, tmp_path)
    assert parse_config(text).crl == pki / "crl.pem"
    assert parse_config(text.replace(f'"{pki}/crl.pem"', '"none"')).crl is None
    with pytest.raises(ConfigError) as err:
        parse_config(text.replace(f'"{pki}/crl.pem"', f'"{pki}/nowhere.pem"'))
    assert err.value.key == "tls.crl"


def test_limits_defaults_and_values(pki, tmp_path):
    """[limits] is optional; each key it names is read into the config."""
    cfg = parse_config(_toml(pki, tmp_path))
    assert cfg.max_model_bytes == DEFAULT_MAX_MODEL_BYTES and cfg.limits == Limits()
    extra = "[limits]\nmax_model_bytes = 1000\npeer_calls = 3\npeer_rate = 2.5\nstream_idle_s = 4"
    cfg = parse_config(_toml(pki, tmp_path, extra))
    assert cfg.max_model_bytes == 1000
    assert (cfg.limits.peer_calls, cfg.limits.peer_rate, cfg.limits.stream_idle_s) == (3, 2.5, 4)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("peer_transfers = 32", "limits.peer_transfers"),  # one peer could take every slot
        ("peer_calls = 64", "limits.peer_calls"),  # ... or every short-call handler
        ("peer_bytes_in_flight = 4294967296", "limits.peer_bytes_in_flight"),
        ("max_model_bytes = 2147483648", "limits.max_model_bytes"),  # no site could upload
        ("peer_rate = 0", "limits.peer_rate"),
        ("peer_burts = 5", "limits.peer_burts"),
    ],
)
def test_limits_that_let_one_peer_take_everything_are_refused(pki, tmp_path, extra, key):
    """A limit that would let one peer exhaust a shared capacity is a config error naming it."""
    with pytest.raises(ConfigError) as err:
        parse_config(_toml(pki, tmp_path, "[limits]\n" + extra))
    assert err.value.key == key


def test_state_is_private_under_umask_0(pki, tmp_path):
    """Run by hand with umask 0, the aggregator makes its state dir 0700 and its database 0600."""
    state = tmp_path / "deep" / "state"
    (tmp_path / "a.toml").write_text(_toml(pki, state))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator.main", "--config", str(tmp_path / "a.toml")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        umask=0,
    )
    try:
        assert '"aggregator_listening"' in proc.stderr.readline()
        for d in (state, state / "blobs"):
            assert oct(os.stat(d).st_mode & 0o777) == oct(0o700), d
        db = [p for p in state.iterdir() if p.name.startswith("aggregator.db")]
        assert {p.name for p in db} >= {"aggregator.db", "aggregator.db-wal"}
        for p in [*db, state / "address"]:
            assert oct(os.stat(p).st_mode & 0o777) == oct(0o600), p.name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_the_process_collects_an_old_unnamed_blob_after_it_listens(pki, tmp_path):
    """A blob no row names, stored long ago, is removed once the daemon listens, and the
    removal is in its log and its audit chain."""
    state = tmp_path / "state"
    old = FileBlobStore(state / "blobs", clock=lambda: 1000.0).put_bytes(b"abandoned upload")
    young = FileBlobStore(state / "blobs").put_bytes(b"an upload whose submit is coming")
    (tmp_path / "a.toml").write_text(_toml(pki, state))
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregator.main", "--config", str(tmp_path / "a.toml")],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    try:
        assert '"aggregator_listening"' in proc.stderr.readline()
        blobs = FileBlobStore(state / "blobs")
        deadline = time.monotonic() + 30
        while blobs.has_bytes(old):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert blobs.has_bytes(young)
    assert '"blob_collected"' in err and old in err and '"blob_collection_done"' in err
    with sqlite3.connect(state / "aggregator.db") as db:
        rows = db.execute("SELECT detail FROM audit WHERE event = 'blob_collected'").fetchall()
    assert rows == [(f"{old} {len(b'abandoned upload')} bytes",)]
