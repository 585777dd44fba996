"""Every command ends an error the same way: one stderr line, one exit code (confide.exits)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from confide import pki
from confide.cli.main import main as confide_main
from confide.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ConfigError,
    InternalError,
    MalformedMessage,
    PeerError,
    PolicyRefusal,
    Reason,
    exit_code,
)
from confide.exits import error_line, run_command


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("tls.cert", "file does not exist"), EXIT_CONFIG),
        (MalformedMessage("bad"), EXIT_FAILED),
        (PolicyRefusal("no"), EXIT_FAILED),
        (InternalError("busy", reason=Reason.SERVER_BUSY), EXIT_FAILED),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (RuntimeError("a bug"), EXIT_FAILED),
    ],
)
def test_exit_code_is_two_for_config_one_otherwise_and_130_for_ctrl_c(exc, code):
    """exit_code: 2 for a ConfigError, 130 for Ctrl-C, 1 for any other error."""
    assert exit_code(exc) == code


def test_the_line_names_a_config_key_or_else_the_reason():
    """A config error's line names its key; any other error's ends with its reason."""
    assert (
        error_line(ConfigError("rounds", "must be >= 1, got 0"), prog="confide")
        == "confide: config key 'rounds': must be >= 1, got 0"
    )
    assert (
        error_line(PeerError("over quota", reason=Reason.PEER_LIMIT), prog="confide-agent")
        == "confide-agent: over quota (peer_limit)"
    )


class _Refused(grpc.RpcError):
    """A failed call as the gRPC client raises it."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "unknown_job"


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (ConfigError("limits.transfers", "must be >= 1"), 2, "p: config key 'limits.transfers'"),
        (InternalError("no state", reason=Reason.UNAVAILABLE), 1, "p: no state (unavailable)"),
        (_Refused(), 1, "p: aggregator answered NOT_FOUND (unknown_job)"),
        (KeyboardInterrupt(), 130, None),
    ],
)
def test_run_command_prints_one_line_and_returns_the_code(capsys, raised, code, line):
    """run_command turns an error, a failed call or Ctrl-C into its code and at most one line."""

    def body() -> int:
        raise raised

    assert run_command("p", body) == code
    err = capsys.readouterr().err.splitlines()
    if line is None:
        assert err == []
    else:
        assert len(err) == 1 and err[0].startswith(line)


def test_run_command_returns_the_bodys_own_code(capsys):
    """A body that returns its code is left alone and prints nothing."""
    assert run_command("p", lambda: 3) == 3
    assert capsys.readouterr().err == ""


def test_confide_reports_a_peer_error_in_the_one_format(tmp_path: Path, capsys):
    """`confide pki sign` of a CSR for another role prints `confide: ... (unauthorized)`, exit 1."""
    assert confide_main(["pki", "init", "--dir", str(tmp_path / "ca"), "--federation", "f"]) == 0
    csr = pki.make_key_and_csr(tmp_path / "s", "s1", role=pki.Role.OPERATOR)
    capsys.readouterr()
    argv = ["pki", "sign", str(csr), "--role", "site", "--dir", str(tmp_path / "ca")]
    assert confide_main(argv) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("confide: ") and line.endswith(" (unauthorized)")
