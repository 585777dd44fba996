"""Config loading, the command line, and the no-torch import rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator.config import parse_config
from aggregator.main import main
from confide.errors import ConfigError

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
    ],
)
def test_config_errors_name_the_key(pki, tmp_path, extra, key):
    """An unknown or invalid key raises ConfigError naming it."""
    with pytest.raises(ConfigError) as err:
        parse_config(_toml(pki, tmp_path, extra))
    assert err.value.key == key


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


def test_import_does_not_pull_torch():
    """Importing the aggregator leaves torch unimported."""
    code = "import sys, aggregator.main, aggregator.server; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


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
