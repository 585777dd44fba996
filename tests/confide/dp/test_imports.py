# Math notation in docstrings follows the papers.
"""Import rules: confide.dp never imports torch or opacus, and exports exactly its API."""

from __future__ import annotations

import subprocess
import sys


def test_dp_does_not_import_torch():
    """Importing every confide.dp module and the ledger in a fresh process loads no torch."""
    code = (
        "import sys; import confide.dp.accountant, confide.dp.budget, confide.dp.prv, "
        "confide.dp.rdp, confide.dp.update, confide.dp.ddg, confide.dp.discrete, "
        "agent.privacy.ledger, "
        "confide.cli.privacy; "
        "bad = [m for m in ('torch', 'opacus') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_exported_members_are_exact():
    """Each confide.dp module's __all__ lists exactly its public API."""
    import confide.dp.accountant as acc
    import confide.dp.budget as bud
    import confide.dp.ddg as ddg
    import confide.dp.discrete as dis
    import confide.dp.prv as prv
    import confide.dp.rdp as rdp
    import confide.dp.update as upd

    expected = {
        rdp: {"DEFAULT_ORDERS", "epsilon_from_rdp", "rdp"},
        prv: {"EpsilonBounds", "prv_epsilon", "prv_epsilon_bounds"},
        acc: {
            "AccountantKind",
            "SampledGaussian",
            "compose_rdp",
            "epsilon",
            "noise_multiplier_for",
            "rdp_curve",
        },
        bud: {
            "RecordCost",
            "RoundCost",
            "UpdateCost",
            "cumulative_epsilon",
            "discrete_update_cost",
            "record_curve",
            "round_cost",
            "site_curve",
            "update_cost",
        },
        dis: {"MAX_SIGMA", "discrete_gaussian"},
        ddg: {
            "DEFAULT_BETA",
            "DEFAULT_WRAP_PROBABILITY",
            "MIN_LEVELS",
            "DdgParams",
            "ddg_params",
            "ddg_rdp",
            "rounded_norm_bound_sq",
            "scaled_rdp",
            "sum_tau",
            "wrap_probability",
        },
        upd: {"add_noise", "clip", "noise_std", "system_rng"},
    }
    for module, names in expected.items():
        assert set(module.__all__) == names, module.__name__
        assert all(hasattr(module, n) for n in names)
