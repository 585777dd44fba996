"""SecAgg+ benchmark: N sites and the server in one process, real client and server code.

Run: ``python -m bench.secagg --sites 100 --params 1000000 --dropout 0.1 [--json]
[--cipher aes|chacha20]``. All sites advertise, share keys and check their shares; a
fraction P drops before sending its masked input; each survivor's masked input is added to
the server's running sum as soon as it is made (no N vectors are held at once); the
survivors sign the view and reveal their shares (signatures are not timed: the shell checks
them); the server unmasks and the result is checked bit for bit against the plaintext
modular sum. The degree and threshold are the job defaults' ``RoundRules.params(n)`` (the
complete graph up to 100 sites).

Figures: client_seconds (median per-site masked-input stage, one thread), server_seconds
(``finish``: reconstruction and unmasking), add_seconds (running-sum adds on arrival),
plain_seconds (plaintext modular sum of the survivors' inputs), prg_bound_seconds (expanding
the same number of PRG streams, one thread, plus plain_seconds), bytes_per_site (what a site
that completes every stage sends), peak_rss_mb.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import statistics
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from confide import secagg as sa
from confide.secagg.prg import PrgCipher

_CIPHERS = {"aes": PrgCipher.AES256_CTR, "chacha20": PrgCipher.CHACHA20}


def _expand_only(count: int, d: int, cipher: PrgCipher) -> float:
    """Time expanding ``count`` fresh seeds into d words each, streamed, one thread."""
    chunk = 1 << 16
    zeros = memoryview(bytes(4 * chunk))
    buf = bytearray(4 * chunk + 64)
    seeds = [random.randbytes(32) for _ in range(count)]
    start = time.perf_counter()
    for seed in seeds:
        if cipher is PrgCipher.AES256_CTR:
            ctx = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        else:
            ctx = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
        for pos in range(0, d, chunk):
            m = min(chunk, d - pos)
            ctx.update_into(zeros[: 4 * m], buf)
    return time.perf_counter() - start


def run(
    *, sites: int, dim: int, dropout: float, cipher: PrgCipher, seed: int = 0
) -> dict[str, object]:
    """Run one round and return the figures."""
    rnd = random.Random(seed)
    random.seed(seed)
    rules = sa.RoundRules(min_sites=sites, dropout_rate=dropout, cipher=cipher)
    server = sa.new_round(round_id="bench/job/1", rules=rules, dim=dim)
    names = [f"site-{i:05d}" for i in range(sites)]
    clients = {}
    sent = dict.fromkeys(names, 0)
    for name in names:
        clients[name], keys = sa.advertise(site_id=name, round_id="bench/job/1")
        digest = hashlib.sha256(name.encode() + keys.cipher_public_key).digest()
        sa.add_advertised(server, name, keys, digest=digest)
        sent[name] += len(keys.cipher_public_key) + len(keys.mask_public_key)
    sa.close_advertise(server)
    params = server.params
    assert params is not None
    roster = [
        sa.NeighbourKeys(s, k.cipher_public_key, k.mask_public_key, server.digests[s])
        for s, k in sorted(server.keys.items())
    ]
    for name in names:
        clients[name], shares = sa.share_keys(clients[name], roster, params=params)
        sa.add_shares(server, name, shares)
        sent[name] += sum(len(to) + len(ct) for to, ct in shares.items())
    sa.close_share_keys(server)
    for name in names:
        got = sa.check_shares_request(server, name)
        clients[name], bad = sa.check_shares(clients[name], got, shared=server.shared)
        sa.add_share_check(server, name, bad)
    sa.close_check_shares(server)
    dropped = set(rnd.sample(names, round(dropout * sites)))
    rng = np.random.default_rng(seed)
    plain = np.zeros(dim, dtype=np.uint32)
    client_times, add_time, plain_time = [], 0.0, 0.0
    for name in names:
        if name in dropped:
            continue
        x = rng.integers(0, 1 << params.bits, dim, dtype=np.uint32)
        t0 = time.perf_counter()
        clients[name], y = sa.masked_input(
            clients[name], x, excluded=server.excluded, cipher=cipher
        )
        t1 = time.perf_counter()
        sa.add_masked_input(server, name, y)
        t2 = time.perf_counter()
        np.add(plain, x, out=plain)
        t3 = time.perf_counter()
        client_times.append(t1 - t0)
        add_time += t2 - t1
        plain_time += t3 - t2
        sent[name] += y.nbytes
        del x, y
    sa.close_masked_input(server)
    attest = []
    for name in sorted(server.survivors):
        clients[name], view = sa.consistency(clients[name], survivors=server.survivors)
        sa.add_consistency(server, name, session=clients[name].session, view=view)
        attest.append(sa.Attestation(name, clients[name].session, view))
    sa.close_consistency(server)
    replies = {}
    for name in sorted(server.signers):
        clients[name], replies[name] = sa.unmask(clients[name], attestations=attest)
        reply = replies[name]
        sent[name] += sum(
            len(s) + len(b) for m in (reply.seed_shares, reply.key_shares) for s, b in m.items()
        )
    pairs = sum(len(sa.partners(server, u) & server.survivors) for u in dropped)
    t0 = time.perf_counter()
    total = sa.finish(server, replies)
    server_seconds = time.perf_counter() - t0
    exact = bool(np.array_equal(total, plain))
    prg_bound = _expand_only(len(server.survivors) + pairs, dim, cipher) + plain_time
    survivors = [n for n in names if n not in dropped]
    return {
        "exact": exact,
        "cipher": cipher.value,
        "sites": sites,
        "params": dim,
        "dropout": dropout,
        "neighbours": params.neighbours,
        "threshold": params.threshold,
        "client_seconds": statistics.median(client_times),
        "server_seconds": server_seconds,
        "add_seconds": add_time,
        "plain_seconds": plain_time,
        "prg_bound_seconds": prg_bound,
        "server_over_bound": server_seconds / prg_bound,
        "prg_streams": len(server.survivors) + pairs,
        "bytes_per_site": statistics.mean(sent[n] for n in survivors),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    """Parse the command line, run, print the figures (last line JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--params", type=lambda s: int(float(s)), default=1_000_000)  # 1e6 works
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--cipher", choices=sorted(_CIPHERS), default="aes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    figures = run(
        sites=args.sites,
        dim=args.params,
        dropout=args.dropout,
        cipher=_CIPHERS[args.cipher],
        seed=args.seed,
    )
    for key, value in figures.items():
        print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
