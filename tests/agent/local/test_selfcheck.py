"""The site's self-check: datasets, identity and runtime are checked before any job arrives."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.local.selfcheck import DatasetBook, check_dataset, check_identity, runtime_problem
from agent.tasks.runner import TaskOutcome, TaskRunner
from confide.data.datasets import DataFormat, DatasetDescription
from confide.errors import ConfigError
from tests.agent.conftest import report_of, signed_task
from tests.agent.fakes import FakeTransport

ROOT = Path(__file__).resolve().parents[3]


def _csv(tmp_path: Path, text: str, name: str = "tabular") -> DatasetDescription:
    path = tmp_path / f"{name}.csv"
    path.write_text(text)
    return DatasetDescription(name, path, DataFormat.CSV, ("a", "b"), "y", holdout_fraction=0.25)


GOOD = "a,b,y\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(8))


@pytest.mark.parametrize(
    ("text", "reason", "detail"),
    [
        (None, "unavailable", "dataset 'tabular': its file does not exist"),
        ("a,y\n1,0\n", "schema_mismatch", "dataset 'tabular': column 'b' is missing from the file"),
        (
            "a,b,y\n1,2,SECRET\n",
            "schema_mismatch",
            "dataset 'tabular': row 2 column 'y' is not a number",
        ),
        (
            "a,b,y\n1,x9,0\n",
            "schema_mismatch",
            "dataset 'tabular': row 2 column 'b' is not a number",
        ),
        (
            "a,b,y\n1,2,0.5\n",
            "schema_mismatch",
            "dataset 'tabular': record 1: the label is not a class index 0, 1, ...",
        ),
    ],
)
def test_a_broken_dataset_is_found_with_a_detail_that_quotes_no_value(
    tmp_path, text, reason, detail
):
    """Missing file, missing column, text label or feature, fractional label: each is named."""
    cfg = _csv(tmp_path, text or "")
    if text is None:
        cfg.path.unlink()
    health = check_dataset(cfg)
    assert not health.usable and (health.reason, health.detail) == (reason, detail)
    assert "SECRET" not in health.detail and "x9" not in health.detail
    # Nor does the full message the daemon logs (dataset_unusable): logs quote no data.
    assert health.error is not None
    assert not {"SECRET", "x9", "0.5"} & set(re.findall(r"[\w.]+", health.error.message))


def test_a_good_dataset_is_usable_with_its_record_count(tmp_path):
    """A dataset that loads is usable and counts its records (training and hold-out)."""
    health = check_dataset(_csv(tmp_path, GOOD))
    assert health.usable and health.records == 8 and health.detail == ""


def test_the_book_rechecks_a_dataset_whose_file_changed(tmp_path):
    """A dataset fixed after start becomes usable, and one broken after start is refused."""
    cfg = _csv(tmp_path, "a,y\n1,0\n")
    book = DatasetBook.check({"tabular": cfg})
    assert book.usable() == []
    cfg.path.write_text(GOOD)
    book.require(cfg)
    assert book.usable() == ["tabular"]
    cfg.path.write_text("a,b,y\n1,2,zz\n" + GOOD[6:])
    with pytest.raises(Exception) as err:
        book.require(cfg)
    assert err.value.reason.value == "schema_mismatch"


def test_a_task_on_a_dataset_broken_since_start_is_refused_with_its_public_reason(
    pki, runner, aggregator, dataset, workers
):
    """The daemon refuses at admission, before any worker, with the detail the check found."""
    book = DatasetBook.check({"tabular": dataset})
    site = dataclasses.replace(runner.site, check_dataset=book.require)
    guarded = TaskRunner(site, start_worker=workers)
    dataset.path.write_text("a,y\n1,0\n")
    assert guarded.run(signed_task(pki.alice), FakeTransport(aggregator)) is TaskOutcome.REFUSED
    rep = report_of(pki, aggregator.reports[0])
    assert (rep.reason, rep.message) == (
        "schema_mismatch",
        "dataset 'tabular': column 'b' is missing from the file",
    )


def test_identity_must_be_a_site_of_this_federation_and_name(pki):
    """An operator's certificate, another federation or another site's name: one line each."""
    info = pki.site.info
    check_identity(info, federation=info.federation, site=info.name)
    with pytest.raises(ConfigError) as err:
        check_identity(pki.alice.info, federation=info.federation, site=None)
    assert err.value.key == "tls.cert" and "role 'operator'" in err.value.problem
    with pytest.raises(ConfigError) as err:
        check_identity(info, federation="elsewhere", site=None)
    assert err.value.key == "federation"
    with pytest.raises(ConfigError) as err:
        check_identity(info, federation=info.federation, site="hospital-b")
    assert err.value.key == "site" and f"names site {info.name!r}" in err.value.problem


def test_a_missing_runtime_is_named_with_how_to_install_it(monkeypatch):
    """Without torch the check names the module and the install command."""
    monkeypatch.setitem(sys.modules, "torch", None)
    problem = runtime_problem()
    assert problem is not None and "no module torch" in problem and "confide[agent]" in problem


def _agent_config(tmp_path: Path, pki_dir: Path, datasets: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
federation = "testfed"
[aggregator]
address = "127.0.0.1:9"
[tls]
ca = "{pki_dir}/ca.crt"
cert = "{pki_dir}/site-1.crt"
key = "{pki_dir}/site-1.key"
signing_key = "{pki_dir}/site-1.sign.key"
[state]
dir = "{tmp_path}/state"
{datasets}
""")
    return cfg


def _agent(*args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{pre}import sys; from agent.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_daemon_refuses_to_start_when_no_dataset_is_usable(tmp_path, pki):
    """Only broken datasets: the daemon prints what is wrong with each and exits 2."""
    cfg = _agent_config(
        tmp_path,
        pki.dir,
        f'[datasets.tabular]\npath = "{tmp_path}/nope.csv"\nfeatures = ["a"]\nlabel = "y"\n',
    )
    out = _agent("--config", str(cfg))
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("confide-agent:")]
    assert lines[0].startswith("confide-agent: datasets.tabular: dataset 'tabular': file ")
    assert lines[-1].startswith("confide-agent: no exposed dataset is usable")


def test_the_daemon_refuses_to_start_without_the_training_runtime(tmp_path, pki):
    """No torch: the daemon says so in one line, with the install command, and exits 2."""
    (tmp_path / "d.csv").write_text(GOOD)
    cfg = _agent_config(
        tmp_path,
        pki.dir,
        f'[datasets.t]\npath = "{tmp_path}/d.csv"\nfeatures = ["a", "b"]\nlabel = "y"\n',
    )
    out = _agent("--config", str(cfg), pre="sys = __import__('sys'); sys.modules['torch'] = None; ")
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "training runtime is not installed (no module torch)" in line


def test_check_command_reports_each_finding_and_exits_1_on_a_problem(tmp_path, pki):
    """`confide-agent check` prints identity, each dataset and the runtime; a broken one fails."""
    (tmp_path / "good.csv").write_text(GOOD)
    cfg = _agent_config(
        tmp_path,
        pki.dir,
        f'[datasets.good]\npath = "{tmp_path}/good.csv"\nfeatures = ["a", "b"]\nlabel = "y"\n'
        f'[datasets.bad]\npath = "{tmp_path}/good.csv"\nfeatures = ["a", "c"]\nlabel = "y"\n',
    )
    out = _agent("check", "--config", str(cfg))
    assert out.returncode == 1, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("identity:  ok: site 'site-1' of federation 'testfed'")
    assert "dataset:   ok: good, 8 records" in lines
    assert (
        "dataset:   PROBLEM: bad (schema_mismatch): dataset 'bad': column 'c' is missing "
        "from the file" in lines
    )
    assert lines[-1].startswith("runtime:   ok: torch ")


def test_the_daemon_refuses_a_certificate_naming_another_site(tmp_path, pki):
    """`site` in agent.toml that differs from the certificate's name: one line, exit 2."""
    (tmp_path / "d.csv").write_text(GOOD)
    cfg = _agent_config(
        tmp_path,
        pki.dir,
        f'[datasets.t]\npath = "{tmp_path}/d.csv"\nfeatures = ["a", "b"]\nlabel = "y"\n',
    )
    cfg.write_text(
        cfg.read_text().replace(
            'federation = "testfed"', 'federation = "testfed"\nsite = "hospital-b"'
        )
    )
    out = _agent("--config", str(cfg))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "confide-agent: config key 'site': is 'hospital-b' but tls.cert names site 'site-1': "
        "is it another site's certificate?"
    ]
