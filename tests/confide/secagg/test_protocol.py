"""SecAgg+ end to end: masks cancel exactly, dropouts at every stage, aborts, server state."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import secagg as sa
from confide.errors import Reason, ReplayedMessage
from tests.confide.secagg._round import plain_sum, run_round


def test_masks_cancel_without_dropouts() -> None:
    """With every site surviving the unmasked sum equals the plaintext sum bit for bit."""
    out = run_round(n=6, d=1000)
    assert set(out.inputs) == set(out.server.keys)
    assert np.array_equal(out.result, plain_sum(out.inputs, 1000))


def test_masked_input_hides_the_input() -> None:
    """A masked input differs from its input in nearly every coordinate."""
    seen = []
    run_round(n=5, d=4096, on_add=lambda s, name, x, y: seen.append((x, y)))
    for x, y in seen:
        assert np.count_nonzero(x == y) < 10


def test_sparse_graph_round() -> None:
    """A sparse Harary graph (k < n - 1) round unmasks exactly with dropouts."""
    params = sa.choose_params(n=30, neighbours=8, threshold=6)
    out = run_round(n=30, d=300, params=params, no_input={"s03", "s17"}, no_unmask={"s05"})
    assert out.server.graph is not None and out.server.graph.degree == 8
    assert np.array_equal(out.result, plain_sum(out.inputs, 300))


@pytest.mark.parametrize("stage", ["no_advertise", "no_shares", "no_input", "no_unmask"])
def test_dropout_at_each_stage(stage: str) -> None:
    """A site lost at any one stage leaves an exact sum of the sites that sent inputs."""
    drops: dict[str, Any] = {stage: {"s02"}}
    out = run_round(n=7, d=500, **drops)
    if stage != "no_unmask":
        assert "s02" not in out.inputs
    else:
        assert "s02" in out.inputs
    assert np.array_equal(out.result, plain_sum(out.inputs, 500))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(4, 9))
def test_random_drop_patterns(data: st.DataObject, n: int) -> None:
    """Any drop pattern that leaves t sites per stage yields the exact sum; else it aborts."""
    names = [f"s{i:02d}" for i in range(n)]
    stages = ["no_advertise", "no_shares", "no_input", "no_unmask"]
    drops: dict[str, Any] = {s: set() for s in stages}
    for name in names:
        stage = data.draw(st.sampled_from([None, None, None, *stages]))
        if stage is not None:
            drops[stage].add(name)
    try:
        out = run_round(n=n, d=64, **drops)
    except sa.RoundAborted as exc:
        assert exc.reason is Reason.ROUND_ABORTED
        return
    except Exception as exc:  # a client refusal is also a safe outcome
        assert getattr(exc, "reason", None) is Reason.UNSAFE_REQUEST
        return
    assert np.array_equal(out.result, plain_sum(out.inputs, 64))


def test_too_few_inputs_aborts() -> None:
    """Fewer than t masked inputs abort the round with ROUND_ABORTED."""
    with pytest.raises(sa.RoundAborted) as exc:
        run_round(n=5, d=10, no_input={"s00", "s01", "s02"})
    assert exc.value.reason is Reason.ROUND_ABORTED


def test_too_few_unmask_replies_aborts_and_reveals_nothing() -> None:
    """Fewer than t unmask replies abort, and the stored sum stays masked."""
    params = sa.choose_params(n=5, neighbours=4, threshold=4)
    plain: dict[str, np.ndarray] = {}
    rounds: list[sa.ServerRound] = []

    def keep(server: sa.ServerRound, name: str, x: np.ndarray, y: np.ndarray) -> None:
        plain[name] = x
        rounds.append(server)

    with pytest.raises(sa.RoundAborted):
        run_round(n=5, d=50, params=params, no_unmask={"s00", "s01"}, on_add=keep)
    assert rounds[0].stage is sa.ServerStage.ABORTED
    assert not np.array_equal(rounds[0].total, plain_sum(plain, 50))


def test_too_few_advertised_aborts() -> None:
    """Fewer than t advertised sites abort at the end of stage 0."""
    with pytest.raises(sa.RoundAborted):
        run_round(n=5, d=10, no_advertise={"s00", "s01", "s02", "s03"})


def test_server_never_stores_an_individual_input() -> None:
    """After each add no field of ServerRound holds any single site's x or y."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def check(server: sa.ServerRound, name: str, x: np.ndarray, y: np.ndarray) -> None:
        seen.append((x, y))
        arrays = []
        for f in dataclasses.fields(server):
            value = getattr(server, f.name)
            if isinstance(value, np.ndarray):
                arrays.append(value)
            elif isinstance(value, dict | set | list):
                items = value.values() if isinstance(value, dict) else value
                assert not any(isinstance(v, np.ndarray) for v in items)
        assert [a is server.total for a in arrays] == [True]
        if len(seen) >= 2:  # one input summed alone is trivially itself
            for xi, yi in seen:
                assert not np.array_equal(server.total, xi)
                assert not np.array_equal(server.total, yi)

    run_round(n=6, d=256, on_add=check)
    assert len(seen) == 6


def test_server_refuses_wrong_stage_and_replays() -> None:
    """Masked inputs before stage 2, twice, or of the wrong shape are refused."""
    params = sa.choose_params(n=3, neighbours=2, threshold=2)
    server = sa.new_round(round_id="r", params=params, dim=4)
    with pytest.raises(ReplayedMessage) as exc:
        sa.add_masked_input(server, "a", np.zeros(4, np.uint32))
    assert exc.value.reason is Reason.WRONG_STAGE
    _, keys = sa.advertise(site_id="a", round_id="r")
    sa.add_advertised(server, "a", keys)
    with pytest.raises(ReplayedMessage) as exc:
        sa.add_advertised(server, "a", keys)
    assert exc.value.reason is Reason.REPLAYED
