"""Shared fixtures for the DP tests: the Opacus reference, imported only here."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dp_reference.json"

STANDARD = [
    pytest.param(256 / 60000, 1.1, 14062, 1e-5, id="mnist-60-epochs"),
    pytest.param(0.01, 1.0, 1000, 1e-5, id="q0.01-z1-T1000"),
    pytest.param(1.0, 5.0, 10, 1e-5, id="full-batch-rounds"),
    pytest.param(0.1, 2.0, 100, 1e-6, id="q0.1-z2-T100"),
]


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The pinned Opacus reference values."""
    data: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def opacus_accountants() -> Any:
    """Opacus's accountants module (imports torch; the test reference only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import opacus.accountants as acc
        import opacus.accountants.utils as utils
    return acc, utils
