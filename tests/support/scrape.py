"""Scrape a daemon's metrics endpoint as Prometheus does: a real HTTP GET, the text parsed."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from confide.metrics import ADDRESS_FILE


@dataclass(frozen=True)
class Samples:
    """One scrape's samples, by name and labels."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float]
    text: str

    def get(self, name: str, **labels: str) -> float | None:
        """The sample ``name{labels}`` (exactly those labels), or None when absent."""
        return self.values.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every sample whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.values.items() if n == name and want <= ls)


def scrape(address: str, *, timeout: float = 10.0) -> Samples:
    """GET ``http://address/metrics`` and parse the exposition text."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            values[(s.name, frozenset(s.labels.items()))] = s.value
    return Samples(values, text)


def metrics_address(state_dir: Path) -> str:
    """The bound ``host:port`` a daemon wrote to its state folder."""
    return (state_dir / ADDRESS_FILE).read_text().strip()
