"""Independence Metropolis with the flow as proposal, and importance weights.

Log-weights are log w = log p̃(x) − log q(x) (unnormalised target, natural log). The chain
accepts proposal x' from state x with probability min(1, w(x')/w(x)); exact for any q with
full support. A proposal with a non-finite log-weight is always rejected; a chain whose start
has one leaves it at the first finite proposal.
"""
from __future__ import annotations

import torch


def independence_metropolis(log_w: torch.Tensor, generator: torch.Generator | None = None,
                            uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run independence-Metropolis chains through a sequence of proposals.

    log_w: (C, T) log-weights of T proposals for each of C chains (a 1-D input is one chain);
    the chain starts at proposal 0. Step t ≥ 1 accepts proposal t iff
    u[c, t] < w(proposal t) / w(current), with u uniform in [0, 1): drawn from ``generator``,
    or the given ``uniforms`` shaped like log_w (column 0 unused). Returns (index (C, T) long:
    which proposal each chain sits on after step t; accepted (C, T) bool, accepted[:, 0] = True).
    """
    if not isinstance(log_w, torch.Tensor) or not log_w.is_floating_point():
        raise ValueError(f"log_w must be a floating torch.Tensor shaped (C, T), got {type(log_w).__name__}")
    if log_w.dim() == 1:
        u1 = None if uniforms is None else uniforms[None]
        idx, acc = independence_metropolis(log_w[None], generator, u1)
        return idx[0], acc[0]
    if log_w.dim() != 2 or log_w.shape[0] < 1 or log_w.shape[1] < 1:
        raise ValueError(f"log_w must be shaped (C, T) with C, T >= 1, got {tuple(log_w.shape)}")
    C, T = log_w.shape
    if uniforms is None:
        uniforms = torch.rand((C, T), dtype=log_w.dtype, device=log_w.device, generator=generator)
    elif uniforms.shape != log_w.shape:
        raise ValueError(f"uniforms must be shaped like log_w {tuple(log_w.shape)}, got {tuple(uniforms.shape)}")
    log_u = torch.log(uniforms.to(log_w))
    index = torch.zeros((C, T), dtype=torch.long, device=log_w.device)
    accepted = torch.zeros((C, T), dtype=torch.bool, device=log_w.device)
    accepted[:, 0] = True
    neg_inf = torch.full_like(log_w[:, 0], -torch.inf)
    cur = torch.where(torch.isfinite(log_w[:, 0]), log_w[:, 0], neg_inf)
    cur_idx = torch.zeros(C, dtype=torch.long, device=log_w.device)
    for t in range(1, T):
        prop = log_w[:, t]
        acc = torch.isfinite(prop) & (log_u[:, t] < prop - cur)
        cur = torch.where(acc, prop, cur)
        cur_idx = torch.where(acc, torch.full_like(cur_idx, t), cur_idx)
        index[:, t] = cur_idx
        accepted[:, t] = acc
    return index, accepted


def metropolis_acceptance(log_w: torch.Tensor, generator: torch.Generator | None = None) -> float:
    """Fraction of accepted moves (excluding the start) of independence-Metropolis chains
    through log_w (C, T) or (T,)."""
    _, acc = independence_metropolis(log_w, generator)
    acc = acc if acc.dim() == 2 else acc[None]
    if acc.shape[1] < 2:
        raise ValueError("log_w needs at least 2 proposals per chain to measure acceptance")
    return float(acc[:, 1:].to(torch.float64).mean())
