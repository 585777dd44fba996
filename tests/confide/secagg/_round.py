"""A whole SecAgg+ round in memory, with dropouts injected at any stage, for the tests."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np

from confide import secagg as sa


@dataclass
class Outcome:
    """What a simulated round produced."""

    server: sa.ServerRound
    clients: dict[str, sa.ClientState]
    inputs: dict[str, np.ndarray]
    result: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    snapshots: list[dict[str, object]] = field(default_factory=list)


def run_round(
    *,
    n: int,
    d: int,
    params: sa.SecAggParams | None = None,
    no_advertise: Collection[str] = (),
    no_shares: Collection[str] = (),
    no_input: Collection[str] = (),
    no_unmask: Collection[str] = (),
    seed: int = 0,
    on_add: Callable[[sa.ServerRound, str, np.ndarray, np.ndarray], None] | None = None,
) -> Outcome:
    """Run one round with sites ``s00..``; sites in each set drop just before that stage."""
    params = params or sa.choose_params(n=n, neighbours=n - 1 if n < 8 else 0)
    server = sa.new_round(round_id="fed/job/1", params=params, dim=d)
    names = [f"s{i:02d}" for i in range(n)]
    rng = np.random.default_rng(seed)
    clients: dict[str, sa.ClientState] = {}
    inputs: dict[str, np.ndarray] = {}
    out = Outcome(server, clients, inputs)
    for name in names:
        clients[name], keys = sa.advertise(site_id=name, round_id="fed/job/1")
        if name not in no_advertise:
            sa.add_advertised(server, name, keys)
    sa.close_advertise(server)
    for name in sorted(server.keys):
        if name in no_shares:
            continue
        req = sa.share_keys_request(server, name)
        clients[name], shares = sa.share_keys(
            clients[name], req.neighbours, threshold=req.threshold
        )
        sa.add_shares(server, name, shares)
    sa.close_share_keys(server)
    for name in sorted(server.shared):
        if name in no_input:
            continue
        x = rng.integers(0, 1 << params.bits, d, dtype=np.uint32)
        clients[name], y = sa.masked_input(clients[name], x, sa.masked_input_request(server, name))
        sa.add_masked_input(server, name, y)
        inputs[name] = x
        if on_add is not None:
            on_add(server, name, x, y)
    sa.close_masked_input(server)
    replies = {}
    for name in sorted(server.masked):
        if name in no_unmask:
            continue
        ureq = sa.unmask_request(server, name)
        clients[name], replies[name] = sa.unmask(
            clients[name], survivors=ureq.survivors, dropped=ureq.dropped
        )
    out.result = sa.finish(server, replies)
    return out


def plain_sum(inputs: dict[str, np.ndarray], d: int) -> np.ndarray:
    """The plaintext modular sum of the survivors' inputs."""
    total = np.zeros(d, dtype=np.uint32)
    for x in inputs.values():
        total += x
    return total
