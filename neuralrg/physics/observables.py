"""Ising observables from continuous fields x (improved estimators) or from ±1 spins.

Conventions (``docs/conventions.md``): fields and spins are shaped (B, L, L) on the torus,
N = L², H = −Σ_⟨ij⟩ s_i s_j over the 2N right/down bonds (roll-based, so L = 2 has double
bonds), m = Σ s_i / N. Per-sample moments are per site: ``energy`` = H/N, ``energy2`` =
(H/N)², ``m``, ``m2`` = m², ``m4`` = m⁴ (and ``abs_m`` = |m| from spins).

Given x the spins are independent, P(s_i = +1 | x) = sigmoid(2 x_i), t_i = E[s_i | x] =
tanh x_i, v_i = Var(s_i | x) = sech² x_i. ``conditional_moments`` returns the exact conditional
expectations of those moments (Rao–Blackwellised estimators).

Site-dependent bonds (``docs/conventions.md``, "Couplings"): with bond patterns ``Jx``, ``Jy``
(each (L, L); Jx[i, j] the bond (i, j)–(i, j+1), Jy[i, j] the bond (i, j)–(i+1, j)) the energy is
H = −Σ_b J_b s_i s_j; omitted patterns mean J = 1 (the uniform model, same numbers as before).

Spin-glass overlap: two independent replicas a, b (chains 2i and 2i+1 of a batch) have
q = Σ_i s^a_i s^b_i / N; given (x^a, x^b) the products σ_i = s^a_i s^b_i are independent ±1
with mean τ_i = tanh x^a_i tanh x^b_i, so E[q² | x^a, x^b], E[q⁴ | …] follow from the same
cumulants as m² and m⁴ (``pair_overlap_moments``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ising import bond_sum, log_cosh
from .lattice import check_coupling
from .statistics import blocked_jackknife, integrated_autocorr_time

_PRIMARY = {"energy_per_site": "energy", "m2": "m2"}


def _check_lattice_tensor(x: Tensor, name: str) -> int:
    """Return N = L² for a floating tensor shaped (B, L, L) with L ≥ 2, else ValueError."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor shaped (B, L, L), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != x.shape[-2] or x.shape[-1] < 2:
        raise ValueError(f"{name} must be shaped (B, L, L) with L >= 2, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    return x.shape[-1] * x.shape[-2]


def sample_spins(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw s ~ P(s | x): independent ±1 spins with P(s_i = +1) = sigmoid(2 x_i).

    Same shape, dtype and device as x (B, L, L); ``generator`` must live on x's device.
    """
    _check_lattice_tensor(x, "x")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(u < torch.sigmoid(2.0 * x), one, -one)


def _neighbour_sum(a: Tensor) -> Tensor:
    """Σ over the 4 bond ends of each site (right, left, down, up) of a (B, L, L)."""
    return (torch.roll(a, 1, -1) + torch.roll(a, -1, -1)
            + torch.roll(a, 1, -2) + torch.roll(a, -1, -2))


def _check_bonds(x: Tensor, Jx: Tensor | None, Jy: Tensor | None) -> tuple[Tensor, Tensor] | None:
    """None (uniform J = 1) or both patterns as (L, L) tensors in x's dtype/device."""
    if Jx is None and Jy is None:
        return None
    if Jx is None or Jy is None:
        raise ValueError("give both bond patterns Jx and Jy, or neither (uniform J = 1)")
    L = x.shape[-1]
    out = []
    for name, J in (("Jx", Jx), ("Jy", Jy)):
        J = torch.as_tensor(J, dtype=x.dtype, device=x.device)
        if tuple(J.shape) != (L, L):
            raise ValueError(f"{name} must be shaped ({L}, {L}) like the lattice, got {tuple(J.shape)}")
        out.append(J)
    return out[0], out[1]


def weighted_bond_sum(s: Tensor, Jx: Tensor, Jy: Tensor) -> Tensor:
    """Σ_b J_b s_i s_j over the 2N torus bonds (horizontal Jx, vertical Jy), (B, L, L) → (B,)."""
    return (s * (Jx * torch.roll(s, -1, dims=-1) + Jy * torch.roll(s, -1, dims=-2))).sum(dim=(-2, -1))


def _sum_moments(t: Tensor, v: Tensor, N: int) -> dict[str, Tensor]:
    """E[(M/N)^k], k = 1, 2, 4, of M = Σ_i σ_i for independent ±1 σ_i with mean t_i and variance
    v_i = 1 − t_i²: mean a = Σ t/N and scaled cumulants κ₂ = Σ v, κ₃ = −2 Σ t v, κ₄ = Σ (4v − 6v²)."""
    a = t.mean(dim=(-2, -1))
    k2 = v.sum(dim=(-2, -1)) / N**2
    k3 = -2.0 * (t * v).sum(dim=(-2, -1)) / N**3
    k4 = (v * (4.0 - 6.0 * v)).sum(dim=(-2, -1)) / N**4
    a2 = a * a
    return {"m": a, "m2": a2 + k2, "m4": a2 * a2 + 6.0 * a2 * k2 + 4.0 * a * k3 + k4 + 3.0 * k2 * k2}


def conditional_moments(x: Tensor, Jx: Tensor | None = None, Jy: Tensor | None = None) -> dict[str, Tensor]:
    """Exact E[· | x] of the per-site moments, each shaped (B,), dtype/device of x (B, L, L).

    With s_i = t_i + δ_i (E δ_i = 0, E δ_i² = v_i) the bond sum S = Σ_b J_b s_i s_j has
    E[S|x] = Σ_b J_b t_i t_j and, the linear and quadratic parts in δ being uncorrelated,
    Var(S|x) = Σ_i v_i u_i² + Σ_b J_b P_b v_i v_j with u_i = Σ_{bond ends at i} J_b t_neighbour
    and P_b the summed coupling of all bonds joining the same pair (P_b = J_b, or for L = 2,
    where two bonds join each pair, J_b plus its partner's). ``Jx``, ``Jy``: bond patterns
    (module docstring; None: J = 1). E[M^k | x] for M = Σ s_i follows from the cumulants of a
    sum of independent ±1 variables (``_sum_moments``). Keys: energy (E[H]/N), energy2
    (E[H²]/N²), m, m2, m4.
    """
    N = _check_lattice_tensor(x, "x")
    L = x.shape[-1]
    J = _check_bonds(x, Jx, Jy)
    t = torch.tanh(x)
    v = torch.exp(-2.0 * log_cosh(x))  # sech² x without the cancellation in 1 − t²
    if J is None:
        s_mean = bond_sum(t)
        u = _neighbour_sum(t)
        mult = 2.0 if L == 2 else 1.0
        s_var = (v * u * u).sum(dim=(-2, -1)) + mult * bond_sum(v)
    else:
        jx, jy = J
        s_mean = weighted_bond_sum(t, jx, jy)
        u = (jx * torch.roll(t, -1, -1) + torch.roll(jx * t, 1, -1)
             + jy * torch.roll(t, -1, -2) + torch.roll(jy * t, 1, -2))
        px, py = (jx + torch.roll(jx, -1, -1), jy + torch.roll(jy, -1, -2)) if L == 2 else (jx, jy)
        s_var = (v * u * u).sum(dim=(-2, -1)) + weighted_bond_sum(v, jx * px, jy * py)
    e = -s_mean / N
    return {"energy": e, "energy2": e * e + s_var / N**2, **_sum_moments(t, v, N)}


PAIR_KEYS = ("q2", "q4")
"""The per-sample observables that hold one value per replica pair (2i, 2i+1) (``pair_overlap_moments``)."""


def pair_overlap_moments(x: Tensor) -> dict[str, Tensor]:
    """E[q² | x^a, x^b] and E[q⁴ | …] of the overlap q = Σ s^a s^b / N of replica pairs.

    x (B, L, L) with B even: chain 2i and chain 2i+1 are the replicas of pair i (they must be
    independent draws: independent chains, or independent flow samples). Returns ``q2``, ``q4``
    shaped (B,), entries 2i and 2i+1 both carrying pair i's value (``summarize_overlap`` reads
    the even chains; ``PAIR_KEYS`` names these keys for weighted estimators).
    """
    N = _check_lattice_tensor(x, "x")
    B = x.shape[0]
    if B % 2:
        raise ValueError(f"replica pairs need an even number of chains (2i, 2i+1), got {B}")
    t = torch.tanh(x)
    v = torch.exp(-2.0 * log_cosh(x))
    tau = t[0::2] * t[1::2]
    # Var(σ) = 1 − τ² = v_a + v_b − v_a v_b, without the cancellation at |τ| → 1
    va, vb = v[0::2], v[1::2]
    mom = _sum_moments(tau, va + vb - va * vb, N)
    return {"q2": mom["m2"].repeat_interleave(2), "q4": mom["m4"].repeat_interleave(2)}


def spin_moments(s: Tensor, Jx: Tensor | None = None, Jy: Tensor | None = None) -> dict[str, Tensor]:
    """Per-site moments of ±1 spins s (B, L, L), each (B,): energy = H/N (H = −Σ_b J_b s s; J = 1
    without patterns), energy2, m, m2, m4, abs_m."""
    N = _check_lattice_tensor(s, "s")
    if not bool(((s == 1) | (s == -1)).all()):
        raise ValueError("s must contain only ±1 spins")
    J = _check_bonds(s, Jx, Jy)
    e = -(bond_sum(s) if J is None else weighted_bond_sum(s, *J)) / N
    m = s.mean(dim=(-2, -1))
    m2 = m * m
    return {"energy": e, "energy2": e * e, "m": m, "m2": m2, "m4": m2 * m2, "abs_m": m.abs()}


# ----------------------------------------------------------------------------- ensemble summary
def _as_chains(a: Tensor | np.ndarray, name: str) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be shaped (C, T) (or (T,) for one chain), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def order_parameter(moments: dict[str, Tensor]) -> Tensor:
    """The order parameter per sample from a target's ``observables``: the staggered magnetisation ``ms``
    where the target has one (an antiferromagnet, whose uniform m is a fast mode), else m."""
    return moments["ms"] if "ms" in moments else moments["m"]


def summarize_observables(moments: dict[str, Tensor], K: float, N: int, *,
                          abs_m: Tensor | None = None, c: float = 6.0) -> dict[str, dict]:
    """Ensemble averages with error bars from per-sample moments shaped (C, T).

    ``moments`` needs keys energy, energy2, m2, m4 (per site, as from ``conditional_moments``
    or ``spin_moments``), each (C, T): C independent chains of T steps. A 1-D array is one chain;
    an i.i.d. sample can be passed as (1, M) or (M, 1). ``abs_m`` (C, T) is |m| from spins.

    Primary observables (energy_per_site = ⟨H/N⟩, m2 = ⟨m²⟩, abs_m = ⟨|m|⟩) and the linear
    susceptibility_per_site χ = K N ⟨m²⟩ (finite lattice, zero field) get errors from τ_int
    (Sokal window, constant ``c``; see ``statistics.integrated_autocorr_time``) and entries
    {"mean", "err", "tau_int", "window", "converged"}. Nonlinear quantities
    specific_heat_per_site = K² N (⟨(H/N)²⟩ − ⟨H/N⟩²), binder = 1 − ⟨m⁴⟩/(3⟨m²⟩²) and, with
    abs_m, susceptibility_connected = K N (⟨m²⟩ − ⟨|m|⟩²) get a delete-one-block jackknife
    error (``statistics.blocked_jackknife``): each chain is cut into contiguous blocks of
    ≥ 10·τ_max steps (τ_max the largest τ_int of their inputs; one block per chain when T is
    shorter), blocks of different chains being independent. Their entries are {"mean", "err",
    "block_length", "n_blocks", "converged"}; err is nan with fewer than 2 blocks in all, and
    ``converged`` is False when a τ_int window did not converge (the blocks may then be too
    short).
    """
    K = check_coupling(K)
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"N must be a positive integer (number of sites), got {N!r}")
    if not isinstance(moments, dict):
        raise ValueError(f"moments must be a dict of (C, T) tensors, got {type(moments).__name__}")
    missing = [k for k in ("energy", "energy2", "m2", "m4") if k not in moments]
    if missing:
        raise ValueError(f"moments lacks key(s) {missing}; needs energy, energy2, m2, m4")
    data = {k: _as_chains(moments[k], f"moments[{k!r}]") for k in ("energy", "energy2", "m2", "m4")}
    if abs_m is not None:
        data["abs_m"] = _as_chains(abs_m, "abs_m")
    shape = data["energy"].shape
    for k, a in data.items():
        if a.shape != shape:
            raise ValueError(f"moments[{k!r}] has shape {a.shape}, expected {shape} like 'energy'")
    if shape[0] * shape[1] < 2:
        raise ValueError(f"moments need at least 2 samples, got shape {shape}")

    tau = {k: integrated_autocorr_time(a, c) for k, a in data.items()}
    out: dict[str, dict] = {}
    for name, key in [*_PRIMARY.items(), *([("abs_m", "abs_m")] if abs_m is not None else [])]:
        r = tau[key]
        out[name] = {"mean": r["mean"], "err": r["err"], "tau_int": r["tau"],
                     "window": r["window"], "converged": r["converged"]}
    chi = dict(out["m2"])
    chi["mean"], chi["err"] = K * N * chi["mean"], abs(K) * N * chi["err"]
    out["susceptibility_per_site"] = chi

    out["specific_heat_per_site"] = blocked_jackknife(
        data, ["energy", "energy2"], lambda d: K * K * N * (d["energy2"] - d["energy"] ** 2), tau)
    if abs_m is not None:
        out["susceptibility_connected"] = blocked_jackknife(
            data, ["m2", "abs_m"], lambda d: K * N * (d["m2"] - d["abs_m"] ** 2), tau)
    out["binder"] = blocked_jackknife(data, ["m2", "m4"], lambda d: 1.0 - d["m4"] / (3.0 * d["m2"] ** 2), tau)
    return out


def summarize_overlap(q2: Tensor | np.ndarray, q4: Tensor | np.ndarray, N: int, c: float = 6.0) -> dict[str, dict]:
    """Spin-glass estimates from (C, T) series of ``pair_overlap_moments`` (C even; the pair i
    value is read from chain 2i, so the C/2 pairs are the independent chains of the analysis).

    ``q2`` = ⟨q²⟩ and ``chi_sg`` = N⟨q²⟩ with τ_int errors (entries as ``summarize_observables``'
    primary ones); ``binder_q`` = g = ½(3 − ⟨q⁴⟩/⟨q²⟩²) with the blocked-jackknife error.
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"N must be a positive integer (number of sites), got {N!r}")
    data = {k: _as_chains(a, k) for k, a in (("q2", q2), ("q4", q4))}
    if data["q2"].shape != data["q4"].shape:
        raise ValueError(f"q2 and q4 must have the same shape, got {data['q2'].shape} and {data['q4'].shape}")
    C = data["q2"].shape[0]
    if C % 2:
        raise ValueError(f"overlap series come in replica pairs (chains 2i, 2i+1): need an even number of "
                         f"chains, got {C}")
    data = {k: a[0::2] for k, a in data.items()}
    tau = {k: integrated_autocorr_time(a, c) for k, a in data.items()}
    r = tau["q2"]
    out: dict[str, dict] = {"q2": {"mean": r["mean"], "err": r["err"], "tau_int": r["tau"], "window": r["window"],
                                   "converged": r["converged"]}}
    out["chi_sg"] = dict(out["q2"], mean=N * r["mean"], err=N * r["err"])
    out["binder_q"] = blocked_jackknife(data, ["q2", "q4"], lambda d: 0.5 * (3.0 - d["q4"] / d["q2"] ** 2), tau)
    return out
