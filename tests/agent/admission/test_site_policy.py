"""The site policy file: parsing, one source of truth, reload, and the rules it adds."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path

import pytest

from agent.admission.approvals import ApprovalMode
from agent.admission.rules import RuleRefusal, check_code_allowed, check_time_window
from agent.admission.site_policy import PolicyHolder, SitePolicy, load_policy
from agent.admission.timewindows import DAY_NAMES, parse_window
from agent.config import load_config
from agent.local.audit import SiteAudit
from agent.tasks.runner import SiteContext, TaskOutcome, TaskRunner
from confide.errors import ConfigError, Reason
from confide.v1 import common_pb2
from tests.agent.conftest import (
    DATASET,
    FEDERATION,
    Pki,
    job_spec,
    make_runner,
    report_of,
    signed_task,
)
from tests.agent.fakes import FakeAggregator, FakeTransport, FakeWorkerFactory

AGENT = """
federation = "testfed"
policy = "policy.toml"
[tls]
ca = "pki/ca.crt"
cert = "pki/site-1.crt"
key = "pki/site-1.key"
signing_key = "pki/site-1.sign.key"
[state]
dir = "state"
"""

POLICY = """
[policy]
trusted_signers = ["alice"]
allowed_models = ["logreg", "mlp"]
allowed_bundles = ["{h}", "trusted-signers"]
time_windows = ["Mon-Fri 20:00-06:00", "Sat,Sun 00:00-24:00"]
max_round_attempts = 2
max_job_retries = 1
max_model_bytes = 4096
approval = "manual"
approval_expires_s = 60
trust_bundle_dp = true
[policy.datasets.tabular]
max_epsilon = 8.0
min_update_noise = 0.5
[datasets.tabular]
path = "data.csv"
features = ["a", "b"]
label = "y"
[sandbox]
allow_unsandboxed = true
memory_mb = 512
cpu_seconds = 60
processes = 64
open_files = 128
threads = 2
tmp_mb = 16
file_mb = 8
gpus = [1, 0]
""".replace("{h}", "ab" * 32)


def _files(tmp_path: Path, policy: str = POLICY, agent: str = AGENT) -> Path:
    (tmp_path / "policy.toml").write_text(policy)
    (tmp_path / "agent.toml").write_text(agent)
    return tmp_path / "agent.toml"


def test_every_policy_key_is_read_from_the_policy_file(tmp_path):
    """Every key of policy.toml lands in the SitePolicy, paths relative to policy.toml."""
    cfg = load_config(_files(tmp_path))
    p = cfg.policy
    assert cfg.policy_file == tmp_path / "policy.toml"
    assert p.trusted_signers == ("alice",) and p.allowed_models == {"logreg", "mlp"}
    assert p.allowed_bundles == {"ab" * 32, "trusted-signers"}
    assert [w.text for w in p.time_windows] == ["Mon-Fri 20:00-06:00", "Sat,Sun 00:00-24:00"]
    assert (p.attempt_caps.max_round_attempts, p.attempt_caps.max_job_retries) == (2, 1)
    assert p.max_model_bytes == 4096 and p.approval is ApprovalMode.MANUAL
    assert p.approval_expires_s == 60 and p.trust_bundle_dp is True
    assert p.dataset_policies["tabular"].max_epsilon == 8.0
    assert p.dataset_policies["tabular"].min_update_noise == 0.5
    assert p.datasets["tabular"].path == tmp_path / "data.csv"
    lim = p.sandbox.limits
    assert p.sandbox.allow_unsandboxed and p.sandbox.gpus == (0, 1)
    assert (lim.memory_bytes, lim.cpu_seconds, lim.processes) == (512 * 2**20, 60, 64)
    assert (lim.open_files, lim.threads, lim.tmp_bytes, lim.file_bytes) == (
        128,
        2,
        16 * 2**20,
        8 * 2**20,
    )
    assert cfg.trusted_signers == ("alice",)  # the old names still read the policy


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (("trusted_signers", "trusted_signer"), "policy.trusted_signer"),
        (('"mlp"]', '"resnet"]'), "policy.allowed_models"),
        (('"trusted-signers"]', '"ABC"]'), "policy.allowed_bundles"),
        (("Sat,Sun 00:00", "Sat,Sun 25:00"), "policy.time_windows"),
        (("Mon-Fri", "Mon-Fry"), "policy.time_windows"),
        (("max_epsilon = 8.0", "max_epsilon = -1.0"), "policy.datasets.tabular.max_epsilon"),
        (("gpus = [1, 0]", "gpus = [-1]"), "sandbox.gpus"),
        (("memory_mb = 512", "memory_mb = 1"), "sandbox.memory_mb"),
        (('approval = "manual"', 'approval = "sometimes"'), "policy.approval"),
        (("trust_bundle_dp = true", 'trust_bundle_dp = "yes"'), "policy.trust_bundle_dp"),
        (('label = "y"', 'label = "y"\ncolour = 1'), "datasets.tabular.colour"),
        (("[sandbox]", "[sandbox]\nmystery = 1"), "sandbox.mystery"),
    ],
)
def test_a_bad_or_unknown_key_is_refused_naming_it(tmp_path, edit, key):
    """A wrong value or an unknown key in policy.toml is a ConfigError naming its key."""
    _files(tmp_path, POLICY.replace(*edit))
    with pytest.raises(ConfigError) as exc:
        load_policy(tmp_path / "policy.toml")
    assert exc.value.key == key and "policy.toml" in str(exc.value)


def test_an_unknown_top_level_table_in_the_policy_file_is_refused(tmp_path):
    """A table the policy file does not have (a typo such as [polcy]) is refused by name."""
    _files(tmp_path, POLICY + "\n[polcy]\nx = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(tmp_path / "policy.toml")
    assert exc.value.key.startswith("polcy") and exc.value.reason is Reason.UNKNOWN_KEY


@pytest.mark.parametrize("table", ["datasets", "sandbox"])
def test_policy_tables_in_agent_toml_are_refused_when_a_policy_file_is_named(tmp_path, table):
    """With policy = FILE, a [datasets] or [sandbox] table in agent.toml is refused: one source."""
    path = _files(tmp_path, agent=AGENT + f"\n[{table}]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.key == table


def test_the_real_entry_point_exits_2_naming_the_policy_key(tmp_path):
    """`confide-agent` with a broken policy.toml prints one line naming the key and exits 2."""
    path = _files(tmp_path, POLICY.replace("max_model_bytes = 4096", "max_model_bytes = 0"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    res = subprocess.run(
        [sys.executable, "-m", "agent", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert res.returncode == 2
    assert "policy.max_model_bytes" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_reload_swaps_the_whole_policy_or_keeps_the_old_one(tmp_path):
    """A valid file replaces the policy; a broken one raises naming the key and changes nothing."""
    _files(tmp_path)
    holder = PolicyHolder(load_policy(tmp_path / "policy.toml"), path=tmp_path / "policy.toml")
    before = holder.current()
    (tmp_path / "policy.toml").write_text(POLICY.replace('["alice"]', '["bob"]'))
    assert holder.reload().trusted_signers == ("bob",)
    assert before.trusted_signers == ("alice",)  # a snapshot does not change under a task
    (tmp_path / "policy.toml").write_text(POLICY.replace('["alice"]', '"bob"'))
    with pytest.raises(ConfigError) as exc:
        holder.reload()
    assert exc.value.key == "policy.trusted_signers"
    assert holder.current().trusted_signers == ("bob",)


def test_trusting_bundle_dp_sgd_is_off_unless_said_and_a_bad_value_keeps_the_old_policy(
    pki, dataset, tmp_path
):
    """Without the key a bundle's DP-SGD is not trusted; a reload turns it on for the next
    task's site context; a reload with a non-boolean is refused naming the key, the old stays."""
    _files(tmp_path, POLICY.replace("trust_bundle_dp = true\n", ""))
    holder = PolicyHolder(load_policy(tmp_path / "policy.toml"), path=tmp_path / "policy.toml")
    site = make_runner(pki, dataset, FakeWorkerFactory()).site
    assert holder.current().trust_bundle_dp is False
    assert site.with_policy(holder.current()).trust_bundle_dp is False
    (tmp_path / "policy.toml").write_text(POLICY)
    assert holder.reload().trust_bundle_dp is True
    assert site.with_policy(holder.current()).trust_bundle_dp is True
    (tmp_path / "policy.toml").write_text(POLICY.replace("= true\n[policy.d", "= 1\n[policy.d"))
    with pytest.raises(ConfigError) as exc:
        holder.reload()
    assert exc.value.key == "policy.trust_bundle_dp"
    assert holder.current().trust_bundle_dp is True


def test_reload_policy_logs_and_audits_both_outcomes(tmp_path):
    """The daemon's reload appends policy_reloaded, or policy_reload_refused naming the key."""
    from agent.assembly import reload_policy

    _files(tmp_path)
    holder = PolicyHolder(load_policy(tmp_path / "policy.toml"), path=tmp_path / "policy.toml")
    audit = SiteAudit(":memory:")
    assert reload_policy(holder, audit=audit, approvals=None, now=1.0) is not None
    (tmp_path / "policy.toml").write_text(POLICY.replace("[policy]\n", "[policy]\nbogus = 1\n"))
    assert reload_policy(holder, audit=audit, approvals=None, now=2.0) is None
    events = [(e.event, e.rule) for e in audit.entries()]
    assert events == [("policy_reloaded", ""), ("policy_reload_refused", "policy.bogus")]
    assert audit.verify() == 2


# ----- the rules -----


def _model(kind: int = common_pb2.MODEL_KIND_LOGREG, code: bytes = b"") -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(kind=kind, code_sha256=code)


def test_allowed_models_refuses_other_built_in_kinds():
    """A built-in kind not in allowed_models is refused, rule policy.allowed_models."""
    check_code_allowed(_model(), allowed_models=None, allowed_bundles=())
    check_code_allowed(_model(), allowed_models={"logreg"}, allowed_bundles=())
    with pytest.raises(RuleRefusal) as exc:
        check_code_allowed(
            _model(common_pb2.MODEL_KIND_CNN), allowed_models={"logreg"}, allowed_bundles=()
        )
    assert exc.value.rule == "policy.allowed_models"
    assert exc.value.reason is Reason.CODE_NOT_ALLOWED


def test_allowed_bundles_admits_listed_hashes_or_any_trusted_signer_bundle():
    """A bundle is refused unless listed by hash or the site admits trusted signers' bundles."""
    h = bytes.fromhex("ab" * 32)
    check_code_allowed(_model(code=h), allowed_models=set(), allowed_bundles={"ab" * 32})
    check_code_allowed(_model(code=h), allowed_models=None, allowed_bundles={"trusted-signers"})
    for allowed in (set(), {"cd" * 32}):
        with pytest.raises(RuleRefusal) as exc:
            check_code_allowed(_model(code=h), allowed_models=None, allowed_bundles=allowed)
        assert exc.value.rule == "policy.allowed_bundles"


# 2024-01-05 is a Friday.
@pytest.mark.parametrize(
    ("at", "inside"),
    [
        (datetime(2024, 1, 5, 19, 59), False),  # Friday before the window opens
        (datetime(2024, 1, 5, 20, 0), True),  # Friday evening
        (datetime(2024, 1, 5, 23, 59), True),
        (datetime(2024, 1, 6, 0, 0), True),  # past midnight: Friday's night goes on
        (datetime(2024, 1, 6, 5, 59), True),
        (datetime(2024, 1, 6, 6, 0), False),  # closed at 06:00 (end exclusive)
        (datetime(2024, 1, 6, 21, 0), False),  # Saturday is not listed
        (datetime(2024, 1, 8, 5, 0), False),  # Monday morning: Sunday night is not listed
        (datetime(2024, 1, 8, 22, 0), True),  # Monday night
    ],
)
def test_time_window_across_midnight(at, inside):
    """Mon-Fri 20:00-06:00 covers each listed evening and the following early morning only."""
    windows = (parse_window("Mon-Fri 20:00-06:00"),)
    if inside:
        check_time_window(windows, at=at)
        return
    with pytest.raises(RuleRefusal) as exc:
        check_time_window(windows, at=at)
    assert exc.value.rule == "policy.time_windows"
    assert exc.value.reason is Reason.OUTSIDE_TIME_WINDOW


def test_wrapping_day_ranges_and_whole_days():
    """Fri-Mon wraps the week; 00:00-24:00 is the whole day; no windows means any time."""
    w = parse_window("Fri-Mon 00:00-24:00")
    assert w.days == {4, 5, 6, 0}
    check_time_window((w,), at=datetime(2024, 1, 7, 23, 59))  # Sunday
    with pytest.raises(RuleRefusal):
        check_time_window((w,), at=datetime(2024, 1, 3, 12, 0))  # Wednesday
    check_time_window((), at=datetime(2024, 1, 3, 12, 0))
    with pytest.raises(ValueError, match="same time"):
        parse_window("daily 06:00-06:00")


def _runner(pki: Pki, holder: PolicyHolder, *, workers: FakeWorkerFactory):
    """A runner whose policy comes from ``holder`` (the real clock: certificates are real)."""
    site = SiteContext(
        federation=FEDERATION,
        site=pki.site.info.name,
        signing_key=pki.site.signing_key,
        ca_pem=pki.site.ca_pem,
        crl_pem=None,
        trusted_signers=(),
        datasets={},
        device="cpu",
    )
    audit = SiteAudit(":memory:")
    runner = TaskRunner(site, start_worker=workers, policy=holder, audit=audit)
    return runner, audit


@pytest.mark.parametrize(
    ("policy", "rule", "reason"),
    [
        (dict(trusted_signers=("bob",)), "policy.trusted_signers", "signer_untrusted"),
        (dict(allowed_models=frozenset({"mlp"})), "policy.allowed_models", "code_not_allowed"),
        (dict(max_model_bytes=8), "policy.max_model_bytes", "model_too_large"),
        (dict(datasets={}), "datasets", "unknown_dataset"),
        (
            # A whole day three days from today: now is outside it, whatever the hour.
            dict(
                time_windows=(
                    parse_window(f"{DAY_NAMES[(date.today().weekday() + 3) % 7]} 00:00-24:00"),
                )
            ),
            "policy.time_windows",
            "outside_time_window",
        ),
    ],
)
def test_each_rule_refuses_a_task_naming_itself(pki, dataset, policy, rule, reason):
    """Under the policy in force, each rule refuses the task; report and audit name the rule."""
    base = {"trusted_signers": ("alice",), "datasets": {DATASET: dataset}}
    holder = PolicyHolder(SitePolicy(**{**base, **policy}))
    workers = FakeWorkerFactory()
    runner, audit = _runner(pki, holder, workers=workers)
    agg = FakeAggregator()
    out = runner.run(signed_task(pki.alice, spec=job_spec()), FakeTransport(agg))
    assert out is TaskOutcome.REFUSED and not workers.started
    rep = report_of(pki, agg.reports[0])
    assert rep.reason == reason and f"rule {rule}" in rep.message
    ended = [e for e in audit.entries() if e.event == "task_ended"]
    assert ended[-1].rule == rule


def test_a_reload_applies_from_the_next_task(pki, dataset, aggregator, tmp_path):
    """The runner takes the holder's policy per task: after a reload the next task is refused."""
    text = POLICY.replace('path = "data.csv"', f'path = "{dataset.path}"')
    text = text.replace('approval = "manual"', 'approval = "auto"')
    text = text.replace("max_model_bytes = 4096", "max_model_bytes = 1048576")
    text = text.replace('"Mon-Fri 20:00-06:00", "Sat,Sun 00:00-24:00"', "")
    _files(tmp_path, text)
    holder = PolicyHolder(load_policy(tmp_path / "policy.toml"), path=tmp_path / "policy.toml")
    workers = FakeWorkerFactory()
    runner, _ = _runner(pki, holder, workers=workers)
    t = FakeTransport(aggregator)
    # A TRAIN of the non-private job needs no privacy plan (an EVALUATE would need a model
    # the site trained on: agent.admission.lineage).
    assert runner.run(signed_task(pki.alice, task_id="a"), t) is TaskOutcome.OK
    (tmp_path / "policy.toml").write_text(text.replace('["alice"]', '["bob"]'))
    holder.reload()
    assert runner.run(signed_task(pki.alice, task_id="b", round=2), t) is (TaskOutcome.REFUSED)
    assert "rule policy.trusted_signers" in report_of(pki, aggregator.reports[-1]).message
