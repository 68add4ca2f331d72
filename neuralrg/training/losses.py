"""Training objectives of a flow q against a lattice target p ∝ e^{−E} (pure torch, no Lightning).

* ``reverse_kl``: F_q = mean[ln q(x) + E(x)], x ~ q (mode seeking; the default);
* ``flow_mcmc``: adaptive flow-MCMC (Gabrié, Rotskoff & Vanden-Eijnden, PNAS 2022):
  (1 − w)·reverse KL + w·forward KL, the forward KL being −mean ln q(x) over the states of
  persistent chains on p (``neuralrg.training.chains.FlowMCMCChains``), mode covering;
  w follows a ``WeightSchedule``;
* ``data``: maximum likelihood −mean ln q(x) on samples of p (``TrainingData``: exact Wolff
  samples of the Ising relaxation where Wolff applies, else, or with ``data_source:
  parallel_tempering``, chain states of parallel tempering), for ``pretrain_steps`` steps, then
  ``after`` (reverse_kl or flow_mcmc) takes over (``pretrain_steps: null``: data for the whole
  run); ``data_weight`` w < 1 mixes the reverse KL into the data phase: (1 − w)·reverse KL +
  w·forward KL on the data.

``sign_fold`` (reverse KL only, Z2-symmetric targets): the reverse KL is taken against the folded
target p_φ(x) = 2σ(φ(x))·p(x) with φ odd and learned (``SignFold``), instead of p. Because p is
even, p_φ is normalised and ½[p_φ(x) + p_φ(−x)] = p(x) for every odd φ, so by data processing

    KL(q_sym‖p) ≤ KL(q‖p_φ),   q_sym(x) = ½[q(x) + q(−x)],

at the cost of one flow pass (the Z2-symmetrised loss ``model.z2`` costs two). φ = 0 is the plain
reverse KL, which bounds the Z2 gap loosely (by up to ln 2) for a q that covers one sign; the fold
lets q cover one sign with a smooth edge and gives it no reason to learn both.

``temper`` (reverse-KL steps): an annealed reverse KL against p^s ∝ e^{−s·E}, the inverse temperature
factor s rising linearly from ``initial`` at step 0 to 1 at a fraction ``until`` of the run's steps
(``TemperSchedule``), then 1. p^s with s < 1 lowers every barrier of E by the factor s, so the flow
first learns a broad density that covers the modes, then narrows with it (for frustrated couplings
below the temperature where the plain reverse KL collapses onto few valleys). The logged free energy
and gap stay those of p.

``latent_fisher`` (reverse-KL steps): a smoothness term for latent HMC, λ·E_z|∇_z r(z)|², added to the
loss. r(z) = U(z) − ½|z|² is the residual of latent HMC's potential U(z) = E(g(z)) − ln|det ∂g/∂z|
(− ln 2σ(φ(g(z))) with the sign fold) against the N(0, I) it has for an exact flow; z ~ N(0, I), on
``latent_fisher_batch`` draws. E|∇r|² is the Fisher divergence of the latent image of p from N(0, I)
under q: zero exactly when q = p (or q = p_φ), so it leaves the optimum where it is and penalises the
short-wavelength wiggles of U that cost little KL but set latent HMC's step size (``latent_fisher``).
``latent_fisher_from`` (a fraction of the run's steps) switches the term on late: the reverse KL alone
up to that step, then the sum; ``latent_fisher_every`` = k adds k·λ times the term on every k-th step only
(the same term on average at 1/k of its cost; ``LossConfig.fisher_on``); ``latent_fisher_min_level`` = l
keeps the gradient components of the latents of RG level ≥ l only, the coarse ones (level 0 the finest).
Measured (docs/benchmarks.md): the step grows, but the gap grows with it, however the term is placed;
it is off by default.

All quantities are totals over the lattice (not per site), natural log. ``LossConfig`` validates
the ``loss:`` node of ``conf/train.yaml`` and raises ``ValueError`` naming the bad key.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from ..physics.fold import fold_field, fold_log_weight, fold_phi
from ..sampling.latent import latent_potential
from .chains import check_data_source_name

LOSS_NAMES = ("reverse_kl", "flow_mcmc", "data")
AFTER_NAMES = ("reverse_kl", "flow_mcmc")
SCHEDULE_NAMES = ("constant", "linear")
FOLD_KINDS = ("uniform", "field")

__all__ = ["LOSS_NAMES", "FOLD_KINDS", "WeightSchedule", "TemperSchedule", "LossConfig", "SignFold", "reverse_kl",
           "forward_kl", "mixed_loss", "forward_gap", "latent_fisher"]


def reverse_kl(log_q: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    """mean[ln q(x) + E(x)] over flow samples x (the variational free energy F_q, total)."""
    return (log_q + energy).mean()


def forward_kl(log_q_data: torch.Tensor) -> torch.Tensor:
    """−mean ln q(x) over samples x of p: the forward KL(p‖q) up to the q-independent −H(p)."""
    return -log_q_data.mean()


def mixed_loss(reverse: torch.Tensor | None, forward: torch.Tensor | None, weight: float) -> torch.Tensor:
    """(1 − w)·reverse + w·forward; a term with weight 0 may be None (and is then skipped)."""
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"forward weight must be in [0, 1], got {w}")
    if w < 1.0 and reverse is None:
        raise ValueError(f"reverse-KL term missing with forward weight {w} < 1")
    if w > 0.0 and forward is None:
        raise ValueError(f"forward-KL term missing with forward weight {w} > 0")
    if w == 0.0:
        return reverse
    if w == 1.0:
        return forward
    return (1.0 - w) * reverse + w * forward


class SignFold(nn.Module):
    """The learned odd function φ of the folded target p_φ(x) = 2σ(φ(x))·p(x) (see the module docstring).

    ``uniform``: φ(x) = a·Σᵢ gᵢxᵢ/√N (one parameter along the order parameter: the magnetisation, g = 1,
    or for an antiferromagnet the staggered one: pass ``gauge``, ``physics.fold.order_gauge_tensor``);
    ``field``: φ(x) = Σᵢ wᵢ xᵢ/√N (one weight per site: staggered or disordered order, e.g. the
    antiferromagnet or a glass). Parameters start at zero (φ = 0: the plain reverse KL) in the given
    dtype and device. ``log_weight(x)`` is ln 2σ(φ(x)) per sample, x (B, L, L) → (B,).
    """

    def __init__(self, kind: str, L: int, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None, gauge: torch.Tensor | None = None) -> None:
        super().__init__()
        if kind not in FOLD_KINDS:
            raise ValueError(f"loss.sign_fold must be one of {FOLD_KINDS} or null, got {kind!r}")
        self.kind = kind
        self.L = int(L)
        shape = () if kind == "uniform" else (self.L, self.L)
        self.weight = nn.Parameter(torch.zeros(shape, dtype=dtype, device=device))
        # the order frame of a uniform fold (physics.fold.fold_field); rebuilt from the target, not saved
        self.register_buffer("gauge", None if gauge is None else gauge.to(device=device, dtype=dtype),
                             persistent=False)

    def field(self) -> torch.Tensor:
        """The weight in the target's order frame (``physics.fold.fold_field``): what φ uses."""
        return fold_field(self.weight, self.gauge)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-2:] != (self.L, self.L):
            raise ValueError(f"SignFold built for L = {self.L} got fields of shape {tuple(x.shape[1:])}")

    def phi(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x) per sample, shape (B,); odd in x."""
        self._check(x)
        return fold_phi(x, self.field())

    def log_weight(self, x: torch.Tensor) -> torch.Tensor:
        """ln[2σ(φ(x))] per sample (B,): ln p_φ(x) − ln p(x)."""
        self._check(x)
        return fold_log_weight(x, self.field())


def forward_gap(log_q: torch.Tensor, energy: torch.Tensor, log_z: float) -> torch.Tensor:
    """Estimate of KL(p‖q) = mean[−ln q(x) − E(x)] − ln Z over samples x of p (total, ≥ 0)."""
    return (-log_q - energy).mean() - log_z


def latent_fisher(flow: nn.Module, n: int, fold: torch.Tensor | None = None, min_level: int = 0) -> torch.Tensor:
    """Per-sample |∇_z r(z)|² (total over sites, shape (n,)), z ~ N(0, I), r(z) = U(z) − ½|z|²; with
    ``min_level`` > 0 the sum runs over the latents of RG level ≥ ``min_level`` only (``flow.latent_levels``).

    U is latent HMC's potential (``neuralrg.sampling.latent.latent_potential``): E(g(z)) − ln|det ∂g/∂z|,
    − ln 2σ(φ(g(z))) with a sign-fold field ``fold`` (``SignFold.field()``, trainable: its gradient flows),
    or the q_sym potential for a Z2-symmetrised flow. Built with ``create_graph``, so its gradient reaches
    the flow's parameters (one double backward through the flow)."""
    z, _ = flow.q0(int(n))
    z.requires_grad_(True)
    r = latent_potential(flow, fold)(z) - 0.5 * z.pow(2).flatten(1).sum(1)
    (grad,) = torch.autograd.grad(r.sum(), z, create_graph=True)
    if min_level > 0:
        grad = grad[:, flow.latent_levels >= min_level]
    return grad.pow(2).flatten(1).sum(1)


def _check_int(value: Any, name: str, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"loss.{name} must be an integer >= {minimum}"
                         f"{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, lo: float, hi: float, *, lo_open: bool = False,
                 hi_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ValueError(f"loss.{name} must be a number in {rng}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class WeightSchedule:
    """The forward-KL weight w against the global optimizer step.

    ``constant``: w = ``final`` always. ``linear``: w = ``initial`` up to step ``start``, then a
    linear ramp to ``final`` at step ``end``, constant afterwards.
    """

    name: str = "constant"
    final: float = 0.5
    initial: float = 0.0
    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise ValueError(f"loss.schedule.name must be one of {SCHEDULE_NAMES}, got {self.name!r}")
        _check_float(self.final, "forward_weight", 0.0, 1.0)
        _check_float(self.initial, "schedule.initial", 0.0, 1.0)
        _check_int(self.start, "schedule.start", 0)
        _check_int(self.end, "schedule.end", 0)
        if self.name == "linear" and self.end <= self.start:
            raise ValueError(f"loss.schedule: a linear ramp needs end > start, got start={self.start}, "
                             f"end={self.end}")

    def __call__(self, step: int) -> float:
        if self.name == "constant" or step >= self.end:
            return self.final
        if step <= self.start:
            return self.initial
        frac = (step - self.start) / (self.end - self.start)
        return self.initial + frac * (self.final - self.initial)


@dataclass(frozen=True)
class TemperSchedule:
    """The factor s of the tempered reverse KL (p^s) against the global step: ``initial`` at step 0,
    a linear ramp to 1 at step ``until``·total_steps, 1 afterwards. ``initial`` = 1: no tempering."""

    initial: float = 1.0
    until: float = 0.5

    def __post_init__(self) -> None:
        _check_float(self.initial, "temper.initial", 0.0, 1.0, lo_open=True)
        _check_float(self.until, "temper.until", 0.0, 1.0, lo_open=True)

    def __call__(self, step: int, total_steps: int) -> float:
        end = self.until * total_steps
        if self.initial == 1.0 or step >= end:
            return 1.0
        return self.initial + (1.0 - self.initial) * step / end


@dataclass(frozen=True)
class LossConfig:
    """The ``loss:`` node of ``conf/train.yaml`` (see there for each key's meaning)."""

    name: str = "reverse_kl"
    # flow_mcmc
    forward_weight: float = 0.5
    schedule: dict[str, Any] = field(default_factory=lambda: {"name": "constant"})
    n_chains: int = 256
    local_steps: int = 2
    n_leapfrog: int = 5
    step_size: float = 0.05
    target_accept: float = 0.8
    adapt_steps: int = 200
    burn_in: int = 10
    # data
    data_samples: int = 4096
    data_chains: int = 64
    data_sweep_spacing: int = 2
    data_warmup_sweeps: int = 20
    data_batch_size: int | None = None
    data_epochs: float | None = None
    pretrain_steps: int | None = None
    data_weight: float = 1.0
    data_source: str = "auto"
    data_settings: dict[str, Any] | None = None
    after: str = "reverse_kl"
    # reverse KL against the sign-folded target (Z2-symmetric targets)
    sign_fold: str | None = None
    # annealed reverse KL against p^s, s from temper.initial to 1 over the first temper.until of the run
    temper: dict[str, Any] | None = None
    # λ of the latent smoothness term λ·E|∇_z r(z)|² (``latent_fisher``), on latent_fisher_batch draws
    latent_fisher: float = 0.0
    latent_fisher_batch: int = 64
    latent_fisher_from: float = 0.0  # ... from this fraction of the run's steps on
    latent_fisher_every: int = 1  # ... on every k-th step, k·λ
    latent_fisher_min_level: int = 0  # ... over the latents of RG level >= this

    def __post_init__(self) -> None:
        if self.name not in LOSS_NAMES:
            raise ValueError(f"loss.name must be one of {LOSS_NAMES}, got {self.name!r}")
        if self.sign_fold is not None:
            if self.sign_fold not in FOLD_KINDS:
                raise ValueError(f"loss.sign_fold must be one of {FOLD_KINDS} or null, got {self.sign_fold!r}")
            if self.name != "reverse_kl":
                raise ValueError(f"loss.sign_fold folds the reverse KL: it needs loss.name=reverse_kl, "
                                 f"got {self.name!r} (add loss.sign_fold=null; the ising8_critical, demo and "
                                 f"ising16_critical presets set loss.sign_fold=uniform)")
        check_data_source_name(self.data_source)
        if self.data_settings is not None and not isinstance(self.data_settings, dict):
            raise ValueError(f"loss.data_settings must be null or a mapping of parallel tempering's settings, "
                             f"got {self.data_settings!r}")
        if self.after not in AFTER_NAMES:
            raise ValueError(f"loss.after must be one of {AFTER_NAMES}, got {self.after!r}")
        _check_float(self.forward_weight, "forward_weight", 0.0, 1.0)
        _check_float(self.data_weight, "data_weight", 0.0, 1.0, lo_open=True)
        if not isinstance(self.schedule, dict):
            raise ValueError(f"loss.schedule must be a mapping, got {self.schedule!r}")
        self.weight_schedule()  # validates
        if self.temper is not None:
            self.temper_schedule()
            if self.name == "flow_mcmc" or (self.name == "data" and self.after != "reverse_kl"):
                raise ValueError("loss.temper tempers the reverse-KL steps: it needs loss.name=reverse_kl (or data "
                                 f"with loss.after=reverse_kl), got loss.name={self.name!r}")
        _check_float(self.latent_fisher, "latent_fisher", 0.0, math.inf, hi_open=True)
        if self.latent_fisher > 0 and (self.name == "flow_mcmc" or (self.name == "data" and self.after != "reverse_kl")):
            raise ValueError("loss.latent_fisher is added to the reverse-KL steps: it needs loss.name=reverse_kl (or "
                             f"data with loss.after=reverse_kl), got loss.name={self.name!r}")
        _check_float(self.latent_fisher_from, "latent_fisher_from", 0.0, 1.0, hi_open=True)
        for name, lo in (("n_chains", 2), ("latent_fisher_batch", 1), ("latent_fisher_every", 1),
                         ("latent_fisher_min_level", 0), ("local_steps", 0), ("n_leapfrog", 1),
                         ("adapt_steps", 0), ("burn_in", 0), ("data_samples", 2), ("data_chains", 1), ("data_sweep_spacing", 1),
                         ("data_warmup_sweeps", 1)):
            _check_int(getattr(self, name), name, lo)
        _check_float(self.step_size, "step_size", 0.0, math.inf, lo_open=True, hi_open=True)
        _check_float(self.target_accept, "target_accept", 0.0, 1.0, lo_open=True, hi_open=True)
        _check_int(self.data_batch_size, "data_batch_size", 2, allow_none=True)
        _check_int(self.pretrain_steps, "pretrain_steps", 0, allow_none=True)
        if self.data_epochs is not None:
            _check_float(self.data_epochs, "data_epochs", 0.0, math.inf, lo_open=True, hi_open=True)
            if self.pretrain_steps is not None:
                raise ValueError("loss.data_epochs and loss.pretrain_steps exclude each other: give one")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "LossConfig":
        """Build from a plain mapping; unknown keys raise ``ValueError``."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown loss setting(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def weight_schedule(self) -> WeightSchedule:
        s = dict(self.schedule)
        unknown = sorted(set(s) - {"name", "initial", "start", "end"})
        if unknown:
            raise ValueError(f"unknown loss.schedule setting(s) {unknown}; known: name, initial, start, end")
        return WeightSchedule(name=s.get("name", "constant"), final=self.forward_weight,
                              initial=s.get("initial", 0.0), start=s.get("start", 0), end=s.get("end", 0))

    def temper_schedule(self) -> TemperSchedule:
        """The tempering of the reverse KL (s = 1 always without ``temper``)."""
        if self.temper is None:
            return TemperSchedule()
        if not isinstance(self.temper, dict):
            raise ValueError(f"loss.temper must be null or a mapping {{initial, until}}, got {self.temper!r}")
        unknown = sorted(set(self.temper) - {"initial", "until"})
        if unknown:
            raise ValueError(f"unknown loss.temper setting(s) {unknown}; known: initial, until")
        return TemperSchedule(**self.temper)

    def fisher_on(self, step: int, total_steps: int) -> bool:
        """Whether global step ``step`` of a ``total_steps`` run adds the latent smoothness term."""
        return (self.latent_fisher > 0 and step >= self.latent_fisher_from * total_steps
                and step % self.latent_fisher_every == 0)

    def data_steps(self, batch_size: int) -> int | None:
        """Optimizer steps of the data phase (None: the whole run)."""
        if self.name != "data":
            return 0
        if self.data_epochs is not None:
            return max(1, math.ceil(self.data_epochs * self.data_samples / self.data_batch(batch_size)))
        return self.pretrain_steps

    def data_batch(self, batch_size: int) -> int:
        return int(self.data_batch_size or batch_size)

    def objective(self, step: int, batch_size: int) -> str:
        """The objective of global step ``step``: "data", "reverse_kl" or "flow_mcmc"."""
        if self.name != "data":
            return self.name
        n = self.data_steps(batch_size)
        return "data" if n is None or step < n else self.after

    @property
    def uses_chains(self) -> bool:
        return self.name == "flow_mcmc" or (self.name == "data" and self.after == "flow_mcmc")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
