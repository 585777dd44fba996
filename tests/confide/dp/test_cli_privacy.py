"""``confide privacy``: epsilon and noise commands through a small ArgumentParser."""

from __future__ import annotations

import argparse

import pytest

from confide.cli import privacy
from confide.dp.accountant import AccountantKind, epsilon
from confide.exits import run_command


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="confide")
    privacy.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run_command("confide", lambda: args.func(args))


def test_epsilon_prints_the_accountants_value(capsys):
    """`privacy epsilon` prints the RDP ε for the given q, z, T, δ and exits 0."""
    argv = ["privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0"]
    assert _run([*argv, "--steps", "1000", "--delta", "1e-5"]) == 0
    want = epsilon(
        kind=AccountantKind.RDP, sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5
    )
    assert float(capsys.readouterr().out) == pytest.approx(want, rel=1e-5)


def test_epochs_stand_for_steps(capsys):
    """`--epochs 10 --sample-rate 0.01` gives the same ε as `--steps 1000`, with PRV too."""
    base = ["privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0"]
    tail = ["--delta", "1e-5", "--accountant", "prv"]
    assert _run([*base, "--epochs", "10", *tail]) == 0
    by_epochs = capsys.readouterr().out
    assert _run([*base, "--steps", "1000", *tail]) == 0
    assert capsys.readouterr().out == by_epochs


def test_noise_prints_a_sigma_within_the_target(capsys):
    """`privacy noise` prints a noise multiplier whose ε does not exceed the target."""
    argv = ["privacy", "noise", "--target-epsilon", "2", "--sample-rate", "0.02"]
    assert _run([*argv, "--steps", "300", "--delta", "1e-5"]) == 0
    z = float(capsys.readouterr().out)
    eps = epsilon(
        kind=AccountantKind.RDP, sample_rate=0.02, noise_multiplier=z, steps=300, delta=1e-5
    )
    assert eps <= 2.0 + 1e-3  # printed with 6 significant digits


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--sample-rate", "0", "--steps", "10", "--delta", "1e-5"], "--sample-rate"),
        (["--sample-rate", "0.1", "--steps", "0", "--delta", "1e-5"], "--steps"),
        (["--sample-rate", "0.1", "--epochs", "-1", "--delta", "1e-5"], "--epochs"),
        (["--sample-rate", "0.1", "--steps", "10", "--delta", "1"], "--delta"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, argv, key):
    """An invalid value exits 2 with one stderr line naming the option."""
    code = _run(["privacy", "epsilon", "--noise-multiplier", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and key in err


def test_negative_noise_and_target_exit_2(capsys):
    """Negative noise multipliers and non-positive targets exit 2."""
    common = ["--sample-rate", "0.1", "--steps", "10", "--delta", "1e-5"]
    assert _run(["privacy", "epsilon", "--noise-multiplier", "-1", *common]) == 2
    assert _run(["privacy", "noise", "--target-epsilon", "0", *common]) == 2
    assert "--target-epsilon" in capsys.readouterr().err
