"""Config reading: every error names its dotted key."""

from __future__ import annotations

import pytest

from confide.config import load_toml, parse_toml
from confide.errors import ConfigError, Reason


def test_missing_key_is_named():
    """A missing required key is reported by its full dotted name."""
    with pytest.raises(ConfigError) as ei:
        parse_toml("[tls]\n").section("tls").str("cert")
    assert ei.value.key == "tls.cert" and ei.value.reason is Reason.MISSING_KEY


@pytest.mark.parametrize(
    "text, call",
    [
        ("x = 'a'", lambda s: s.int("x")),
        ("x = true", lambda s: s.int("x")),
        ("x = 1", lambda s: s.str("x")),
        ("x = 5", lambda s: s.int("x", min=6)),
        ("x = 0.0", lambda s: s.float("x", min=0.0, min_exclusive=True)),
        ("x = nan", lambda s: s.float("x")),
        ("x = 'maybe'", lambda s: s.bool("x")),
    ],
)
def test_bad_values_name_the_key(text, call):
    """Wrong types and out-of-range values raise ConfigError for key 'x'."""
    with pytest.raises(ConfigError) as ei:
        call(parse_toml(text))
    assert ei.value.key == "x"


def test_unknown_key_is_refused():
    """A key no accessor read (a typo) is refused by done()."""
    s = parse_toml("listen = 'a'\nlistne = 'b'\n")
    s.str("listen")
    with pytest.raises(ConfigError) as ei:
        s.done()
    assert ei.value.key == "listne" and ei.value.reason is Reason.UNKNOWN_KEY


def test_invalid_toml_and_missing_file(tmp_path):
    """Unparseable TOML and a missing file are ConfigErrors naming the file."""
    p = tmp_path / "a.toml"
    p.write_text("x = = 1")
    with pytest.raises(ConfigError) as ei:
        load_toml(p)
    assert ei.value.key == str(p)
    with pytest.raises(ConfigError):
        load_toml(tmp_path / "missing.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    """A relative path in a config file is relative to that file's folder."""
    p = tmp_path / "c.toml"
    p.write_text("[tls]\ncert = 'x.crt'\n")
    assert load_toml(p).section("tls").path("cert") == tmp_path / "x.crt"


def test_relative_paths_resolve_to_absolute_ones_beside_the_config_file(tmp_path, monkeypatch):
    """A config named by a relative path gives absolute paths: a worker elsewhere finds them."""
    from confide.config import load_toml

    (tmp_path / "agent.toml").write_text('path = "heart.csv"\n')
    monkeypatch.chdir(tmp_path)
    assert load_toml("agent.toml").path("path") == tmp_path / "heart.csv"
