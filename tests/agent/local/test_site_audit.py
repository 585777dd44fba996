"""The site's audit trail: what each task did is chained, shown, and tampering is detected."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.local.audit import AUDIT_FILE, SiteAudit
from agent.local.audit_cli import audit_command
from agent.main import main
from agent.tasks.runner import TaskOutcome
from confide.audit_chain import AuditTampered
from tests.agent.conftest import MODEL_SHA, job_spec, signed_task
from tests.agent.fakes import FakeTransport


@pytest.fixture
def audited(runner, tmp_path):
    """The shared runner, writing its audit trail to a real file."""
    runner.audit = SiteAudit(tmp_path / AUDIT_FILE)
    return runner


def _ended(audit: SiteAudit):
    return [e for e in audit.entries() if e.event == "task_ended"]


def test_trained_task_records_decision_signer_code_model_dataset_and_times(
    pki, audited, aggregator
):
    """A TRAIN task writes task_seen then task_ended with every fact a privacy officer asks."""
    assert audited.run(signed_task(pki.alice), FakeTransport(aggregator)) is TaskOutcome.OK
    seen, end = audited.audit.entries()
    assert (seen.event, seen.job, seen.task, seen.model_hash) == (
        "task_seen",
        "job-1",
        "t1",
        MODEL_SHA,
    )
    assert end.event == "task_ended"
    assert (end.decision, end.outcome, end.reason, end.rule) == ("approved", "ok", "", "")
    assert (end.signer, end.code_sha256) == ("alice", "builtin:MODEL_KIND_LOGREG")
    assert (end.model_hash, end.dataset, end.kind) == (MODEL_SHA, "tabular", "TASK_KIND_TRAIN")
    assert end.started <= end.ended
    assert audited.audit.verify() == 2


def test_refused_signer_is_recorded_with_reason(pki, audited, aggregator):
    """A job from an untrusted signer is recorded refused with signer_untrusted."""
    audited.run(signed_task(pki.mallory), FakeTransport(aggregator))
    [end] = _ended(audited.audit)
    assert (end.decision, end.outcome, end.reason) == ("refused", "refused", "signer_untrusted")


def test_refused_dataset_names_signer_and_code(pki, audited, aggregator):
    """A verified job refused for its dataset still records who signed it and its code."""
    audited.run(signed_task(pki.alice, spec=job_spec("secret")), FakeTransport(aggregator))
    [end] = _ended(audited.audit)
    assert (end.decision, end.reason) == ("refused", "unknown_dataset")
    assert (end.signer, end.dataset, end.code_sha256) == (
        "alice",
        "secret",
        "builtin:MODEL_KIND_LOGREG",
    )


def test_code_hash_of_a_bundle_is_its_hex_sha256(pki, audited, aggregator):
    """A job naming a code bundle records the bundle's hash, not a built-in name, and its
    signer, though the site refuses it (code bundles are not supported yet)."""
    spec = job_spec()
    spec.model.code_sha256 = bytes(range(32))
    audited.run(signed_task(pki.alice, spec=spec), FakeTransport(aggregator))
    [end] = _ended(audited.audit)
    assert end.code_sha256 == bytes(range(32)).hex()
    # Bundles are not supported yet: the authentic job is identified, then refused as invalid.
    assert (end.signer, end.decision, end.reason) == ("alice", "refused", "invalid_job")


def _log_with(tmp_path: Path, n: int) -> Path:
    path = tmp_path / AUDIT_FILE
    audit = SiteAudit(path)
    for i in range(n):
        audit.append("job_approved", at=1000.0 + i, job=f"job-{i}")
    audit.close()
    return path


def _sql(path: Path, *stmts: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for s in stmts:
        conn.execute(s)
    conn.close()


def test_intact_log_verifies(tmp_path):
    """An untouched log verifies and reopening continues the same chain."""
    path = _log_with(tmp_path, 3)
    audit = SiteAudit(path)
    audit.append("job_denied", at=2000.0, job="job-x", detail="no")
    assert audit.verify() == 4


def test_edited_entry_is_detected(tmp_path):
    """Changing one stored entry's text is reported as that entry altered."""
    path = _log_with(tmp_path, 3)
    _sql(path, "UPDATE site_audit SET body = replace(body, 'job-1', 'job-9') WHERE seq = 2")
    with pytest.raises(AuditTampered, match="entry 2 was altered"):
        SiteAudit(path).verify()


def test_removed_entry_is_detected(tmp_path):
    """Deleting an entry (even the first) breaks the sequence at that point."""
    path = _log_with(tmp_path, 3)
    _sql(path, "DELETE FROM site_audit WHERE seq = 2")
    with pytest.raises(AuditTampered, match="entry 3 is out of sequence"):
        SiteAudit(path).verify()


def test_removed_and_renumbered_entry_is_detected(tmp_path):
    """Deleting an entry and renumbering the rest to hide the gap breaks the links."""
    path = _log_with(tmp_path, 3)
    _sql(
        path,
        "DELETE FROM site_audit WHERE seq = 2",
        "UPDATE site_audit SET seq = 2 WHERE seq = 3",
    )
    with pytest.raises(AuditTampered, match="entry 2"):
        SiteAudit(path).verify()


def test_reordered_entries_are_detected(tmp_path):
    """Swapping two entries' positions is detected as a broken link."""
    path = _log_with(tmp_path, 3)
    _sql(
        path,
        "UPDATE site_audit SET seq = -1 WHERE seq = 1",
        "UPDATE site_audit SET seq = 1 WHERE seq = 2",
        "UPDATE site_audit SET seq = 2 WHERE seq = -1",
    )
    with pytest.raises(AuditTampered, match="entry 1"):
        SiteAudit(path).verify()


def test_overwritten_hash_is_detected(tmp_path):
    """Overwriting an entry's stored hash is reported as that entry altered."""
    path = _log_with(tmp_path, 3)
    _sql(path, "UPDATE site_audit SET hash = x'00' WHERE seq = 1")
    with pytest.raises(AuditTampered, match="entry 1 was altered"):
        SiteAudit(path).verify()


def test_cli_verify_and_show(tmp_path, capsys):
    """audit verify exits 0 on an intact log and 1 naming the entry once it is edited."""
    path = _log_with(tmp_path, 2)
    assert audit_command(path, "show") == 0
    out = capsys.readouterr().out
    assert "job_approved job=job-0" in out and "2 entries, hash chain intact, head " in out
    _sql(path, "UPDATE site_audit SET body = replace(body, 'job-0', 'job-7') WHERE seq = 1")
    assert audit_command(path, "verify") == 1
    assert "entry 1 was altered" in capsys.readouterr().err


def test_cli_reads_the_log_from_the_configured_state_dir(tmp_path, capsys):
    """`confide-agent audit verify --config` finds <state.dir>/audit.db; none there exits 1."""
    (tmp_path / "state").mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'federation = "f"\n[tls]\nca = "c"\ncert = "c"\nkey = "k"\nsigning_key = "s"\n'
        f'[state]\ndir = "{tmp_path}/state"\n'
    )
    assert main(["audit", "verify", "--config", str(cfg)]) == 1
    assert "no audit log" in capsys.readouterr().err
    _log_with(tmp_path / "state", 1)
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
