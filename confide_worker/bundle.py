"""A job's code bundle inside the worker: its model, loss and transform, from a read-only folder.

The daemon has checked the archive against the signed job and unpacked it
(``agent.workers.bundles``); the sandbox binds the folder read-only. Its ``model.py`` is
imported as the module ``confide_bundle.model`` of a package ``confide_bundle`` whose path is
the folder alone, so the bundle's other files import as ``confide_bundle.<name>`` (or
relatively: ``from . import layers``) and no file of it can shadow an installed module. The
folder is never put on ``sys.path``.

What the bundle defines (README "Code bundles"):

- ``build_model(spec) -> torch.nn.Module`` (required): ``spec`` is a
  ``confide.models.BundleSpec``; the module's float32 ``named_parameters()`` must be exactly
  the job's signed ``model.parameters`` (names, shapes, order);
- ``loss(outputs, labels) -> tensor`` (optional): the mean over the batch of a per-record loss,
  used for training (cross-entropy otherwise); hold-out figures are always accuracy and
  cross-entropy of the outputs, so every job reports the same quantities;
- ``transform(features) -> tensor`` (optional): applied once to every record's features
  (training and hold-out) after loading, inside the sandbox; it keeps one row per record.

A bundle that fails to load or does not keep these promises fails the task with reason
``invalid_job``; its messages (which job code wrote) stay in the site's log.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from confide.errors import PolicyRefusal, Reason
from confide.models import ENTRY_MODULE, BundleSpec

__all__ = [
    "PACKAGE",
    "BundleCode",
    "check_parameters",
    "dp_ready",
    "initial_weights",
    "load_bundle",
    "unsupported_layers",
]

PACKAGE = "confide_bundle"
"""The package name a bundle's folder is imported under."""

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Transform = Callable[[torch.Tensor], torch.Tensor]


def _invalid(message: str) -> PolicyRefusal:
    return PolicyRefusal(f"the job's code bundle: {message}", reason=Reason.INVALID_JOB)


@dataclass(frozen=True)
class BundleCode:
    """What a bundle's ``model.py`` defines."""

    build_model: Callable[[BundleSpec], nn.Module]
    loss: Loss | None
    transform: Transform | None

    def model(self, spec: BundleSpec) -> nn.Module:
        """A new module from ``build_model``, checked to be a float32 ``nn.Module``.

        Raises:
            PolicyRefusal: reason ``invalid_job``: it raised, or returned something else.
        """
        try:
            module = self.build_model(spec)
        except Exception as exc:
            raise _invalid(f"build_model raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(module, nn.Module):
            raise _invalid(f"build_model returned a {type(module).__name__}, not a torch module")
        bad = [n for n, p in module.named_parameters() if p.dtype != torch.float32]
        if bad:
            raise _invalid(f"parameters {bad[:5]} are not float32")
        return module

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``transform(x)`` when the bundle has one (one row per record kept), else ``x``.

        Raises:
            PolicyRefusal: reason ``invalid_job``: it raised, or changed the record count or
                returned no floating tensor.
        """
        if self.transform is None:
            return x
        try:
            with torch.no_grad():
                out = self.transform(x)
        except Exception as exc:
            raise _invalid(f"transform raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise _invalid("transform must return a floating-point tensor")
        if out.dim() < 1 or out.shape[0] != x.shape[0]:
            raise _invalid("transform must keep one row per record")
        return out.to(torch.float32).contiguous()


def load_bundle(folder: Path) -> BundleCode:
    """Import a bundle's ``model.py`` (once per process) and pick out what it defines.

    Raises:
        PolicyRefusal: reason ``invalid_job``: no ``model.py``, it fails to import (e.g. a
            module this environment lacks: nothing is installed at a site), or it defines no
            callable ``build_model``.
    """
    entry = folder / ENTRY_MODULE
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]  # a worker loads one bundle; init-weights may load another
    if not entry.is_file():
        raise _invalid(f"it has no {ENTRY_MODULE}")
    package = types.ModuleType(PACKAGE)
    package.__path__ = [str(folder)]
    sys.modules[PACKAGE] = package
    spec = importlib.util.spec_from_file_location(f"{PACKAGE}.model", entry)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise _invalid(f"{ENTRY_MODULE} failed to import: {type(exc).__name__}: {exc}") from exc
    build = getattr(module, "build_model", None)
    if not callable(build):
        raise _invalid(f"{ENTRY_MODULE} defines no build_model(spec)")
    return BundleCode(
        build_model=build,
        loss=_optional(module, "loss"),
        transform=_optional(module, "transform"),
    )


def _optional(module: Any, name: str) -> Any:
    value = getattr(module, name, None)
    if value is not None and not callable(value):
        raise _invalid(f"{ENTRY_MODULE}: {name} is not callable")
    return value


def check_parameters(module: nn.Module, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
    """Refuse a model whose parameters are not the job's signed ones (names, shapes, order).

    Raises:
        PolicyRefusal: reason ``invalid_job``, naming the first difference.
    """
    got = [(n, tuple(p.shape)) for n, p in module.named_parameters()]
    if got != shapes:
        first = next(
            (f"{g} here, {w} signed" for g, w in zip(got, shapes, strict=False) if g != w),
            f"{len(got)} parameters here, {len(shapes)} signed",
        )
        raise _invalid(f"its model's parameters are not the job's: {first}")


def unsupported_layers(module: nn.Module) -> list[tuple[str, str]]:
    """(name, type) of each trainable layer Opacus cannot train with per-record gradients.

    Opacus's own ``ModuleValidator`` rules (BatchNorm mixes records; LSTM, GRU and multi-head
    attention need Opacus's own versions; ...), applied layer by layer so each is named.
    """
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    out: list[tuple[str, str]] = []
    for name, sub in trainable_modules(module):
        validator = ModuleValidator.VALIDATORS.get(type(sub))
        if validator is not None and validator(sub):
            out.append((name or "(the model itself)", type(sub).__name__))
    return out


def dp_ready(module: nn.Module, *, fix: bool) -> nn.Module:
    """``module`` when DP-SGD can train it; with ``fix``, Opacus's ``ModuleValidator.fix`` of it.

    Args:
        module: the bundle's model (in training mode).
        fix: the job's ``training.fix_unsupported_layers``.

    Raises:
        PolicyRefusal: reason ``model_unsupported``, naming the layers, when ``fix`` is off (or
            the fix leaves some).
    """
    bad = unsupported_layers(module)
    if bad and fix:
        from opacus.validators import ModuleValidator

        module = ModuleValidator.fix(module)
        bad = unsupported_layers(module)
    if bad:
        names = ", ".join(f"{n} ({t})" for n, t in bad[:20])
        hint = "" if fix else "; a job may ask for training.fix_unsupported_layers = true"
        raise PolicyRefusal(
            f"DP-SGD cannot train these layers of the bundle's model per record: {names}{hint}",
            reason=Reason.MODEL_UNSUPPORTED,
        )
    return module


def initial_weights(
    folder: Path, spec: BundleSpec, *, dp: bool, fix_unsupported_layers: bool
) -> list[tuple[str, Any]]:
    """A bundle's initial weights, as ``confide job init-weights`` makes them (float32 NumPy).

    ``torch.manual_seed(spec.seed)`` first, so the same code and seed give the same weights.
    A job with DP-SGD (``dp``) is checked as the sites will check it, and with
    ``fix_unsupported_layers`` fixed as they will fix it, so its parameters are the ones they
    train and the operator hears of unsupported layers before any site does.

    Raises:
        PolicyRefusal: reason ``invalid_job`` (see ``load_bundle``, ``BundleCode.model``) or
            ``model_unsupported`` (``dp_ready``).
    """
    code = load_bundle(folder)
    torch.manual_seed(spec.seed)
    module = code.model(spec)
    if dp:
        module = dp_ready(module.train(), fix=fix_unsupported_layers)
    return [
        (name, p.detach().to("cpu", torch.float32).numpy().copy())
        for name, p in module.named_parameters()
    ]
