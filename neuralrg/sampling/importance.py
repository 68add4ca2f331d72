"""Variational free energy and importance-sampling estimates of a trained flow.

Conventions (physics.md): F_q = E_q[ln q(x) + E(x)] ≥ −ln Z_x (totals, natural log); per-site
values divide by N = L². The gap is F_q/N + ln Z_x/N; the relative error divides the gap by
the *continuous* ln Z_x/N. Importance weights ln w = −E(x) − ln q(x).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .metropolis import metropolis_acceptance
from .progress import NULL_PROGRESS, Progress
from ..physics.importance import KHAT_THRESHOLD, MIN_SAMPLES, importance_diagnostics
from ..physics.statistics import ess_fraction, importance_log_z


@torch.no_grad()
def draw_log_weights(flow: Any, n_samples: int, batch_size: int = 1024,
                     generator: torch.Generator | None = None, progress: Progress | None = None,
                     stage: str = "importance sampling") -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_samples`` from the flow; return (log q (M,), log p̃ (M,)) in float64.
    ``progress`` hears of every batch (``stage``, in samples)."""
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be >= 2, got {n_samples}")
    log_q, log_p = [], []
    left = int(n_samples)
    prog = progress if progress is not None else NULL_PROGRESS
    prog.start(stage, left)
    while left > 0:
        b = min(left, int(batch_size))
        _, x, lq = flow.sample_with_latent(b, generator=generator)
        log_q.append(lq.to(torch.float64))
        log_p.append(flow.target.log_prob(x).to(torch.float64))
        left -= b
        prog.update(b)
    lq, lp = torch.cat(log_q), torch.cat(log_p)
    if progress is not None:
        prog.finish(f"ESS/M {ess_fraction(lp - lq):.3g}")
    return lq, lp


def variational_summary(log_q: torch.Tensor, log_p: torch.Tensor, n_sites: int,
                        exact_log_z: float | None = None) -> dict[str, float]:
    """Per-site variational and importance-sampling estimates from flow samples: the
    ``log_weight_summary`` of ln w = ln p̃ − ln q."""
    return log_weight_summary(log_p - log_q, n_sites, exact_log_z)


def log_weight_summary(log_w: torch.Tensor, n_sites: int, exact_log_z: float | None = None) -> dict[str, float]:
    """Per-site estimates from the log weights (M,) of independent draws with E[w] = Z: the flow's
    (ln p̃ − ln q) or annealed ones (``sampling.annealed``); −mean(ln w) ≥ −ln Z is then F_q or the
    mean work of the annealing.

    Keys: free_energy_per_site (F_q/N), free_energy_per_site_err, and with the exact ln Z_x:
    exact_free_energy_per_site (−ln Z_x/N), gap_per_site, relative_error (gap / (ln Z_x/N));
    always is_log_z_per_site (ln Ẑ/N) with its _err (delta method), is_free_energy_per_site,
    ess_fraction, and the PSIS diagnostics of the weights (``physics.importance``): is_khat (Pareto
    k̂ of the upper tail), is_reliable (k̂ ≤ ½: otherwise the error bar of ln Ẑ is too small, and
    above 0.7 ln Ẑ itself is not to be trusted), is_note (why, or None), is_psis_log_z_per_site
    (Pareto-smoothed ln Ẑ/N, None where k̂ ≥ 0.7).
    """
    log_w = log_w.to(torch.float64)
    f = -log_w  # per draw: ln q − ln p̃ (the flow's), or the work of an annealed draw
    M = f.numel()
    out: dict[str, float] = {
        "free_energy_per_site": float(f.mean()) / n_sites,
        "free_energy_per_site_err": float(f.std(unbiased=True)) / math.sqrt(M) / n_sites,
    }
    lz, lz_err = importance_log_z(log_w)
    out["is_log_z_per_site"] = lz / n_sites
    out["is_log_z_per_site_err"] = lz_err / n_sites
    out["is_free_energy_per_site"] = -lz / n_sites
    out["ess_fraction"] = ess_fraction(log_w)
    if M >= MIN_SAMPLES:
        diag = importance_diagnostics(log_w)
        out["is_khat"] = diag["khat"]
        out["is_reliable"] = diag["reliable"]
        out["is_note"] = diag["note"]
        out["is_psis_log_z_per_site"] = None if diag["psis_log_z"] is None else diag["psis_log_z"] / n_sites
    if exact_log_z is not None:
        exact = -exact_log_z / n_sites
        out["exact_free_energy_per_site"] = exact
        out["gap_per_site"] = out["free_energy_per_site"] - exact
        out["relative_error"] = out["gap_per_site"] / (exact_log_z / n_sites)
        out["is_gap_per_site"] = out["is_free_energy_per_site"] - exact
    return out


def format_is_estimate(s: dict[str, Any]) -> str:
    """"ln Z/N = a ± b (exact c), ESS/M = …, k̂ = …" with an UNRELIABLE flag and its reason beside
    the number where the PSIS k̂ says so; ``s`` is a ``variational_summary``."""
    exact = f" (exact {-s['exact_free_energy_per_site']:.6f})" if "exact_free_energy_per_site" in s else ""
    text = (f"ln Z/N = {s['is_log_z_per_site']:.6f} ± {s['is_log_z_per_site_err']:.6f}{exact}, "
            f"ESS/M = {s['ess_fraction']:.4f}")
    if "is_khat" in s:
        text += f", k̂ = {s['is_khat']:.2f}"
        if not s["is_reliable"]:
            usable = (math.isfinite(s["is_khat"]) and s["is_khat"] <= KHAT_THRESHOLD
                      and MIRROR_NOTE not in (s["is_note"] or ""))
            text += f"  {'ERROR BAR ' if usable else ''}UNRELIABLE: {s['is_note']}"
    return text


MIRROR_NOTE = ("plain density of a Z2-symmetric target: a reverse-KL flow may cover one sign of m only, "
               "and then ln Z misses up to ln 2 in total, a bias no tail diagnostic sees; use the "
               "Z2-symmetrised estimate")


def flow_summary(flow: Any, log_q: torch.Tensor, log_p: torch.Tensor) -> dict[str, Any]:
    """``variational_summary`` of samples of ``flow``; for a flow that is not Z2-symmetrised on a
    Z2-symmetric target the IS estimate is marked unreliable (``MIRROR_NOTE``; measured in
    docs/benchmarks.md, coverage: 0 of 3 such estimates with k̂ ≤ ½ covered the exact value at 2σ)."""
    out = variational_summary(log_q, log_p, flow.n_sites, flow.target.log_z)
    return flag_mirror(out, flow.target.z2_symmetric and not flow.z2)


def flag_mirror(out: dict[str, Any], plain_density_of_z2_target: bool) -> dict[str, Any]:
    """Mark the estimate ``out`` (a ``log_weight_summary``) unreliable with ``MIRROR_NOTE`` when it
    comes from a plain (neither symmetrised nor sign-folded) density of a Z2-symmetric target."""
    if "is_khat" in out and plain_density_of_z2_target:
        out["is_reliable"] = False
        out["is_note"] = MIRROR_NOTE if out["is_note"] is None else f"{out['is_note']}; {MIRROR_NOTE}"
    return out


@torch.no_grad()
def evaluate_flow(flow: Any, n_samples: int = 4096, batch_size: int = 1024,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """Sample the flow and report ``flow_summary`` plus flow-Metropolis acceptance."""
    log_q, log_p = draw_log_weights(flow, n_samples, batch_size, generator)
    out = flow_summary(flow, log_q, log_p)
    out["metropolis_acceptance"] = metropolis_acceptance(log_p - log_q, generator=generator)
    out["n_samples"] = int(n_samples)
    return out
