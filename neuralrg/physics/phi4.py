"""φ⁴ lattice field theory on the L×L torus (``docs/conventions.md``, "φ⁴ lattice field theory").

Conventions:

* a real field φ shaped (B, L, L), N = L², bonds to the right and down (roll-based, so L = 2
  has double bonds, as for Ising);
* hopping-parametrised action, total over the lattice (not per site), p(φ) ∝ e^{−S(φ)}:

      S(φ) = Σ_x [ −2κ Σ_{μ=1,2} φ_x φ_{x+μ̂} + (1 − 2λ) φ_x² + λ φ_x⁴ ],

  i.e. the form φ_x² + λ(φ_x² − 1)² per site minus the constant λN. As λ → ∞, φ_x → ±1 and
  S → −2κ Σ_bonds s s + N(1 − λ): Ising at K = 2κ;
* per-sample observables are per site (``Phi4Target.observables``); no exact ln Z (``log_z`` None).
"""
from __future__ import annotations

from typing import Any

import torch

from .correlation import two_point_function, correlation_length_from_moments, momentum_moments
from .lattice import check_lattice_size
from .statistics import blocked_jackknife, integrated_autocorr_time
from .target import LatticeTarget, check_field_shape, check_finite_number


class Phi4Target(LatticeTarget):
    """φ⁴ theory with hopping parameter ``kappa`` (κ ≥ 0) and quartic coupling ``lam`` (λ > 0).

    ``energy(x)`` is the total action S(x) of the module docstring, ``log_prob(x) = −S(x)``
    (unnormalised); dtype and device follow the input.
    """

    z2_symmetric = True
    headline = "action_per_site"

    def __init__(self, L: int, kappa: float, lam: float) -> None:
        super().__init__()
        self.L = check_lattice_size(L)
        self.kappa = check_finite_number(kappa, "kappa", minimum=0.0)
        self.lam = check_finite_number(lam, "lam", minimum=0.0, strict=True)
        self.n_sites = self.L * self.L

    def spec_kwargs(self) -> dict[str, Any]:
        return {"L": self.L, "kappa": self.kappa, "lam": self.lam}

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """Total action S(x), shape (B,)."""
        check_field_shape(x, self.L)
        x2 = x * x
        hop = x * (torch.roll(x, -1, dims=-1) + torch.roll(x, -1, dims=-2))
        site = -2.0 * self.kappa * hop + (1.0 - 2.0 * self.lam) * x2 + self.lam * x2 * x2
        return site.sum(dim=(-2, -1))

    def grad_energy(self, x: torch.Tensor) -> torch.Tensor:
        """∂S/∂φ_x = −2κ Σ_{4 neighbours} φ + 2(1 − 2λ) φ_x + 4λ φ_x³ (analytic), shaped like x."""
        check_field_shape(x, self.L)
        nb = (torch.roll(x, 1, -1) + torch.roll(x, -1, -1) + torch.roll(x, 1, -2) + torch.roll(x, -1, -2))
        return -2.0 * self.kappa * nb + 2.0 * (1.0 - 2.0 * self.lam) * x + 4.0 * self.lam * x * x * x

    # -- physics (the protocol of ``neuralrg.physics.target``) ---------------------------
    def observables(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
        """Per-sample estimators, each (B,), M = Σ_x φ_x / N: energy = S/N (action per site), m = M,
        abs_m = |M|, m2 = M², m4 = M⁴, phi2 = Σ_x φ_x² / N, and for the correlation length
        (``correlation``) g0 = Ĝ(0) = N M² and g_pmin = Ĝ(p_min); G_r = G(r) = (1/N) Σ_y φ_y φ_{y+r}
        at distance r = 0 … L/2 along an axis (both axes averaged). ``generator`` is unused."""
        x = x.detach()
        m = x.mean(dim=(-2, -1))
        m2 = m * m
        g0, g_pmin = momentum_moments(x)
        G = two_point_function(x)
        out = {"energy": self.energy(x) / self.n_sites, "m": m, "abs_m": m.abs(), "m2": m2,
               "m4": m2 * m2, "phi2": (x * x).mean(dim=(-2, -1)), "g0": g0, "g_pmin": g_pmin}
        for r in range(self.L // 2 + 1):  # G(r) along the axes, both axes averaged
            out[f"G_{r}"] = 0.5 * (G[:, 0, r] + G[:, r, 0])
        return out

    def summarize(self, series: dict[str, torch.Tensor], c: float = 6.0) -> dict[str, dict[str, Any]]:
        """Ensemble estimates from (C, T) series of ``observables``.

        τ_int error bars (Sokal window ``c``), entries {"mean", "err", "tau_int", "window",
        "converged"}: action_per_site = ⟨S⟩/N, m2 = ⟨M²⟩, abs_m = ⟨|M|⟩, phi2 = ⟨φ²⟩.
        Blocked jackknife errors (``statistics.blocked_jackknife``), entries {"mean", "err",
        "block_length", "n_blocks", "converged"}: susceptibility χ = N(⟨M²⟩ − ⟨|M|⟩²),
        binder U = 1 − ⟨M⁴⟩/(3⟨M²⟩²), correlation_length = second-moment ξ from ⟨g0⟩ and
        ⟨g_pmin⟩ (full, not connected, G: in the broken phase it grows with the volume);
        two_point_function = {"r", "mean", "err", "converged"}: G(r) along the axes with τ_int errors.
        Each entry is present when its input series are; energy and m2 are required.
        """
        missing = [k for k in ("energy", "m2") if k not in series]
        if missing:
            raise ValueError(f"series lacks key(s) {missing}; needs energy and m2 (from observables)")
        used = [k for k in ("energy", "m2", "abs_m", "phi2", "m4", "g0", "g_pmin") if k in series]
        tau = {k: integrated_autocorr_time(series[k], c) for k in used}
        out: dict[str, dict[str, Any]] = {}
        for k in ("energy", "m2", "abs_m", "phi2"):
            if k in tau:
                r = tau[k]
                out[self.headline if k == "energy" else k] = {
                    "mean": r["mean"], "err": r["err"], "tau_int": r["tau"], "window": r["window"],
                    "converged": r["converged"]}
        N, L = self.n_sites, self.L
        derived = {
            "susceptibility": (["m2", "abs_m"], lambda d: N * (d["m2"] - d["abs_m"] ** 2)),
            "binder": (["m2", "m4"], lambda d: 1.0 - d["m4"] / (3.0 * d["m2"] ** 2)),
            "correlation_length": (["g0", "g_pmin"],
                                   lambda d: correlation_length_from_moments(d["g0"], d["g_pmin"], L)),
        }
        for name, (keys, f) in derived.items():
            if all(k in tau for k in keys):
                out[name] = blocked_jackknife(series, keys, f, tau, c)
        rs = sorted(int(k[2:]) for k in series if k.startswith("G_"))
        if rs:
            g = [integrated_autocorr_time(series[f"G_{r}"], c) for r in rs]
            out["two_point_function"] = {"r": rs, "mean": [x["mean"] for x in g], "err": [x["err"] for x in g],
                                         "converged": all(x["converged"] for x in g)}
        return out
