"""The daemons' log shape: JSON lines off a terminal, colour only on one (journald reads JSON)."""

from __future__ import annotations

import io
import json
import sys

import structlog

from confide.logs import configure_kwargs


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _render(kwargs: dict, **event: object) -> str:
    """Run one event through the processor chain ``configure_kwargs`` gives, as structlog would."""
    out: object = dict(event)
    for proc in kwargs["processors"]:
        out = proc(None, "info", out)
    assert isinstance(out, str)
    return out


def test_json_is_the_default_off_a_terminal(monkeypatch):
    """With stderr a file or pipe (systemd's journal) and no choice made, each event is one
    JSON object on one line, without colour codes."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    kwargs = configure_kwargs()
    assert isinstance(kwargs["processors"][-1], structlog.processors.JSONRenderer)
    line = _render(kwargs, event="round_started", job="j", note="two\nlines")
    assert "\n" not in line and "\x1b[" not in line
    body = json.loads(line)
    assert body["event"] == "round_started" and body["level"] == "info" and "timestamp" in body


def test_a_terminal_gets_the_readable_console_with_colour(monkeypatch):
    """On a terminal the default is the console renderer, coloured."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    kwargs = configure_kwargs()
    assert isinstance(kwargs["processors"][-1], structlog.dev.ConsoleRenderer)
    assert "\x1b[" in _render(kwargs, event="agent_started")


def test_the_console_off_a_terminal_has_no_colour_codes(monkeypatch):
    """Asking for the console format ([log] json = false) off a terminal gives plain text."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    line = _render(configure_kwargs(json=False), event="agent_started", site="site-1")
    assert "agent_started" in line and "site-1" in line and "\x1b[" not in line


def test_json_can_be_forced_on_a_terminal(monkeypatch):
    """[log] json = true (or --log-json) gives JSON even on a terminal."""
    monkeypatch.setattr(sys, "stderr", _Terminal())
    line = _render(configure_kwargs(json=True), event="agent_started")
    assert json.loads(line)["event"] == "agent_started" and "\x1b[" not in line
