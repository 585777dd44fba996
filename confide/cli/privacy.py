"""``confide privacy``: plan DP-SGD budgets offline (ε for a noise level, noise for an ε).

    confide privacy epsilon --sample-rate Q --noise-multiplier Z --steps T --delta D
    confide privacy noise --target-epsilon E --sample-rate Q --epochs N --delta D --accountant prv

``--epochs N`` stands for ``--steps ceil(N / Q)`` (Poisson sampling: one epoch is 1/Q steps in
expectation; rounding up never understates ε). Each command prints one number on stdout.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from confide.dp.accountant import AccountantKind, epsilon, noise_multiplier_for
from confide.errors import ConfigError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``privacy epsilon`` and ``privacy noise`` to the ``confide`` parser's subparsers."""
    parser = subparsers.add_parser("privacy", help="privacy planning: epsilon and noise")
    sub = parser.add_subparsers(dest="privacy_command", required=True)

    eps = sub.add_parser("epsilon", help="epsilon spent by DP-SGD with a given noise multiplier")
    _common(eps)
    eps.add_argument("--noise-multiplier", type=float, required=True, help="z >= 0")
    eps.set_defaults(func=_epsilon, handler=_epsilon)

    noise = sub.add_parser("noise", help="smallest noise multiplier within a target epsilon")
    _common(noise)
    noise.add_argument("--target-epsilon", type=float, required=True, help="epsilon > 0")
    noise.add_argument(
        "--tolerance", type=float, default=0.01, help="stop within this of the target (0.01)"
    )
    noise.set_defaults(func=_noise, handler=_noise)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample-rate", type=float, required=True, help="q in (0, 1]")
    length = p.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="T, the number of noisy steps")
    length.add_argument("--epochs", type=float, help="epochs; steps = ceil(epochs / q)")
    p.add_argument("--delta", type=float, required=True, help="delta in (0, 1)")
    p.add_argument(
        "--accountant",
        choices=[k.value for k in AccountantKind],
        default=AccountantKind.RDP.value,
        help="rdp (default) or prv",
    )


def _epsilon(args: argparse.Namespace) -> int:
    q, steps, delta, kind = _checked(args)
    z = float(args.noise_multiplier)
    if not (math.isfinite(z) and z >= 0.0):
        raise ConfigError("--noise-multiplier", f"must be a finite number >= 0, got {z}")
    eps = epsilon(kind=kind, sample_rate=q, noise_multiplier=z, steps=steps, delta=delta)
    print(f"{eps:.6g}")
    return 0


def _noise(args: argparse.Namespace) -> int:
    q, steps, delta, kind = _checked(args)
    target = float(args.target_epsilon)
    if not (math.isfinite(target) and target > 0.0):
        raise ConfigError("--target-epsilon", f"must be a finite number > 0, got {target}")
    tol = float(args.tolerance)
    if not (math.isfinite(tol) and tol > 0.0):
        raise ConfigError("--tolerance", f"must be a finite number > 0, got {tol}")
    try:
        z = noise_multiplier_for(
            kind=kind,
            target_epsilon=target,
            sample_rate=q,
            steps=steps,
            delta=delta,
            tolerance=tol,
        )
    except ValueError as exc:
        raise ConfigError("--target-epsilon", str(exc)) from exc
    print(f"{z:.6g}")
    return 0


def _checked(args: argparse.Namespace) -> tuple[float, int, float, AccountantKind]:
    q = float(args.sample_rate)
    if not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise ConfigError("--sample-rate", f"must be in (0, 1], got {q}")
    delta = float(args.delta)
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ConfigError("--delta", f"must be in (0, 1), got {delta}")
    if args.steps is not None:
        steps = int(args.steps)
        if steps < 1:
            raise ConfigError("--steps", f"must be >= 1, got {steps}")
    else:
        epochs = float(args.epochs)
        if not (math.isfinite(epochs) and epochs > 0.0):
            raise ConfigError("--epochs", f"must be a finite number > 0, got {epochs}")
        steps = max(1, math.ceil(epochs / q - 1e-9))
    return q, steps, delta, AccountantKind(args.accountant)
