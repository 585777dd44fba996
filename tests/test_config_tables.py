"""Every table of every config and job file refuses an unknown key, naming it (exit 2)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config as load_agent_config
from aggregator.config import load_config as load_aggregator_config
from confide.cli.main import main as confide_main
from confide.cli.operator import load_operator_config
from confide.config import load_toml
from confide.errors import ConfigError, Reason
from confide.jobspec import job_from_toml
from confide.pki import Role, init_ca, issue
from confide_dev.localfed.federation import toml_text

NAME_TABLES = {("datasets",), ("policy", "datasets")}
"""Tables whose keys are names of sub-tables: a stray scalar there is named as not a table."""


def _tls(d: Path, name: str) -> dict[str, str]:
    return {
        "ca": str(d / "ca.crt"),
        "cert": str(d / f"{name}.crt"),
        "key": str(d / f"{name}.key"),
        "signing_key": str(d / f"{name}.sign.key"),
        "crl": str(d / "crl.pem"),
    }


def agent_toml(d: Path) -> dict[str, Any]:
    """An agent.toml with every table the daemon reads."""
    return {
        "federation": "fed",
        "aggregator": {"address": "127.0.0.1:7443", "server_name": "aggregator"},
        "tls": _tls(d, "site-1"),
        "state": {"dir": str(d / "state")},
        "api": {"socket": str(d / "a.sock")},
        "worker": {"device": "cpu", "task_timeout_s": 60},
        "sandbox": {"allow_unsandboxed": False, "memory_mb": 2048, "gpus": [0]},
        "datasets": {
            "tabular": {
                "path": "data.csv",
                "features": ["a", "b"],
                "label": "y",
                "input_shape": [2],
                "holdout_fraction": 0.2,
            }
        },
        "policy": {
            "trusted_signers": ["alice"],
            "max_round_attempts": 2,
            "max_job_retries": 1,
            "max_model_bytes": 1 << 20,
            "datasets": {"tabular": {"max_epsilon": 8.0, "min_update_noise": 0.5}},
        },
        "log": {"level": "info", "json": True},
    }


def aggregator_toml(d: Path) -> dict[str, Any]:
    """An aggregator.toml with every table the server reads."""
    return {
        "federation": "fed",
        "server": {"listen": "127.0.0.1:0", "max_update_bytes": 1 << 20},
        "tls": _tls(d, "aggregator"),
        "state": {"dir": str(d / "agg")},
        "store": {"backend": "sqlite"},
        "rounds": {"heartbeat_interval_s": 5, "max_round_retries": 2, "retry_backoff_s": 1},
        "limits": {"max_model_bytes": 1 << 20, "peer_calls": 4, "stream_idle_s": 10},
        "log": {"level": "info", "json": True},
    }


def operator_toml(d: Path) -> dict[str, Any]:
    """An operator.toml with every table the CLI reads."""
    return {
        "federation": "fed",
        "aggregator": {"address": "127.0.0.1:7443", "server_name": "aggregator"},
        "tls": _tls(d, "alice"),
        "log": {"level": "info"},
    }


def job_toml(_: Path) -> dict[str, Any]:
    """A job.toml with every table a job has."""
    return {
        "name": "bc",
        "rounds": 3,
        "min_sites": 3,
        "max_round_attempts": 2,
        "max_job_retries": 1,
        "model": {"kind": "mlp", "hidden": [16]},
        "dataset": {"name": "bc", "features": ["a", "b"], "label": "target"},
        "training": {"local_epochs": 1, "batch_size": 8, "server_optimizer": "fedadam"},
        "privacy": {
            "sample": {"target_epsilon": 3.0, "delta": 1e-5, "accountant": "rdp"},
            "update": {"clip_norm": 1.0, "noise_multiplier": 0.5, "delta": 1e-5},
        },
        "secure_aggregation": {"enabled": True, "threshold": 0.66, "bits": 16},
    }


def _load_job(path: Path) -> object:
    return job_from_toml(load_toml(path))


KINDS: dict[str, tuple[Callable[[Path], dict[str, Any]], Callable[[Path], object]]] = {
    "agent": (agent_toml, load_agent_config),
    "aggregator": (aggregator_toml, load_aggregator_config),
    "operator": (operator_toml, load_operator_config),
    "job": (job_toml, _load_job),
}


def _tables(data: Mapping[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for k, v in data.items():
        if isinstance(v, Mapping):
            yield from _tables(v, (*path, k))


def _cases() -> Iterator[Any]:
    for kind, (base, _) in KINDS.items():
        for table in _tables(base(Path("/x"))):
            yield pytest.param(kind, table, id=f"{kind}:[{'.'.join(table) or 'root'}]")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d, federation="fed")
    issue(d, "aggregator", role=Role.AGGREGATOR, dns=["localhost"])
    issue(d, "alice", role=Role.OPERATOR)
    issue(d, "site-1", role=Role.SITE)
    return d


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_complete_file_of_each_kind_loads(kind, pki_dir):
    """The base file of each kind is valid, so a refusal below is the typo's alone."""
    base, load = KINDS[kind]
    path = pki_dir / f"{kind}.toml"
    path.write_text(toml_text(base(pki_dir)))
    load(path)


@pytest.mark.parametrize(("kind", "table"), list(_cases()))
def test_a_typo_in_any_table_is_refused_naming_the_key(kind, table, pki_dir, tmp_path):
    """A key no reader knows, in any table of any file, is a ConfigError naming that key."""
    base, load = KINDS[kind]
    data = copy.deepcopy(base(pki_dir))
    target = data
    for k in table:
        target = target[k]
    target["colour"] = 1
    path = tmp_path / f"{kind}.toml"
    path.write_text(toml_text(data))
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.key == ".".join([*table, "colour"])
    expected = Reason.INVALID_VALUE if table in NAME_TABLES else Reason.UNKNOWN_KEY
    assert err.value.reason is expected


@pytest.mark.parametrize(
    ("table", "typo"),
    [
        (("privacy", "sample"), "noise_multipler"),
        (("privacy", "update"), "noise_multipler"),
        (("secure_aggregation",), "thresold"),
        ((), "max_job_retry"),
    ],
)
def test_job_check_exits_2_naming_a_typo_in_a_privacy_table(table, typo, tmp_path, capsys):
    """`confide job check` refuses a misspelled privacy key (which would have meant no noise)
    with exit code 2 and one line naming it."""
    data = job_toml(tmp_path)
    target = data
    for k in table:
        target = target[k]
    target[typo] = 0.5
    path = tmp_path / "job.toml"
    path.write_text(toml_text(data))
    assert confide_main(["job", "check", str(path)]) == 2
    key = ".".join([*table, typo])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"confide: config key '{key}': unknown key"]
