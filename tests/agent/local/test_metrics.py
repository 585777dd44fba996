"""The site daemon's metrics: task outcomes, worker start and training times, budget, connection."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config import config_from_section
from agent.local.metrics import AgentMetrics, BudgetCollector, ConnectionCollector
from agent.privacy.ledger import Budget
from agent.tasks.runner import TaskOutcome
from confide.config import parse_toml
from confide.errors import ConfigError
from confide.metrics import MetricsConfig
from confide.v1 import federation_pb2
from tests.agent.conftest import job_spec, signed_task
from tests.agent.fakes import FakeTransport
from tests.agent.test_daemon import _config

G = "confide_agent"


def _tasks(metrics: AgentMetrics, kind: str, outcome: str, reason: str = "") -> float | None:
    return metrics.registry.get_sample_value(
        f"{G}_tasks_total", {"kind": kind, "outcome": outcome, "reason": reason}
    )


def test_task_outcomes_worker_starts_and_training_times_are_counted(pki, runner, aggregator):
    """Each answered task is counted by kind, outcome and reason; the job's one worker start
    and each round's training are timed."""
    m = runner.metrics
    t = FakeTransport(aggregator)
    assert runner.run(signed_task(pki.alice, task_id="a", round=1), t) is TaskOutcome.OK
    assert runner.run(signed_task(pki.alice, task_id="b", round=2), t) is TaskOutcome.OK
    refused = signed_task(pki.mallory, task_id="c", round=3)
    assert runner.run(refused, t) is TaskOutcome.REFUSED
    unknown = signed_task(pki.alice, task_id="d", spec=job_spec("secret-records"))
    assert runner.run(unknown, t) is TaskOutcome.REFUSED
    done = signed_task(pki.alice, task_id="e", kind=federation_pb2.TASK_KIND_JOB_DONE)
    assert runner.run(done, t) is TaskOutcome.OK
    assert _tasks(m, "train", "ok") == 2
    assert _tasks(m, "train", "refused", "signer_untrusted") == 1
    assert _tasks(m, "train", "refused", "unknown_dataset") == 1
    assert _tasks(m, "job_done", "ok") == 1
    assert _tasks(m, "train", "failed", "worker_failed") is None
    assert m.registry.get_sample_value(f"{G}_worker_start_seconds_count") == 1
    assert m.registry.get_sample_value(f"{G}_training_seconds_count") == 2
    assert m.registry.get_sample_value(f"{G}_training_seconds_sum") >= 0


def test_a_failed_worker_is_counted_failed_with_its_reason(pki, runner, aggregator, workers):
    """A worker that dies counts one failed train task, reason worker_failed, and no training
    time."""
    workers.fail_next = True
    out = runner.run(signed_task(pki.alice), FakeTransport(aggregator))
    assert out is TaskOutcome.FAILED
    assert _tasks(runner.metrics, "train", "failed", "worker_failed") == 1
    assert runner.metrics.registry.get_sample_value(f"{G}_training_seconds_count") == 0


def _budget(dataset: str, spent: float, cap: float) -> Budget:
    return Budget(
        dataset=dataset,
        max_epsilon=cap,
        spent_epsilon=spent,
        remaining_epsilon=max(cap - spent, 0.0),
        update_epsilon=0.0,
        rounds=1,
        in_flight=0,
        delta=1e-5,
    )


def test_budget_and_connection_are_read_from_their_owners_at_each_scrape():
    """ε spent and remaining per dataset and the connection state are asked for at each
    scrape, so they follow the ledger and the session."""
    lines = [_budget("heart", 1.0, 8.0), _budget("open", 0.0, math.inf)]
    connected = [False]
    registry = CollectorRegistry()
    registry.register(BudgetCollector(lambda: lines))
    registry.register(ConnectionCollector(lambda: connected[0]))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(f"{G}_{name}", labels)

    assert value("epsilon_spent", dataset="heart") == 1.0
    assert value("epsilon_remaining", dataset="heart") == 7.0
    assert value("epsilon_remaining", dataset="open") == math.inf
    assert value("connected") == 0
    lines[0] = _budget("heart", 2.5, 8.0)
    connected[0] = True
    assert value("epsilon_spent", dataset="heart") == 2.5
    assert value("epsilon_remaining", dataset="heart") == 5.5
    assert value("connected") == 1


_AGENT = """
federation = "f"
[tls]
ca = "ca.crt"
cert = "s.crt"
key = "s.key"
signing_key = "s.sign.key"
[state]
dir = "state"
"""


def test_agent_config_reads_the_metrics_table():
    """[metrics] is off when absent, read when set, and a bad value names metrics.listen."""
    assert config_from_section(parse_toml(_AGENT)).metrics is None
    cfg = config_from_section(parse_toml(_AGENT + '[metrics]\nlisten = "[::1]:0"\n'))
    assert cfg.metrics == MetricsConfig("::1", 0)
    for bad in ('"10.0.0.5:9465"', '"127.0.0.1:port"'):
        with pytest.raises(ConfigError) as err:
            config_from_section(parse_toml(_AGENT + f"[metrics]\nlisten = {bad}\n"))
        assert err.value.key == "metrics.listen"


def test_a_daemon_whose_metrics_address_is_taken_exits_2_naming_the_key(tmp_path, pki):
    """The real daemon refuses to start on a busy metrics port: one line naming
    metrics.listen, exit 2, and no control socket was ever served."""
    cfg = _config(tmp_path, pki.dir)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg.write_text(cfg.read_text() + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        proc = subprocess.run(
            [sys.executable, "-m", "agent", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).parents[3],
        )
    assert proc.returncode == 2, proc.stderr
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("confide-agent: config key 'metrics.listen': cannot bind 127.0.0.1:")
    )
    assert not (tmp_path / "state" / "agent.sock").exists()
