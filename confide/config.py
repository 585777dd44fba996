"""Typed reading of TOML configuration, where every error names its dotted key.

A ``Section`` wraps one TOML table. Each accessor either returns a value of the asked type
or raises ``ConfigError`` naming the full dotted key, so ``confide-agent`` can print one line
and exit 2. ``Section.done()`` refuses keys nobody read, which catches typos such as
``sever_address``, in the table and in every table read through it: calling ``done()`` on the
root checks the whole file, so a nested table whose reader forgot its own ``done()`` (or read
it only when present) cannot let a typo such as ``noise_multipler`` through as "no noise".
"""

from __future__ import annotations

import builtins
import enum
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from confide.errors import ConfigError, Reason

__all__ = ["Section", "load_toml", "parse_toml"]

E = TypeVar("E", bound=enum.Enum)
_MISSING: Any = object()


def load_toml(path: str | Path) -> Section:
    """Read a TOML file into a root ``Section``.

    Raises:
        ConfigError: the file is missing, unreadable or not valid TOML (key ``<file>``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read config file: {exc.strerror}") from exc
    return parse_toml(text, source=str(p))


def parse_toml(text: str, *, source: str = "<config>") -> Section:
    """Parse TOML text into a root ``Section``; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from exc
    # Absolute, so a path stays right for a process started elsewhere (the agent's worker
    # runs in a sandbox with another working directory): `--config agent.toml` with
    # `path = "heart.csv"` means the file beside agent.toml, wherever it is read from.
    base_dir = Path(source).absolute().parent if source != "<config>" else None
    return Section(data, base_dir=base_dir)


class Section:
    """One TOML table with typed, key-naming accessors."""

    def __init__(
        self, data: Mapping[str, Any], prefix: builtins.str = "", *, base_dir: Path | None = None
    ) -> None:
        self._data = data
        self._prefix = prefix
        self._read: set[str] = set()
        self._children: list[Section] = []
        self.base_dir = base_dir

    def key(self, name: builtins.str) -> builtins.str:
        """The full dotted key for ``name`` in this section."""
        return f"{self._prefix}{name}"

    def has(self, name: builtins.str) -> builtins.bool:
        """Whether ``name`` is present (marks it as read)."""
        self._read.add(name)
        return name in self._data

    def _get(self, name: builtins.str, default: Any) -> Any:
        self._read.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            raise ConfigError(self.key(name), "is required but missing", reason=Reason.MISSING_KEY)
        return default

    def value(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """The raw value of ``name`` (for keys that accept more than one type)."""
        return self._get(name, default)

    def str(
        self, name: builtins.str, default: Any = _MISSING, *, nonempty: builtins.bool = True
    ) -> Any:
        """A string value."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str):
            raise ConfigError(self.key(name), f"must be a string, got {type(v).__name__}")
        if nonempty and not v.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return v

    def int(
        self,
        name: builtins.str,
        default: Any = _MISSING,
        *,
        min: builtins.int | None = None,
        max: builtins.int | None = None,
    ) -> Any:
        """An integer value within ``[min, max]``."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.key(name), f"must be an integer, got {v!r}")
        _check_range(self.key(name), v, min, max)
        return v

    def float(
        self,
        name: builtins.str,
        default: Any = _MISSING,
        *,
        min: builtins.float | None = None,
        max: builtins.float | None = None,
        min_exclusive: builtins.bool = False,
        max_exclusive: builtins.bool = False,
    ) -> Any:
        """A finite number within the given bounds (integers are accepted)."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(self.key(name), f"must be a number, got {v!r}")
        fv = float(v)
        if not math.isfinite(fv):
            raise ConfigError(self.key(name), "must be finite")
        key = self.key(name)
        if min is not None and (fv <= min if min_exclusive else fv < min):
            raise ConfigError(key, f"must be {'>' if min_exclusive else '>='} {min}, got {fv}")
        if max is not None and (fv >= max if max_exclusive else fv > max):
            raise ConfigError(key, f"must be {'<' if max_exclusive else '<='} {max}, got {fv}")
        return fv

    def bool(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A boolean value."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {v!r}")
        return v

    def path(
        self, name: builtins.str, default: Any = _MISSING, *, must_exist: builtins.bool = False
    ) -> Any:
        """A filesystem path; relative paths resolve against the config file's folder."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, str) or not v:
            raise ConfigError(self.key(name), f"must be a path string, got {v!r}")
        p = Path(v).expanduser()
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        if must_exist and not p.exists():
            raise ConfigError(self.key(name), f"file does not exist: {p}")
        return p

    def choice(self, name: builtins.str, enum_type: type[E], default: Any = _MISSING) -> Any:
        """A value of ``enum_type`` given by its string value."""
        v = self._get(name, default)
        if isinstance(v, enum_type):
            return v
        try:
            return enum_type(v)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in enum_type)
            raise ConfigError(self.key(name), f"must be one of {allowed}; got {v!r}") from None

    def str_list(self, name: builtins.str, default: Any = _MISSING) -> Any:
        """A list of strings."""
        v = self._get(name, default)
        if v is default and default is not _MISSING:
            return v
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(self.key(name), "must be a list of strings")
        return list(v)

    def section(self, name: builtins.str, *, required: builtins.bool = False) -> Section:
        """A nested table; an empty one when absent and not required."""
        v = self._get(name, _MISSING if required else {})
        if not isinstance(v, Mapping):
            raise ConfigError(self.key(name), "must be a table")
        return self._child(v, f"{self.key(name)}.")

    def sections(self, name: builtins.str) -> list[Section]:
        """An array of tables (``[[name]]``), possibly empty."""
        v = self._get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, Mapping) for x in v):
            raise ConfigError(self.key(name), "must be an array of tables")
        return [self._child(x, f"{self.key(name)}[{i}].") for i, x in enumerate(v)]

    def tables(self) -> dict[builtins.str, Section]:
        """Every sub-table of this section by name (e.g. ``[datasets.NAME]``)."""
        out: dict[builtins.str, Section] = {}
        for k, v in self._data.items():
            self._read.add(k)
            if not isinstance(v, Mapping):
                raise ConfigError(self.key(k), "must be a table")
            out[k] = self._child(v, f"{self.key(k)}.")
        return out

    def is_empty(self) -> builtins.bool:
        """Whether this table holds no key at all (marks nothing as read)."""
        return not self._data

    def done(self) -> None:
        """Refuse any key no accessor read (a likely typo), here and in every nested table
        read through this one.

        Raises:
            ConfigError: UNKNOWN_KEY naming the first such key.
        """
        for k in self._data:
            if k not in self._read:
                raise ConfigError(self.key(k), "unknown key", reason=Reason.UNKNOWN_KEY)
        for child in self._children:
            child.done()

    def _child(self, data: Mapping[builtins.str, Any], prefix: builtins.str) -> Section:
        child = Section(data, prefix, base_dir=self.base_dir)
        self._children.append(child)
        return child


def _check_range(key: str, v: int, lo: int | None, hi: int | None) -> None:
    if lo is not None and v < lo:
        raise ConfigError(key, f"must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(key, f"must be <= {hi}, got {v}")
