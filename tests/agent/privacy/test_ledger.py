"""The site privacy ledger: caps, durability across kill -9, release rules, concurrency."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.admission.limits import JobLimits
from agent.privacy.ledger import Ledger, ReservationId
from agent.privacy.plan import PrivacyPlan
from confide.dp.budget import (
    RecordCost,
    cumulative_epsilon,
    discrete_update_cost,
    round_cost,
    update_cost,
)
from confide.dp.ddg import ddg_params
from confide.dp.evaluation import evaluation_cost
from confide.errors import InternalError, PolicyRefusal, Reason
from tests.agent.privacy.first_layout import OldEntry, write_first_layout

REPO = Path(__file__).resolve().parents[3]
RECORD = RecordCost(sample_rate=0.01, noise_multiplier=1.0, steps=100, delta=1e-5)
COST = round_cost(
    record=RECORD,
    update=update_cost(noise_multiplier=1.0, sites_survived=3, min_sites=3, distributed=True),
    delta=1e-5,
)


def _fits(cap: float) -> int:
    """How many COST rounds fit under ``cap`` by exact composition."""
    n = 0
    while cumulative_epsilon([COST] * (n + 1), delta=1e-5)[0] <= cap:
        n += 1
    return n


@pytest.fixture
def ledger(tmp_path):
    """A fresh ledger file."""
    with Ledger.open(tmp_path / "ledger.sqlite") as led:
        yield led


def test_refuses_the_round_that_would_cross_the_cap(ledger):
    """Rounds are accepted until the next would cross max_epsilon, which is refused."""
    cap = 1.5
    n = _fits(cap)
    assert n >= 2
    for r in range(n):
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=r + 1, layer_costs=COST, max_epsilon=cap
        )
    before = ledger.spent("ds")
    with pytest.raises(PolicyRefusal) as info:
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=n + 1, layer_costs=COST, max_epsilon=cap
        )
    assert info.value.reason is Reason.BUDGET_EXCEEDED
    assert getattr(info.value, "rule", "") == "policy.datasets.ds.max_epsilon"
    assert "ds" in str(info.value) and "1.5" in str(info.value)
    assert ledger.spent("ds") == before
    assert before.rounds == n and before.epsilon <= cap


def test_spent_is_exact_composition_not_a_sum(ledger):
    """spent() equals RDP composition over the entries and is below the sum of per-round ε."""
    for r in range(4):
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=r, layer_costs=COST, max_epsilon=100
        )
    spent = ledger.spent("ds")
    assert (spent.epsilon, spent.update_epsilon) == cumulative_epsilon([COST] * 4, delta=1e-5)
    assert spent.epsilon < 4 * COST.epsilon
    assert ledger.spent("other").rounds == 0


def _cost_at(delta: float):
    return round_cost(
        record=RecordCost(sample_rate=0.01, noise_multiplier=1.0, steps=100, delta=delta),
        update=None,
        delta=delta,
    )


def test_the_cap_is_checked_at_the_jobs_delta(ledger):
    """A round at δ=1e-9 is capped at 1e-9: refused where the same round at 1e-5 would fit."""
    strict = _cost_at(1e-9)
    eps_loose = cumulative_epsilon([strict], delta=1e-5)[0]
    eps_strict = cumulative_epsilon([strict], delta=1e-9)[0]
    cap = (eps_loose + eps_strict) / 2
    with pytest.raises(PolicyRefusal) as info:
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=1, layer_costs=strict, max_epsilon=cap
        )
    assert info.value.reason is Reason.BUDGET_EXCEEDED and "δ=1e-09" in str(info.value)
    ledger.reserve(
        dataset="ds", job_id="j", task_id="t", round=1, layer_costs=_cost_at(1e-5), max_epsilon=cap
    )


def test_a_large_job_delta_cannot_loosen_the_cap(ledger):
    """A round naming δ=0.1 is still capped at the ledger's δ (1e-5)."""
    loose = _cost_at(0.1)
    cap = cumulative_epsilon([loose], delta=1e-5)[0] * 0.9
    assert cumulative_epsilon([loose], delta=0.1)[0] < cap  # it would fit at its own δ
    with pytest.raises(PolicyRefusal) as info:
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=1, layer_costs=loose, max_epsilon=cap
        )
    assert "δ=1e-05" in str(info.value)


def test_update_level_cap(ledger):
    """A site-level cap refuses the round that would cross it."""
    with pytest.raises(PolicyRefusal) as info:
        ledger.reserve(
            dataset="ds",
            job_id="j",
            task_id="t",
            round=1,
            layer_costs=COST,
            max_epsilon=100,
            max_update_epsilon=COST.update_epsilon / 2,
        )
    assert info.value.reason is Reason.BUDGET_EXCEEDED
    assert getattr(info.value, "rule", "") == "policy.datasets.ds.max_update_epsilon"


_CHILD = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from agent.privacy.ledger import Ledger
from confide.dp.budget import RecordCost, round_cost
cost = round_cost(record=RecordCost(0.01, 1.0, 100, 1e-5), update=None, delta=1e-5)
led = Ledger.open({path!r})
led.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=cost, max_epsilon=10)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_reservation_survives_kill_9(tmp_path):
    """A reservation made just before SIGKILL, never marked sent, still counts after reopen."""
    path = tmp_path / "ledger.sqlite"
    code = _CHILD.format(repo=str(REPO), path=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with Ledger.open(path) as led:
        spent = led.spent("ds")
        assert spent.rounds == 1 and spent.epsilon > 0
        (entry,) = led.entries("ds")
        assert entry.state == "reserved"
        assert led.budgets({})[0].in_flight == 1


def test_release_after_sent_is_refused(ledger):
    """release_unsent is refused once the reservation was marked sent."""
    rid = ledger.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
    ledger.mark_sent(rid)
    ledger.mark_sent(rid)  # idempotent
    with pytest.raises(PolicyRefusal) as info:
        ledger.release_unsent(rid, proof="worker failed")
    assert info.value.reason is Reason.DENIED
    assert ledger.spent("ds").rounds == 1


def test_release_unsent_gives_the_budget_back(ledger):
    """An unsent reservation released with a proof stops counting and cannot be sent."""
    rid = ledger.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
    with pytest.raises(ValueError):
        ledger.release_unsent(rid, proof=" ")
    ledger.release_unsent(rid, proof="worker exited 1 before producing an update")
    assert ledger.spent("ds").rounds == 0
    with pytest.raises(PolicyRefusal):
        ledger.mark_sent(rid)
    with pytest.raises(PolicyRefusal):
        ledger.release_unsent(rid, proof="again")
    again = ledger.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
    assert again != rid


def test_same_round_cannot_be_reserved_twice(ledger):
    """A second live reservation of one (dataset, job, task, round) is refused."""
    ledger.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
    with pytest.raises(PolicyRefusal) as info:
        ledger.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
    assert info.value.reason is Reason.DENIED
    ledger.reserve(dataset="other", job_id="j", task_id="t", round=1, layer_costs=COST)


def test_unknown_reservation_is_an_internal_error(ledger):
    """mark_sent of an id the ledger never issued raises InternalError."""
    with pytest.raises(InternalError):
        ledger.mark_sent(ReservationId(12345))


def test_concurrent_reserves_never_overspend(ledger):
    """Threads racing to reserve distinct rounds never push spent ε over the cap."""
    cap = 1.5
    accepted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for r in range(6):
            try:
                ledger.reserve(
                    dataset="ds",
                    job_id=f"j{t}",
                    task_id="t",
                    round=r,
                    layer_costs=COST,
                    max_epsilon=cap,
                )
                with lock:
                    accepted.append(t)
            except PolicyRefusal:
                with lock:
                    refused.append(t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(accepted) == _fits(cap) == ledger.spent("ds").rounds
    assert ledger.spent("ds").epsilon <= cap
    assert len(accepted) + len(refused) == 36


@dataclass(frozen=True)
class _Policy:
    max_epsilon: float | None


def test_budgets_lists_policy_and_ledger_datasets(ledger):
    """budgets() reports every dataset of the policy or the ledger with spent and remaining."""
    ledger.reserve(dataset="b", job_id="j", task_id="t", round=1, layer_costs=COST, max_epsilon=5)
    rows = ledger.budgets({"a": _Policy(3.0), "b": _Policy(None)})
    assert [r.dataset for r in rows] == ["a", "b"]
    assert rows[0].max_epsilon == 3.0 and rows[0].spent_epsilon == 0 and rows[0].rounds == 0
    assert rows[1].max_epsilon == ledger.default_max_epsilon
    assert rows[1].spent_epsilon == pytest.approx(COST.epsilon)
    assert rows[1].remaining_epsilon == pytest.approx(rows[1].max_epsilon - COST.epsilon)


def test_reopen_keeps_entries_and_parameters(tmp_path):
    """Entries and their parameters survive close and reopen."""
    path = tmp_path / "ledger.sqlite"
    with Ledger.open(path) as led:
        rid = led.reserve(dataset="ds", job_id="j", task_id="t", round=3, layer_costs=COST)
        led.mark_sent(rid)
    with Ledger.open(path) as led:
        (entry,) = led.entries("ds")
        assert (entry.id, entry.round, entry.state) == (rid, 3, "sent")
        assert entry.cost.record == COST.record and entry.cost.update == COST.update


def test_a_ledger_from_before_discrete_rounds_opens_and_keeps_its_costs(tmp_path):
    """A ledger file without the discrete-Gaussian columns gains them on open; its rows read
    as the continuous rounds they were charged for, and a discrete round can follow them."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """CREATE TABLE entries (
                id INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
                job_id TEXT NOT NULL, round INTEGER NOT NULL, state TEXT NOT NULL,
                rec_sample_rate REAL, rec_noise_multiplier REAL, rec_steps INTEGER,
                rec_delta REAL, upd_noise_multiplier REAL, upd_sensitivity_factor REAL,
                epsilon REAL NOT NULL, update_epsilon REAL NOT NULL, cost_delta REAL NOT NULL,
                release_proof TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);"""
        )
        conn.execute(
            "INSERT INTO entries (dataset, job_id, round, state, rec_sample_rate, "
            "rec_noise_multiplier, rec_steps, rec_delta, upd_noise_multiplier, "
            "upd_sensitivity_factor, epsilon, update_epsilon, cost_delta, created_at, "
            "updated_at) VALUES ('ds', 'j/t', 1, 'sent', 0.01, 1.0, 100, 1e-5, 1.0, 1.0, "
            "?, ?, 1e-5, 0, 0)",
            (COST.epsilon, COST.update_epsilon),
        )
    ddg = ddg_params(clip_norm=1.0, noise_std=0.5, dim=10, max_summands=100)
    discrete = round_cost(record=None, update=discrete_update_cost(ddg, summands=3), delta=1e-5)
    with Ledger.open(path) as led:
        (entry,) = led.entries("ds")
        assert entry.cost.record == COST.record and entry.cost.update == COST.update
        led.reserve(
            dataset="ds", job_id="j", task_id="u", round=2, layer_costs=discrete, max_epsilon=1e3
        )
    with Ledger.open(path) as led:
        old, new = led.entries("ds")
        assert old.cost.update == COST.update and new.cost.update == discrete.update
        assert (
            led.spent("ds").update_epsilon
            == cumulative_epsilon([COST, discrete], delta=led.delta)[1]
        )


@settings(max_examples=15, deadline=None)
@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from([0.005, 0.02, 0.1]),
            st.sampled_from([0.8, 1.0, 2.0]),
            st.integers(1, 300),
            st.sampled_from(["reserve", "send", "release"]),
        ),
        min_size=1,
        max_size=12,
    ),
    cap=st.floats(0.5, 5.0),
)
def test_budget_is_never_overspent(plan, cap):
    """Whatever sequence of reserves, sends and releases, spent ε never exceeds the cap."""
    with tempfile.TemporaryDirectory() as tmp, Ledger.open(os.path.join(tmp, "l.sqlite")) as led:
        last: ReservationId | None = None
        for i, (q, z, steps, action) in enumerate(plan):
            cost = round_cost(record=RecordCost(q, z, steps, 1e-5), update=None, delta=1e-5)
            try:
                last = led.reserve(
                    dataset="ds",
                    job_id="j",
                    task_id="t",
                    round=i,
                    layer_costs=cost,
                    max_epsilon=cap,
                )
            except PolicyRefusal as exc:
                assert exc.reason is Reason.BUDGET_EXCEEDED
            if last is not None and action == "send":
                led.mark_sent(last)
            elif last is not None and action == "release":
                with contextlib.suppress(PolicyRefusal):
                    led.release_unsent(last, proof="worker failed")
                last = None
            assert led.spent("ds").epsilon <= cap


def test_an_evaluation_entry_keeps_its_kind_and_counts_at_record_level_only(tmp_path):
    """An evaluation entry survives reopening as one; it adds record ε, no rounds, no site ε."""
    path = tmp_path / "ledger.sqlite"
    ev = evaluation_cost(noise_multiplier=10.0, delta=1e-5)
    with Ledger.open(path) as led:
        led.reserve(dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST)
        before = led.spent("ds")
        led.mark_sent(led.reserve(dataset="ds", job_id="j", task_id="x", round=1, layer_costs=ev))
    with Ledger.open(path) as led:
        kinds = [e.cost.evaluation for e in led.entries("ds")]
        after = led.spent("ds")
        [line] = led.budgets({})
    assert kinds == [False, True]
    assert after.epsilon > before.epsilon and after.update_epsilon == before.update_epsilon
    assert after.rounds == before.rounds == 1 and line.rounds == 1


def test_a_ledger_written_before_evaluation_entries_opens_with_its_rounds(tmp_path):
    """An older ledger file (no kind column) gains it on open; its entries stay rounds."""
    path = tmp_path / "old.sqlite"
    write_first_layout(path, [OldEntry("j", 1, RECORD, 1.0)], kind_column=False)
    with Ledger.open(path) as led:
        [entry] = led.entries("ds")
        assert entry.cost.evaluation is False and led.spent("ds").rounds == 1


def test_a_first_layout_ledger_is_rebuilt_keyed_by_job_and_task(tmp_path):
    """A ledger keyed by joined '<job>/<task>' strings opens keyed by job and task columns:
    every entry keeps its id, state and cost; live tasks stay taken, charged attempts and
    evaluations still count for their job, and a job id that prefixes another's stays apart."""
    ev = evaluation_cost(noise_multiplier=10.0, delta=1e-5)
    assert ev.record is not None
    model = "ab" * 32
    path = tmp_path / "old.sqlite"
    write_first_layout(
        path,
        [
            OldEntry("job-1/job-1/1/1/train", 1, RECORD, 1.0, job="job-1"),
            OldEntry("job-1/job-1/1/2/train", 1, RECORD, 1.0, state="released", job="job-1"),
            OldEntry("job-1/job-1/1/3/train", 1, RECORD, 1.0, state="reserved", job="job-1"),
            OldEntry(f"job-1/evaluation/{model}", 0, ev.record, ev.epsilon, kind="evaluation"),
            OldEntry("a/b/c", 2, RECORD, 1.0, job="a/b"),
            OldEntry("legacy", 1, RECORD, 1.0),
        ],
    )
    want = [
        (1, "job-1", "job-1/1/1/train", 1, "sent", False),
        (2, "job-1", "job-1/1/2/train", 1, "released", False),
        (3, "job-1", "job-1/1/3/train", 1, "reserved", False),
        (4, "job-1", model, 0, "sent", True),
        (5, "a/b", "c", 2, "sent", False),
        (6, "legacy", "", 1, "sent", False),
    ]
    for _ in range(2):  # the second open finds the current layout and changes nothing
        with Ledger.open(path) as led:
            entries = led.entries("ds", include_released=True)
            got = [
                (e.id, e.job_id, e.task_id, e.round, e.state, e.cost.evaluation) for e in entries
            ]
            assert got == want
            assert [e.cost.record for e in entries] == [RECORD] * 3 + [ev.record] + [RECORD] * 2
    with Ledger.open(path) as led:
        with pytest.raises(PolicyRefusal) as taken:
            led.reserve(
                dataset="ds", job_id="job-1", task_id="job-1/1/3/train", round=1, layer_costs=COST
            )
        assert taken.value.reason is Reason.DENIED
        limits = JobLimits("job-1", rounds=3, max_round_attempts=2, max_job_retries=5)
        with pytest.raises(PolicyRefusal) as attempts:
            led.reserve(
                dataset="ds",
                job_id="job-1",
                task_id="job-1/1/4/train",
                round=1,
                layer_costs=COST,
                limits=limits,
            )
        assert attempts.value.reason is Reason.ATTEMPTS_EXCEEDED
        plan = PrivacyPlan(led)
        rnd = round_cost(record=RECORD, update=None, delta=1e-5)
        assert plan.job_epsilon(dataset="ds", job_id="job-1") == cumulative_epsilon(
            [rnd, rnd, ev], delta=1e-5
        )
        assert plan.job_epsilon(dataset="ds", job_id="a") == (0.0, 0.0)
        assert led.reserve(dataset="ds", job_id="n", task_id="t", round=1, layer_costs=COST) == 7


def test_the_previous_releases_ledger_opens_keyed_by_job_and_task(tmp_path):
    """The ledger file the previous release wrote (tests/fixtures/prev_release) opens with its
    two rounds under the job's id and their TRAIN task ids, and the same spend as it read."""
    prev = REPO / "tests" / "fixtures" / "prev_release"
    facts = json.loads((prev / "facts.json").read_text())
    path = tmp_path / "ledger.db"
    shutil.copyfile(prev / "site-1" / "ledger.db", path)
    job = facts["job_id"]
    with Ledger.open(path) as led:
        entries = led.entries("breast_cancer")
        assert [(e.job_id, e.task_id, e.round) for e in entries] == [
            (job, f"{job}/{r}/1/train", r) for r in (1, 2)
        ]
        assert led.spent("breast_cancer").epsilon == pytest.approx(
            facts["spent"]["site-1"], rel=1e-9
        )


def test_a_job_id_extending_another_with_a_slash_is_another_job(ledger):
    """Job 'a' task 'b/c' and job 'a/b' task 'c' (one joined key before) are two entries,
    each counted for its own job only: an aggregator cannot make two jobs' charges collide."""
    ledger.reserve(dataset="ds", job_id="a", task_id="b/c", round=1, layer_costs=COST)
    ledger.reserve(dataset="ds", job_id="a/b", task_id="c", round=1, layer_costs=COST)
    plan = PrivacyPlan(ledger)
    one = cumulative_epsilon([COST], delta=1e-5)
    assert plan.job_epsilon(dataset="ds", job_id="a") == one
    assert plan.job_epsilon(dataset="ds", job_id="a/b") == one


def test_limits_of_another_job_are_refused(ledger):
    """Reserving under one job with another job's limits is a programming error."""
    limits = JobLimits("other", rounds=3, max_round_attempts=2, max_job_retries=5)
    with pytest.raises(ValueError):
        ledger.reserve(
            dataset="ds", job_id="j", task_id="t", round=1, layer_costs=COST, limits=limits
        )
    assert ledger.entries("ds") == []
