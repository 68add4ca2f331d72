"""Annealed importance sampling (AIS, Neal 2001) from the flow to the target, in latent space.

Draws start at the flow's base, z₀ ~ N(0, I), and pass K stages 0 = b₀ < b₁ < … < b_K = 1
(linear) of the densities

    γ_b(z) = N(z)·exp(b·ℓ(z)),   ℓ(z) = ln p̃(x) − ln q(x) = −U(z) − ln N(z),   x = g(z),

U the latent potential of ``latent.latent_potential`` (with Z2 or the sign fold), so γ₀ is the
base and γ₁ the latent target. Stage k adds (b_k − b_{k−1})·ℓ(z) to ln w at the current state,
then one HMC move (``hmc.hmc_step``, n_leapfrog steps of a fixed ε) that leaves γ_{b_k} invariant.
Then E[w] = Z exactly, for any K and any ε: the moves only make the weights lighter-tailed
than the flow's own. K = 1 gives ln w = ℓ(z₀), the flow's importance weights, and one move of
the state; K = 0 is plain importance sampling (no moves, no gradients).
The draws are independent, so ln Ẑ, its error bar, the ESS and the PSIS k̂ are importance
sampling's (``physics.importance``), and the states x = g(z_K) (a random sign with Z2 or the
fold) with weights w give self-normalised observables. −mean(ln w) ≥ −ln Z is the mean work of
the annealing (Jarzynski), the variational bound that the flow alone gives at K = 1.

ε is fixed before any draw: given, or adapted by dual averaging on a short pilot latent-HMC run
at b = 1 (``pilot_chains`` × ``pilot_trajectories``, independent of the draws), so the weights
stay exact. Totals over the lattice, natural log; z and x shaped (M, L, L).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..flows.model import random_sign
from .fold import folded
from ..physics.importance import weighted_means
from ..physics.observables import PAIR_KEYS
from .hmc import _check_int, _check_step_size, hmc_step, make_potential_and_grad, run_hmc
from .importance import flag_mirror, format_is_estimate, log_weight_summary
from .latent import latent_potential
from .progress import NULL_PROGRESS, Progress

__all__ = ["AnnealedDraws", "annealed_importance", "annealed_summary", "check_annealing", "format_annealed"]


@dataclass
class AnnealedDraws:
    """Output of ``annealed_importance``: M independent weighted draws.

    log_w (M,) float64 total log weights (E[w] = Z); x (M, L, L) final states; z (M, L, L) their
    latents; step_size ε of every move (None for K = 0); stages K; n_leapfrog per move; accept (K,)
    mean acceptance probability per stage; pilot_step_size (None when ε was given or K = 0);
    seconds (wall, pilot included); grad_evals_per_draw = 1 + K·n_leapfrog potential+gradient
    evaluations per draw (0 for K = 0: one potential evaluation);
    signed: the x carry a random global sign (Z2-symmetrised flow or the sign fold)."""

    log_w: torch.Tensor
    x: torch.Tensor
    z: torch.Tensor
    step_size: float | None
    stages: int
    n_leapfrog: int
    accept: torch.Tensor
    pilot_step_size: float | None
    seconds: float
    grad_evals_per_draw: int
    signed: bool = True


def check_annealing(n_samples: Any, stages: Any, n_leapfrog: Any, step_size: Any, batch_size: Any) -> None:
    """ValueError naming the first bad setting (samples >= 2, stages >= 0, n_leapfrog >= 1,
    step_size None or > 0, batch_size >= 1)."""
    _check_int(n_samples, "samples", 2)
    _check_int(stages, "stages", 0)
    _check_int(n_leapfrog, "n_leapfrog", 1)
    if step_size is not None:
        _check_step_size(step_size, "step_size")
    _check_int(batch_size, "batch_size", 1)


def _half_sq(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * z.flatten(1).square().sum(dim=1)


def _anneal_batch(flow: Any, state_potential, pg_raw, b: torch.Tensor, eps: float, n_leapfrog: int, n: int,
                  generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log w (n,) float64, z_K, x_K = g(z_K) (n, L, L), acceptance (K,)) of n draws through the stages
    ``b`` (b = [0] alone: plain importance sampling, one potential evaluation and no gradient)."""
    z = flow.q0(n, generator=generator)[0]
    accept = torch.empty(len(b) - 1, dtype=torch.float64)
    if len(b) == 1:
        with torch.no_grad():
            U, x = state_potential(z)
        return -U.to(torch.float64) - flow.q0.log_prob(z.to(torch.float64)), z, x, accept
    U, g = pg_raw(z)  # U and ∇U of the latent target at the current state (carried, as in run_hmc)
    log_w = torch.zeros(n, dtype=torch.float64, device=z.device)
    for k in range(1, len(b)):
        bk = float(b[k])
        ell = -U.to(torch.float64) - flow.q0.log_prob(z.to(torch.float64))  # ln p̃ − ln q at z
        log_w = log_w + float(b[k] - b[k - 1]) * ell
        raw: dict[str, torch.Tensor] = {}

        def pg_stage(y: torch.Tensor, bk: float = bk, raw: dict = raw) -> tuple[torch.Tensor, torch.Tensor]:
            """U_b = ½|y|² + b·(U − ½|y|²) and its gradient; keeps the raw U, ∇U of the last call."""
            Uy, gy = pg_raw(y)
            raw["U"], raw["g"] = Uy, gy
            h = _half_sq(y)
            return h + bk * (Uy - h), y + bk * (gy - y)

        h = _half_sq(z)
        Ub, gb = h + bk * (U - h), z + bk * (g - z)
        # hmc_step's last potential call is at the proposal, so raw holds the proposal's U and ∇U
        z, _, _, prob, acc = hmc_step(z, Ub, gb, pg_stage, eps, n_leapfrog, generator=generator)
        U = torch.where(acc, raw["U"], U)
        g = torch.where(acc.reshape((-1,) + (1,) * (z.dim() - 1)), raw["g"], g)
        accept[k - 1] = float(prob.mean())
    with torch.no_grad():
        x = flow.forward(z)
    return log_w, z.detach(), x, accept


def annealed_importance(flow: Any, n_samples: int, *, stages: int = 16, n_leapfrog: int = 5,
                        step_size: float | None = None, fold: Any = None, batch_size: int = 256,
                        pilot_chains: int = 32, pilot_trajectories: int = 40, target_accept: float = 0.8,
                        generator: torch.Generator | None = None, progress: Progress | None = None
                        ) -> AnnealedDraws:
    """``n_samples`` annealed draws (module docstring) in batches of ``batch_size``.

    ``fold``: the sign fold of the latent samplers (``sampling.fold``: None, "auto" or a number);
    without one the flow's density is q_sym if ``flow.z2`` else q. ``step_size`` None: adapted on
    the pilot run toward ``target_accept``. The flow's parameters are frozen during the run.
    """
    check_annealing(n_samples, stages, n_leapfrog, step_size, batch_size)
    _check_int(pilot_chains, "pilot_chains", 1)
    _check_int(pilot_trajectories, "pilot_trajectories", 1)
    prog = progress if progress is not None else NULL_PROGRESS
    t0 = time.perf_counter()
    b = torch.linspace(0.0, 1.0, int(stages) + 1, dtype=torch.float64)
    with folded(flow, fold, generator) as w_fold, flow.frozen():
        signed = flow.z2 or w_fold is not None
        potential = latent_potential(flow, w_fold)
        pilot = None
        if step_size is None and stages > 0:
            z0 = flow.q0(int(pilot_chains), generator=generator)[0]
            res = run_hmc(potential, z0, n_warmup=int(pilot_trajectories), n_samples=1, step_size=0.1,
                          n_leapfrog=int(n_leapfrog), target_accept=target_accept, generator=generator)
            pilot = float(res.step_size[0])
        eps = pilot if step_size is None else float(step_size)  # None: stages = 0, no moves
        pg_raw = make_potential_and_grad(potential)
        state_potential = latent_potential(flow, w_fold, with_state=True)
        log_ws, zs, xs, accs = [], [], [], []
        left = int(n_samples)
        prog.start("annealed importance sampling", left)
        while left > 0:
            n = min(left, int(batch_size))
            lw, z, x, acc = _anneal_batch(flow, state_potential, pg_raw, b, eps, int(n_leapfrog), n, generator)
            log_ws.append(lw), zs.append(z), xs.append(random_sign(x, generator) if signed else x)
            accs.append(acc * n)
            left -= n
            prog.update(n)
    log_w, z, x = torch.cat(log_ws), torch.cat(zs), torch.cat(xs)
    accept = torch.stack(accs).sum(dim=0) / int(n_samples)
    prog.finish(f"ε = {eps:.3g}, mean acceptance {float(accept.mean()):.2f}" if stages else "")
    return AnnealedDraws(log_w, x, z, eps, int(stages), int(n_leapfrog), accept, pilot, time.perf_counter() - t0,
                         int(stages) * int(n_leapfrog) + (1 if stages else 0), bool(signed))


def annealed_summary(flow: Any, draws: AnnealedDraws, generator: torch.Generator | None = None) -> dict[str, Any]:
    """``log_weight_summary`` of the draws (ln Ẑ/N ± err, ESS/M, k̂, and the mean work per site as
    ``free_energy_per_site``), the settings, and ``observables``: the weighted means ± errors of the
    target's per-sample observables of the final states (``physics.importance.weighted_means``;
    the per-site energy as ``energy_per_site``), with ``deviation_sigma`` from ``target.exact()``.
    An unsymmetrised density of a Z2-symmetric target is flagged as in importance sampling."""
    target = flow.target
    out: dict[str, Any] = flag_mirror(log_weight_summary(draws.log_w, flow.n_sites, target.log_z),
                                      target.z2_symmetric and not draws.signed)
    out.update(n_samples=int(draws.log_w.numel()), stages=draws.stages, n_leapfrog=draws.n_leapfrog,
               step_size=draws.step_size, pilot_step_size=draws.pilot_step_size,
               accept_per_stage=[float(a) for a in draws.accept], seconds=draws.seconds,
               grad_evals_per_draw=draws.grad_evals_per_draw)
    with torch.no_grad():
        per_sample = target.observables(draws.x, generator=generator)
    means = weighted_means(per_sample, draws.log_w, pairs=PAIR_KEYS)
    obs = {("energy_per_site" if k == "energy" else k): v for k, v in means.items()}
    exact = target.exact()
    out["observables"] = obs
    out["deviation_sigma"] = {k: float((v["mean"] - exact[k]) / v["err"]) for k, v in obs.items()
                              if k in exact and v["err"] > 0}
    return out


def format_annealed(s: dict[str, Any]) -> str:
    """The printed line of an ``annealed_summary``: settings, ln Z/N (``format_is_estimate``) and
    the energy per site with its deviation from the exact value."""
    how = (f"{s['stages']} stages x {s['n_leapfrog']} leapfrog, step {s['step_size']:.3g}" if s["stages"]
           else "0 stages: the flow's own weights")
    text = (f"annealed importance sampling ({how}, {s['n_samples']} draws, {s['seconds']:.1f} s): "
            f"{format_is_estimate(s)}")
    e = s["observables"].get("energy_per_site")
    if e is not None:
        dev = s["deviation_sigma"].get("energy_per_site")
        text += f"; e = {e['mean']:.5f} ± {e['err']:.5f}" + ("" if dev is None else f" ({dev:+.1f}σ from exact)")
    return text


