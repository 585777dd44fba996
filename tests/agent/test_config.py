"""agent.toml parsing: defaults, and every error naming its dotted key with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.admission.site_policy import AttemptCaps
from agent.config import LogLevel, load_config
from agent.main import main
from confide.errors import ConfigError, Reason

BASE = """
federation = "testfed"
[aggregator]
address = "127.0.0.1:7443"
[tls]
ca = "pki/ca.crt"
cert = "pki/site-1.crt"
key = "pki/site-1.key"
signing_key = "pki/site-1.sign.key"
[state]
dir = "state"
[datasets.tabular]
path = "data.csv"
features = ["a", "b"]
label = "y"
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_minimal_config_has_documented_defaults(tmp_path):
    """A minimal file gets the default server name, socket, device, timeout and policy."""
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.federation == "testfed"
    assert cfg.server_name == "aggregator"
    assert cfg.state_dir == tmp_path / "state"
    assert cfg.api_socket == tmp_path / "state" / "agent.sock"
    assert cfg.tls.cert == tmp_path / "pki" / "site-1.crt" and cfg.tls.crl is None
    assert cfg.device == "auto" and cfg.task_timeout_s == 3600.0
    assert list(cfg.datasets) == ["tabular"] and cfg.trusted_signers == ()
    assert cfg.attempt_caps == AttemptCaps()  # the signed job's limits apply as they are
    assert cfg.log_level is LogLevel.INFO and cfg.log_json is None


def test_full_config(tmp_path):
    """Policy, per-dataset limits, worker and log settings are read."""
    text = (
        BASE
        + """
[api]
socket = "/tmp/x.sock"
[worker]
device = "cuda:1"
task_timeout_s = 120
[policy]
trusted_signers = ["alice"]
max_round_attempts = 2
max_job_retries = 0
[policy.datasets.tabular]
max_epsilon = 8.0
min_update_noise = 0.5
max_evaluations = 5
exact_evaluation = true
[log]
level = "debug"
json = true
"""
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.api_socket == Path("/tmp/x.sock")
    assert (cfg.device, cfg.task_timeout_s) == ("cuda:1", 120.0)
    assert cfg.trusted_signers == ("alice",)
    assert cfg.attempt_caps == AttemptCaps(max_round_attempts=2, max_job_retries=0)
    assert cfg.dataset_policies["tabular"].max_epsilon == 8.0
    assert cfg.dataset_policies["tabular"].min_update_noise == 0.5
    assert cfg.dataset_policies["tabular"].max_evaluations == 5
    assert cfg.dataset_policies["tabular"].exact_evaluation is True
    assert cfg.log_level is LogLevel.DEBUG and cfg.log_json is True


@pytest.mark.parametrize(
    ("edit", "key", "reason"),
    [
        (lambda t: t.replace('federation = "testfed"\n', ""), "federation", Reason.MISSING_KEY),
        (
            lambda t: t.replace('signing_key = "pki/site-1.sign.key"\n', ""),
            "tls.signing_key",
            Reason.MISSING_KEY,
        ),
        (
            lambda t: t.replace('address = "127.0.0.1:7443"', "adress = 'x:1'"),
            "aggregator.adress",
            Reason.UNKNOWN_KEY,
        ),
        (
            lambda t: t + '[worker]\ntask_timeout_s = "long"\n',
            "worker.task_timeout_s",
            Reason.INVALID_VALUE,
        ),
        (lambda t: t + '[worker]\ndevice = "tpu"\n', "worker.device", Reason.INVALID_VALUE),
        (
            lambda t: t + '[policy]\ntrusted_signers = "alice"\n',
            "policy.trusted_signers",
            Reason.INVALID_VALUE,
        ),
        (
            lambda t: t + "[policy.datasets.other]\nmax_epsilon = 1.0\n",
            "policy.datasets.other",
            Reason.INVALID_VALUE,
        ),
        (
            lambda t: t + "[policy.datasets.tabular]\nmax_evaluations = -1\n",
            "policy.datasets.tabular.max_evaluations",
            Reason.INVALID_VALUE,
        ),
        (
            lambda t: t + '[policy.datasets.tabular]\nexact_evaluation = "yes"\n',
            "policy.datasets.tabular.exact_evaluation",
            Reason.INVALID_VALUE,
        ),
        (lambda t: t + '[log]\nlevel = "loud"\n', "log.level", Reason.INVALID_VALUE),
        (
            lambda t: t + "[policy]\nmax_round_attempts = 0\n",
            "policy.max_round_attempts",
            Reason.INVALID_VALUE,
        ),
        (lambda t: t + "colour = 1\n", "datasets.tabular.colour", Reason.UNKNOWN_KEY),
        (lambda t: t.replace("[state]", "[sate]"), "state", Reason.MISSING_KEY),
    ],
)
def test_errors_name_the_key_and_main_exits_2(tmp_path, capsys, edit, key, reason):
    """Missing, mistyped and unknown keys raise ConfigError naming the key; main exits 2."""
    path = _write(tmp_path, edit(BASE))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert info.value.reason is reason
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"confide-agent: config key '{key}'")


def test_missing_config_file_exits_2(tmp_path, capsys):
    """A config path that does not exist is a one-line error and exit code 2."""
    assert main(["status", "--config", str(tmp_path / "nope.toml")]) == 2
    assert "confide-agent: config key" in capsys.readouterr().err


def test_policy_max_model_bytes(tmp_path):
    """[policy] max_model_bytes defaults to 512 MiB, is read when set, and must be >= 1."""
    assert load_config(_write(tmp_path, BASE)).max_model_bytes == 512 * 1024**2
    cfg = load_config(_write(tmp_path, BASE + "[policy]\nmax_model_bytes = 1000\n"))
    assert cfg.max_model_bytes == 1000
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, BASE + "[policy]\nmax_model_bytes = 0\n"))
    assert err.value.key == "policy.max_model_bytes"


def test_a_dataset_policy_defaults_to_noised_capped_evaluation(tmp_path):
    """Unless the policy says so, a dataset gives no exact figures and at most 50 per job."""
    cfg = load_config(_write(tmp_path, BASE + "[policy.datasets.tabular]\nmax_epsilon = 3.0\n"))
    policy = cfg.dataset_policies["tabular"]
    assert policy.exact_evaluation is False and policy.max_evaluations == 50
