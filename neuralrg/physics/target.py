"""The lattice-target protocol: everything the flows, samplers, training and analysis may ask
of a physical model. A new model is one subclass in its own module plus one ``conf/target/``
file; nothing else in the package names a concrete target.

Conventions (``docs/conventions.md``):

* fields x are real tensors shaped (B, L, L) on the L×L torus, N = L² sites;
* ``energy(x)`` is the total E(x) (not per site) with p(x) ∝ exp(−E(x)), natural log; the
  normflows ``log_prob(x)`` is −E(x) (unnormalised);
* ``log_z`` is the exact ln Z = ln ∫ e^{−E(x)} dx (total) where known, else None;
* ``observables(x)`` returns per-sample, per-site estimators shaped (B,). Every target offers
  at least ``energy`` (its energy or action per site, in its own convention), ``m`` (the
  order parameter per site) and ``m2`` (its square): the samplers' τ_int and ESS are quoted
  for ``m2`` and ``energy``;
* ``summarize(series)`` turns (C, T) series of those estimators into named ensemble estimates
  {"mean", "err", …, "converged"}; ``exact()`` gives exact values under the same names (and
  any other exact numbers, e.g. ``log_z``) where known, else {};
* ``spec()`` is the plain-data recipe that rebuilds the target (checkpoints store it).
"""
from __future__ import annotations

import abc
import math
from typing import Any

import normflows as nf
import torch

from ..spec import import_object, object_path
from .statistics import integrated_autocorr_time

#: the per-sample observables every target provides (see module docstring)
REQUIRED_OBSERVABLES = ("energy", "m", "m2")


def check_field_shape(x: torch.Tensor, L: int, name: str = "x") -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor shaped (B, L, L)."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor shaped (B, {L}, {L}), got {type(x).__name__}")
    if x.dim() != 3 or tuple(x.shape[1:]) != (L, L):
        raise ValueError(f"{name} must be shaped (B, {L}, {L}), got {tuple(x.shape)}")


def check_finite_number(value: object, name: str, *, minimum: float | None = None,
                        strict: bool = False, allowed: str | None = None) -> float:
    """``value`` as a float, or a ValueError naming parameter, value and what is allowed.

    ``minimum``: lower bound (exclusive with ``strict``); ``allowed`` replaces the generated
    description of the allowed range in the message.
    """
    what = allowed or ("a finite real number" + ("" if minimum is None else
                                                 f" {'>' if strict else '>='} {minimum}"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (minimum is not None and (v <= minimum if strict else v < minimum)):
        raise ValueError(f"{name} must be {what}, got {v}")
    return v


class LatticeTarget(nf.distributions.Target, abc.ABC):
    """Base class of the lattice targets (see the module docstring for the contract).

    Subclasses set ``L`` (validated) and ``n_sites`` in ``__init__`` and implement ``energy``,
    ``observables`` and ``spec_kwargs``. ``grad_energy`` defaults to autograd; ``summarize``
    to τ_int error bars of every series; ``log_z`` to None; ``exact`` to {}.
    """

    #: E(−x) = E(x): Z2-symmetrised and odd flows may be used
    z2_symmetric: bool = True
    #: the summary entry printed as the headline (energy per site, action per site, …)
    headline: str = "energy_per_site"

    L: int
    n_sites: int

    # -- the density ---------------------------------------------------------------------
    @abc.abstractmethod
    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """E(x), total over the lattice, shape (B,), for x shaped (B, L, L)."""

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """∇E(x) shaped like x (autograd; subclasses override with an analytic gradient)."""
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.energy(xr).sum(), xr)
        return g

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Unnormalised log density −E(x), shape (B,)."""
        return -self.energy(x)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.L, self.L)

    @property
    def log_z(self) -> float | None:
        """Exact ln Z = ln ∫ e^{−E(x)} dx (total), or None where unknown."""
        return None

    # -- physics ---------------------------------------------------------------------------
    @abc.abstractmethod
    def observables(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
        """Per-sample, per-site estimators, each shaped (B,); includes ``REQUIRED_OBSERVABLES``."""

    def summarize(self, series: dict[str, torch.Tensor], c: float = 6.0) -> dict[str, dict[str, Any]]:
        """Ensemble estimates from (C, T) series of ``observables``: here every series' mean with
        its τ_int error bar (Sokal window ``c``), named ``<series>``; ``energy`` is reported as
        ``headline``. Entries {"mean", "err", "tau_int", "window", "converged"}."""
        out: dict[str, dict[str, Any]] = {}
        for name, values in series.items():
            r = integrated_autocorr_time(values, c)
            key = self.headline if name == "energy" else name
            out[key] = {"mean": r["mean"], "err": r["err"], "tau_int": r["tau"], "window": r["window"],
                        "converged": r["converged"]}
        return out

    def exact(self) -> dict[str, float]:
        """Exact values under the names of ``summarize`` (and e.g. ``log_z``), {} where unknown."""
        return {}

    # -- identity --------------------------------------------------------------------------
    @abc.abstractmethod
    def spec_kwargs(self) -> dict[str, Any]:
        """The constructor arguments (plain numbers/strings/lists) that rebuild this target."""

    def spec(self) -> dict[str, Any]:
        """{"class": "<module>:<qualname>", "kwargs": {...}}: plain data, stored in checkpoints."""
        return {"class": object_path(type(self)), "kwargs": dict(self.spec_kwargs())}

    def describe(self) -> str:
        """One line for printed headers, e.g. ``IsingTarget(L=8, K=0.440687, shift=0.1)``."""
        args = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.spec_kwargs().items())
        return f"{type(self).__name__}({args})"

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.spec_kwargs().items())


def target_from_spec(spec: dict[str, Any]) -> LatticeTarget:
    """Rebuild a target from ``LatticeTarget.spec()`` output.

    Also accepts the format of checkpoints written before the protocol existed,
    {"L", "K", "shift"}, which always meant the Ising relaxation.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"target spec must be a dict, got {type(spec).__name__}")
    if "class" not in spec:
        if {"L", "K"} <= set(spec):  # format 1: the Ising relaxation
            from .ising import IsingTarget

            return IsingTarget(spec["L"], spec["K"], spec.get("shift", 0.1))
        raise ValueError(f"target spec needs 'class' and 'kwargs', got keys {sorted(spec)}")
    path = spec["class"]
    cls = import_object(path, "target class")
    if not (isinstance(cls, type) and issubclass(cls, LatticeTarget)):
        raise ValueError(f"target class {path!r} is not a LatticeTarget")
    return cls(**dict(spec.get("kwargs") or {}))


def same_spec(a: dict[str, Any], b: dict[str, Any], rel_tol: float = 1e-9) -> bool:
    """Whether two target specs describe the same target (floats compared to ``rel_tol``)."""
    def norm(s: dict[str, Any]) -> dict[str, Any]:
        return target_from_spec(s).spec() if "class" not in s else s

    a, b = norm(a), norm(b)
    if a["class"] != b["class"] or set(a["kwargs"]) != set(b["kwargs"]):
        return False
    for k, va in a["kwargs"].items():
        vb = b["kwargs"][k]
        if isinstance(va, float) or isinstance(vb, float):
            if not (isinstance(va, (int, float)) and isinstance(vb, (int, float))
                    and math.isclose(va, vb, rel_tol=rel_tol, abs_tol=1e-12)):
                return False
        elif va != vb:
            return False
    return True
