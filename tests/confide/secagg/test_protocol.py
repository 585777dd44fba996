"""SecAgg+ end to end: masks cancel exactly, dropouts at every stage, aborts, server state."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from confide import secagg as sa
from confide.errors import MalformedMessage, Reason, ReplayedMessage
from tests.confide.secagg._adversary import exposed, minimal_sums
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
    rules = sa.RoundRules(min_sites=30, neighbours=8, threshold=6, dropout_rate=0.05)
    out = run_round(n=30, d=300, rules=rules, no_input={"s03", "s17"}, no_unmask={"s05"})
    assert out.server.graph is not None and out.server.graph.degree == 8
    assert np.array_equal(out.result, plain_sum(out.inputs, 300))


@pytest.mark.parametrize(
    "stage", ["no_advertise", "no_shares", "no_check", "no_input", "no_sign", "no_unmask"]
)
def test_dropout_at_each_stage(stage: str) -> None:
    """A site lost at any one stage leaves an exact sum of the sites that sent inputs."""
    drops: dict[str, Any] = {stage: {"s02"}}
    out = run_round(n=7, d=500, **drops)
    if stage not in ("no_sign", "no_unmask"):
        assert "s02" not in out.inputs
    else:
        assert "s02" in out.inputs
    assert np.array_equal(out.result, plain_sum(out.inputs, 500))


@settings(max_examples=25, deadline=None)
@given(data=st.data(), n=st.integers(4, 9))
def test_random_drop_patterns(data: st.DataObject, n: int) -> None:
    """Any drop pattern that leaves t sites per stage yields the exact sum; else it aborts."""
    names = [f"s{i:02d}" for i in range(n)]
    stages = ["no_advertise", "no_shares", "no_check", "no_input", "no_sign", "no_unmask"]
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
    rules = sa.RoundRules(min_sites=5, neighbours=4, threshold=4, dropout_rate=0.0)
    plain: dict[str, np.ndarray] = {}
    rounds: list[sa.ServerRound] = []

    def keep(server: sa.ServerRound, name: str, x: np.ndarray, y: np.ndarray) -> None:
        plain[name] = x
        rounds.append(server)

    with pytest.raises(sa.RoundAborted):
        run_round(n=5, d=50, rules=rules, no_unmask={"s00", "s01"}, on_add=keep)
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
    """Masked inputs before their stage, a second advertisement, or a reused key are refused."""
    server = sa.new_round(round_id="r", rules=sa.RoundRules(min_sites=3), dim=4)
    with pytest.raises(ReplayedMessage) as exc:
        sa.add_masked_input(server, "a", np.zeros(4, np.uint32))
    assert exc.value.reason is Reason.WRONG_STAGE
    _, keys = sa.advertise(site_id="a", round_id="r")
    sa.add_advertised(server, "a", keys, digest=b"d")
    with pytest.raises(ReplayedMessage) as exc:
        sa.add_advertised(server, "a", keys, digest=b"d")
    assert exc.value.reason is Reason.REPLAYED
    with pytest.raises(MalformedMessage):
        sa.add_advertised(server, "b", keys, digest=b"e")


def test_junk_shares_drop_their_sender_only_for_each_receiver() -> None:
    """A site whose shares are junk is dropped by its receivers; the round completes exactly."""
    out = run_round(n=7, d=200, junk_from={"s03"})
    assert all(set(bad) == {"s03"} for name, bad in out.rejected.items() if name != "s03")
    assert all(sa.pair("s03", v) in out.server.excluded for v in out.server.shared - {"s03"})
    assert "s03" not in out.server.masking and "s03" not in out.inputs
    assert len(out.inputs) == 6
    assert np.array_equal(out.result, plain_sum(out.inputs, 200))


def test_junk_shares_to_some_keep_the_sender_if_it_keeps_enough_partners() -> None:
    """A sender rejected by one receiver still masks with the others; the sum stays exact."""
    out = run_round(n=7, d=100, junk_pairs={("s03", "s05")}, no_input={"s01"})
    assert out.rejected["s05"] == {"s03": Reason.BAD_SIGNATURE}
    assert out.server.excluded == {("s03", "s05")}
    assert {"s03", "s05"} <= set(out.inputs)
    assert "s05" not in out.clients["s03"].partners and "s03" not in out.clients["s05"].partners
    assert np.array_equal(out.result, plain_sum(out.inputs, 100))


def test_server_round_keeps_the_graph_it_can_prove() -> None:
    """The server's graph is the Harary graph seeded by the session id every site derives."""
    out = run_round(n=12, d=8, rules=sa.RoundRules(min_sites=12, neighbours=6))
    s = out.server
    assert s.graph is not None and s.params is not None
    assert s.session == sa.session_id("fed/job/1", s.digests)
    assert s.graph == sa.harary_graph(sorted(s.keys), degree=6, seed=s.session)
    for name, c in out.clients.items():
        assert c.session == s.session and set(c.neighbours) == s.graph.neighbours[name]


@pytest.mark.parametrize("n", [*range(3, 11), 15, 20, 30])
def test_real_rounds_with_dropouts_leak_no_sum_below_t(n: int) -> None:
    """Real rounds with random dropouts at every stage: everything the server saw lets it
    compute only sums of at least t inputs, and the sum it returns is exact (the model test
    in test_params_graph covers every n and every survivor set)."""
    rng = np.random.default_rng(n)
    stages = ["no_advertise", "no_shares", "no_check", "no_input", "no_sign", "no_unmask"]
    drops: dict[str, Any] = {s: set() for s in stages}
    for i in range(n):
        if rng.random() < 0.15:
            drops[stages[int(rng.integers(0, len(stages)))]].add(f"s{i:02d}")
    try:
        out = run_round(n=n, d=8, seed=n, **drops)
    except sa.RoundAborted:
        return
    t = out.server.params.threshold if out.server.params else 0
    b, s = exposed(out.replies.values(), {c: t for c in out.clients})
    sums = minimal_sums(out.clients, out.inputs, b, s)
    assert sums == [set(out.inputs)] and len(out.inputs) >= t
    assert np.array_equal(out.result, plain_sum(out.inputs, 8))


def test_a_site_that_skips_the_check_is_excluded_and_its_key_never_needed() -> None:
    """A site lost at the share check masks with nobody and nobody masks with it, so no
    share of its mask key is revealed; the others' sum is exact."""
    out = run_round(n=7, d=50, no_check={"s02"})
    assert "s02" not in out.server.masking
    assert all(sa.pair("s02", v) in out.server.excluded for v in out.server.shared - {"s02"})
    assert not any("s02" in r.key_shares or "s02" in r.seed_shares for r in out.replies.values())
    assert np.array_equal(out.result, plain_sum(out.inputs, 50))
