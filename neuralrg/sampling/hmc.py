"""Batched Hamiltonian Monte Carlo with optional blocked (masked) moves and dual averaging.

Conventions:

* state ``x`` is shaped (C, *event_shape): C independent chains (e.g. (C, L, L)); dtype and
  device follow ``x``; randomness comes from an optional ``torch.Generator`` on x's device;
* ``potential(x) -> (C,)`` is the per-chain potential energy U (total, natural-log scale:
  target density ∝ exp(−U)); chains must not interact inside it (∇ of ΣU is taken per chain);
* identity mass matrix, kinetic energy ½|p|² summed over the moved coordinates;
* a ``mask`` (bool or 0/1, shaped event_shape or (C, *event_shape)) restricts a move to the
  masked coordinates: only they get momentum and move, all others stay bit-identical. This is
  an exact HMC move on the conditional distribution, so the target stays invariant;
* one step size (a scalar) is shared by all chains; Metropolis accept/reject is per chain with
  probability min(1, exp(−ΔH)); a non-finite ΔH is a rejection.

The driver ``run_hmc`` carries U and ∇U of the current state between trajectories, so each
trajectory costs exactly ``n_leapfrog`` gradient evaluations per block.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .progress import NULL_PROGRESS, Deadline, Progress

Tensor = torch.Tensor
PotentialFn = Callable[[Tensor], Tensor]
PotentialAndGradFn = Callable[[Tensor], "tuple[Tensor, Tensor]"]
ObserveFn = Callable[[Tensor], "dict[str, Tensor]"]

__all__ = [
    "DualAveraging",
    "HMCResult",
    "make_potential_and_grad",
    "cuda_graphed",
    "kinetic_energy",
    "leapfrog",
    "hmc_step",
    "run_hmc",
]


# ----------------------------------------------------------------------------- validation
def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_step_size(value, name: str = "step_size") -> float:
    """A positive finite scalar (Python number or 0-dim tensor) -> float."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() > 1:
            raise ValueError(f"{name} must be a scalar (float or 0-dim tensor), got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive finite float, got {value!r}")
    return value


def _check_state(x: Tensor, name: str = "x0") -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor shaped (C, *event_shape), got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must be shaped (C, *event_shape) with C >= 1 chains, got {tuple(x.shape)}")


def _check_generator(generator: torch.Generator | None, x: Tensor) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    gd, xd = generator.device, x.device
    if gd.type != xd.type or (gd.index is not None and xd.index is not None and gd.index != xd.index):
        raise ValueError(f"generator must live on x's device {xd}, got a generator on {gd}")


def _prepare_mask(mask, x: Tensor, name: str = "mask") -> Tensor:
    """Validate a mask and return it as a bool tensor on x's device, broadcastable to x.

    Allowed: bool or 0/1 values, shaped event_shape (shared by chains) or (C, *event_shape).
    Every chain must move at least one coordinate.
    """
    event = tuple(x.shape[1:])
    if not isinstance(mask, torch.Tensor):
        try:
            mask = torch.as_tensor(mask)
        except Exception as exc:  # noqa: BLE001 - report as a ValueError on the parameter
            raise ValueError(f"{name} must be a bool or 0/1 tensor, got {type(mask).__name__}") from exc
    shape = tuple(mask.shape)
    if shape == event:
        mask = mask.unsqueeze(0)
    elif shape != tuple(x.shape):
        raise ValueError(f"{name} must be shaped event_shape {event} or (C, *event_shape) {tuple(x.shape)}, "
                         f"got {shape}")
    mask = mask.to(x.device)
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold only bool or 0/1 values (dtype {mask.dtype})")
        mask = mask != 0
    if not bool(mask.reshape(mask.shape[0], -1).any(dim=1).all()):
        raise ValueError(f"{name} selects no coordinate (for some chain); every move needs >= 1 coordinate")
    return mask


def _check_potential_output(U, grad, x: Tensor, source: str) -> None:
    C = x.shape[0]
    if not isinstance(U, torch.Tensor) or tuple(U.shape) != (C,):
        shape = tuple(U.shape) if isinstance(U, torch.Tensor) else type(U).__name__
        raise ValueError(f"{source} must return a per-chain potential shaped ({C},), got {shape}")
    if grad is not None and (not isinstance(grad, torch.Tensor) or grad.shape != x.shape):
        shape = tuple(grad.shape) if isinstance(grad, torch.Tensor) else type(grad).__name__
        raise ValueError(f"{source} must return a gradient shaped like x {tuple(x.shape)}, got {shape}")


def _sync(x: Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


# ----------------------------------------------------------------------------- dual averaging
class DualAveraging:
    """Dual-averaging step-size adaptation (Hoffman & Gelman 2014, Algorithm 5).

    ``adapt(accept_prob)`` takes the acceptance probability of the move just made (a float, or
    a tensor of per-chain probabilities whose mean is used; non-finite entries count as 0) and
    returns the step size for the next move. ``final_step_size`` is the averaged step size
    exp(log ε̄) to freeze after warm-up (the initial step size if ``adapt`` was never called).
    Constants: μ = ln(10 ε0), γ = 0.05, t0 = 10, κ = 0.75.
    """

    def __init__(self, initial_step_size: float, target_accept: float = 0.8, *,
                 gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75) -> None:
        self.initial_step_size = _check_step_size(initial_step_size, "initial_step_size")
        if not (isinstance(target_accept, (int, float)) and 0.0 < float(target_accept) < 1.0):
            raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}")
        if not (gamma > 0 and t0 >= 0 and 0.5 < kappa <= 1.0):
            raise ValueError(f"need gamma > 0, t0 >= 0, kappa in (0.5, 1]; got gamma={gamma}, t0={t0}, "
                             f"kappa={kappa}")
        self.target_accept = float(target_accept)
        self.gamma, self.t0, self.kappa = float(gamma), float(t0), float(kappa)
        self.mu = math.log(10.0 * self.initial_step_size)
        self.reset()

    def reset(self) -> None:
        """Restart the adaptation from the initial step size."""
        self.m = 0
        self.h_bar = 0.0
        self.log_step = math.log(self.initial_step_size)
        self.log_step_bar = 0.0

    def adapt(self, accept_prob: float | Tensor) -> float:
        """Update with one observed acceptance probability; return the next step size."""
        if isinstance(accept_prob, torch.Tensor):
            a = torch.nan_to_num(accept_prob.detach().to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
            a = float(a.mean())
        else:
            a = float(accept_prob)
            a = a if math.isfinite(a) else 0.0
        a = min(max(a, 0.0), 1.0)
        self.m += 1
        w = 1.0 / (self.m + self.t0)
        self.h_bar = (1.0 - w) * self.h_bar + w * (self.target_accept - a)
        # Clamped only to keep exp() finite; the iteration itself never needs it.
        self.log_step = min(max(self.mu - math.sqrt(self.m) / self.gamma * self.h_bar, -500.0), 500.0)
        eta = self.m ** (-self.kappa)
        self.log_step_bar = eta * self.log_step + (1.0 - eta) * self.log_step_bar
        return self.step_size

    @property
    def step_size(self) -> float:
        """Step size to use for the next warm-up move."""
        return math.exp(self.log_step)

    @property
    def final_step_size(self) -> float:
        """Averaged step size exp(log ε̄) to freeze after warm-up."""
        return self.initial_step_size if self.m == 0 else math.exp(self.log_step_bar)


# ----------------------------------------------------------------------------- integrator
def make_potential_and_grad(potential: PotentialFn) -> PotentialAndGradFn:
    """Wrap ``potential(x) -> (C,)`` into ``x -> (U (C,), ∇U shaped like x)`` via autograd.

    No graph survives the call (U and ∇U are detached); parameters of ``potential`` receive
    no gradients. Does not work inside ``torch.inference_mode()``.
    """
    def potential_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            U = potential(xr)
            _check_potential_output(U, None, x, "potential")
            g = torch.autograd.grad(U.sum(), xr, allow_unused=True)[0] if U.requires_grad else None
        return U.detach(), (torch.zeros_like(x) if g is None else g.detach())

    return potential_and_grad


def cuda_graphed(pg: PotentialAndGradFn, x: Tensor, warmup: int = 2) -> PotentialAndGradFn:
    """``pg`` captured once into a CUDA graph for inputs like ``x`` (shape, dtype, device), then replayed.

    A flow's potential on a GPU is launch-bound (hundreds of small kernels per call); a replay is
    one launch. Same values as ``pg`` (same kernels); U and ∇U returned are fresh tensors. Inputs
    of another shape, dtype or device go to ``pg``. Returns ``pg`` itself where ``x`` is not on
    CUDA, and, with a warning, where capture fails (e.g. a potential that synchronises with the
    host). ``pg`` must be deterministic and hold no state that changes between calls.
    """
    if not x.is_cuda:
        return pg
    dev = x.device
    static_x = x.detach().clone()
    try:
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS/cuFFT plans, autograd buffers)
            for _ in range(warmup):
                pg(static_x)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_U, static_grad = pg(static_x)
    except Exception as exc:  # noqa: BLE001 (any capture failure: fall back to eager, said once)
        torch.cuda.synchronize(dev)
        warnings.warn(f"CUDA graph capture of the potential failed ({type(exc).__name__}: {exc}); "
                      f"running it eagerly", RuntimeWarning, stacklevel=2)
        return pg

    def replay(y: Tensor) -> tuple[Tensor, Tensor]:
        if y.shape != static_x.shape or y.dtype != static_x.dtype or y.device != static_x.device:
            return pg(y)
        static_x.copy_(y)
        graph.replay()
        return static_U.clone(), static_grad.clone()

    return replay


def kinetic_energy(p: Tensor) -> Tensor:
    """½|p|² per chain for momenta shaped (C, *event_shape); returns (C,).

    With masked momenta (zero off the mask) this is the kinetic energy of the moved coordinates.
    """
    return 0.5 * p.reshape(p.shape[0], -1).square().sum(dim=1)


def _leapfrog(x: Tensor, p: Tensor, grad: Tensor, pg: PotentialAndGradFn, eps: float, n_steps: int,
              mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def masked(g: Tensor) -> Tensor:
        return g if mask is None else torch.where(mask, g, torch.zeros((), dtype=g.dtype, device=g.device))

    p = p - (0.5 * eps) * masked(grad)
    U = None
    for i in range(n_steps):
        x_new = x + eps * p
        x = x_new if mask is None else torch.where(mask, x_new, x)
        U, grad = pg(x)
        p = p - (eps if i < n_steps - 1 else 0.5 * eps) * masked(grad)
    return x, p, U, grad


def leapfrog(x: Tensor, p: Tensor, grad: Tensor, potential_and_grad: PotentialAndGradFn,
             step_size: float | Tensor, n_steps: int, mask: Tensor | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integrate Hamilton's equations (identity mass) for ``n_steps`` leapfrog steps.

    x, p, grad: position, momentum and ∇U(x), all shaped (C, *event_shape);
    ``potential_and_grad(x) -> (U (C,), ∇U)``. With ``mask`` only masked coordinates are
    updated (x and p elsewhere are returned unchanged). Returns (x, p, U, ∇U) at the end
    point; the returned ∇U is the full (unmasked) gradient. Costs ``n_steps`` evaluations.
    """
    _check_state(x, "x")
    if p.shape != x.shape or grad.shape != x.shape:
        raise ValueError(f"p and grad must be shaped like x {tuple(x.shape)}, got {tuple(p.shape)} and "
                         f"{tuple(grad.shape)}")
    eps = _check_step_size(step_size)
    _check_int(n_steps, "n_steps", 1)
    m = None if mask is None else _prepare_mask(mask, x)
    return _leapfrog(x, p, grad, potential_and_grad, eps, n_steps, m)


def _hmc_step(x: Tensor, U: Tensor, grad: Tensor, pg: PotentialAndGradFn, eps: float, n_leapfrog: int,
              mask: Tensor | None, generator: torch.Generator | None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    C = x.shape[0]
    p = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    if mask is not None:
        p = torch.where(mask, p, torch.zeros((), dtype=p.dtype, device=p.device))
    h0 = U + kinetic_energy(p)
    x1, p1, U1, g1 = _leapfrog(x, p, grad, pg, eps, n_leapfrog, mask)
    dH = U1 + kinetic_energy(p1) - h0
    accept_prob = torch.where(torch.isfinite(dH), torch.exp(torch.clamp(-dH, max=0.0)),
                              torch.zeros((), dtype=dH.dtype, device=dH.device))
    u = torch.rand((C,), dtype=accept_prob.dtype, device=x.device, generator=generator)
    accepted = u < accept_prob
    acc_x = accepted.reshape((C,) + (1,) * (x.dim() - 1))
    return (torch.where(acc_x, x1, x), torch.where(accepted, U1, U), torch.where(acc_x, g1, grad),
            accept_prob, accepted)


def hmc_step(x: Tensor, U: Tensor, grad: Tensor, potential_and_grad: PotentialAndGradFn,
             step_size: float | Tensor, n_leapfrog: int, mask: Tensor | None = None,
             generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC move for every chain: fresh momenta (randn, masked), leapfrog, Metropolis test.

    x (C, *event), U = U(x) (C,), grad = ∇U(x). Returns (x, U, grad, accept_prob (C,),
    accepted (C,) bool) of the new state; rejected chains keep their inputs exactly.
    """
    _check_state(x, "x")
    _check_potential_output(U, grad, x, "U/grad")
    eps = _check_step_size(step_size)
    _check_int(n_leapfrog, "n_leapfrog", 1)
    _check_generator(generator, x)
    m = None if mask is None else _prepare_mask(mask, x)
    return _hmc_step(x, U, grad, potential_and_grad, eps, n_leapfrog, m, generator)


# ----------------------------------------------------------------------------- driver
@dataclass
class HMCResult:
    """Output of :func:`run_hmc`. T = n_samples kept trajectories, S = n_samples·thin
    post-warm-up trajectories, B = number of blocks (1 without ``blocks``), C chains.

    samples: (T, C, *event_shape) kept states, or None unless ``keep_samples``.
    observables: name -> (C, T) values of ``observe`` on the kept states.
    potential: (C, T) U of the kept states.
    accept_prob: (S, B, C) Metropolis acceptance probabilities of every post-warm-up move.
    warmup_accept_prob: (n_warmup, B) chain-mean acceptance probability during warm-up.
    step_size: (B,) float64 final (frozen) step size per block.
    n_grad_evals, n_grad_evals_warmup: batched (all-chain) potential+gradient evaluations,
    total and the part spent in warm-up (includes the initial evaluation).
    warmup_time, sampling_time: wall seconds (CUDA-synchronised).
    x_final: (C, *event_shape) last state, e.g. to continue the chains.
    n_kept: kept trajectories (T; fewer than n_samples when ``partial``: stopped by ``max_time``).
    n_leapfrog: (B,) leapfrog steps per move after warm-up, per block (``n_leapfrog``, or
    ⌈T/ε⌉ with ``trajectory_length``).
    """

    samples: Tensor | None
    observables: dict[str, Tensor]
    potential: Tensor
    accept_prob: Tensor
    warmup_accept_prob: Tensor
    step_size: Tensor
    n_grad_evals: int
    n_grad_evals_warmup: int
    warmup_time: float
    sampling_time: float
    x_final: Tensor
    n_kept: int = 0
    partial: bool = False
    n_leapfrog: list[int] = field(default_factory=list)

    @property
    def mean_accept(self) -> Tensor:
        """(B,) mean post-warm-up acceptance probability per block."""
        return self.accept_prob.mean(dim=(0, 2))


def _check_step_sizes(step_size, n_blocks: int) -> list[float]:
    if isinstance(step_size, (list, tuple)):
        if len(step_size) != n_blocks:
            raise ValueError(f"step_size as a sequence needs one entry per block ({n_blocks}), "
                             f"got {len(step_size)}")
        return [_check_step_size(s) for s in step_size]
    if isinstance(step_size, torch.Tensor) and step_size.dim() == 1 and step_size.numel() == n_blocks > 1:
        return [_check_step_size(s) for s in step_size]
    return [_check_step_size(step_size)] * n_blocks


def n_leapfrog_for(trajectory_length: float | None, step_size: float, n_leapfrog: int = 10) -> int:
    """Leapfrog steps a move takes at step ε: ⌈T/ε⌉ (at least 1) for a trajectory length T,
    ``n_leapfrog`` when T is None (the one rule of every HMC sampler here)."""
    if trajectory_length is None:
        return n_leapfrog
    return max(1, math.ceil(trajectory_length / step_size - 1e-9))


def run_hmc(potential: PotentialFn | None, x0: Tensor, *, n_warmup: int, n_samples: int,
            step_size: float | Tensor | Sequence[float] = 0.1, n_leapfrog: int = 10,
            target_accept: float = 0.8, adapt: bool = True, blocks: Sequence[Tensor] | None = None,
            thin: int = 1, observe: ObserveFn | None = None, generator: torch.Generator | None = None,
            grad_fn: PotentialAndGradFn | None = None, keep_samples: bool = False,
            progress: Progress | None = None, max_time: float | None = None,
            cuda_graph: bool = False, trajectory_length: float | None = None) -> HMCResult:
    """Run C batched HMC chains from ``x0`` (C, *event_shape): warm-up, then sampling.

    One trajectory = one HMC move per block, cycling through ``blocks`` (a list of masks,
    see module docstring) in order; without ``blocks`` every coordinate moves. During the
    ``n_warmup`` trajectories each block's step size is adapted by dual averaging toward
    ``target_accept`` (chain-mean acceptance) if ``adapt``, then frozen at the averaged value.
    Then ``n_samples·thin`` trajectories run and every ``thin``-th state is kept: ``observe(x)``
    (-> dict of (C,) tensors, called under no_grad) and U are recorded, and the states too if
    ``keep_samples``. ``grad_fn(x) -> (U, ∇U)`` replaces autograd through ``potential``
    (then ``potential`` may be None). ``step_size`` is one initial value or one per block.
    ``progress`` hears of every trajectory (stages "warm-up", "sampling"); ``max_time``: wall
    seconds for the sampling phase (after warm-up): the chains then stop after the current
    trajectory, keeping at least 2 (``HMCResult.partial``, ``n_kept``). ``cuda_graph``: on a CUDA
    device, replay the potential and gradient from one captured graph (``cuda_graphed``).
    ``trajectory_length`` T: each move takes ``n_leapfrog_for(T, ε)`` = ⌈T/ε⌉ leapfrog steps at its
    block's current step size ε instead of ``n_leapfrog`` (fixed trajectory length, as Stan's
    ``int_time``: a smaller adapted step then buys more steps, not a shorter move).
    """
    _check_state(x0, "x0")
    _check_int(n_warmup, "n_warmup", 0)
    _check_int(n_samples, "n_samples", 1)
    _check_int(n_leapfrog, "n_leapfrog", 1)
    _check_int(thin, "thin", 1)
    if trajectory_length is not None:
        trajectory_length = _check_step_size(trajectory_length, "trajectory_length")
    if isinstance(target_accept, bool) or not isinstance(target_accept, (int, float)) \
            or not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"target_accept must be a float in (0, 1), got {target_accept!r}")
    if potential is None and grad_fn is None:
        raise ValueError("potential is None: pass a potential callable or grad_fn")
    if potential is not None and not callable(potential):
        raise ValueError(f"potential must be callable, got {type(potential).__name__}")
    if grad_fn is not None and not callable(grad_fn):
        raise ValueError(f"grad_fn must be callable or None, got {type(grad_fn).__name__}")
    if observe is not None and not callable(observe):
        raise ValueError(f"observe must be callable or None, got {type(observe).__name__}")
    _check_generator(generator, x0)
    if blocks is None:
        masks: list[Tensor | None] = [None]
    else:
        if isinstance(blocks, torch.Tensor) or len(blocks) < 1:
            raise ValueError("blocks must be a non-empty list of masks (use [mask] for a single block)")
        masks = [_prepare_mask(m, x0, f"blocks[{i}]") for i, m in enumerate(blocks)]
    n_blocks = len(masks)
    steps = _check_step_sizes(step_size, n_blocks)
    duals = [DualAveraging(s, float(target_accept)) for s in steps] if adapt else None
    if not isinstance(cuda_graph, bool):
        raise ValueError(f"cuda_graph must be true or false, got {cuda_graph!r}")
    pg = grad_fn if grad_fn is not None else make_potential_and_grad(potential)
    if cuda_graph:
        pg = cuda_graphed(pg, x0)

    prog = progress if progress is not None else NULL_PROGRESS
    deadline = Deadline(max_time)
    x = x0.detach().clone()
    C, dev = x.shape[0], x.device
    _sync(x)
    t_start = time.perf_counter()
    U, grad = pg(x)
    _check_potential_output(U, grad, x, "grad_fn" if grad_fn is not None else "potential")
    U, grad = U.detach(), grad.detach()
    bad = ~torch.isfinite(U)
    if bool(bad.any()):
        raise ValueError(f"x0 has a non-finite potential for chains {bad.nonzero().flatten().tolist()[:10]}")
    n_grad = 1

    warm_acc = torch.zeros((n_warmup, n_blocks), dtype=x.dtype, device=dev)
    report = progress is not None
    if n_warmup:
        prog.start("warm-up", n_warmup)
    for it in range(n_warmup):
        for b, mask in enumerate(masks):
            n = n_leapfrog_for(trajectory_length, steps[b], n_leapfrog)
            x, U, grad, a, _ = _hmc_step(x, U, grad, pg, steps[b], n, mask, generator)
            n_grad += n
            warm_acc[it, b] = a.mean()
            if duals is not None:
                steps[b] = duals[b].adapt(a)
        if report:
            prog.update(1, accept=float(warm_acc[it].mean()), step_size=steps[0])
    if duals is not None:
        steps = [d.final_step_size for d in duals]
    if n_warmup:
        prog.finish(f"step size {steps[0]:.4g}")
    n_grad_warmup = n_grad
    n_lf = [n_leapfrog_for(trajectory_length, e, n_leapfrog) for e in steps]
    _sync(x)
    t_warm = time.perf_counter()

    S = n_samples * thin
    accept = torch.empty((S, n_blocks, C), dtype=x.dtype, device=dev)
    pot = torch.empty((C, n_samples), dtype=U.dtype, device=dev)
    samples = torch.empty((n_samples,) + tuple(x.shape), dtype=x.dtype, device=dev) if keep_samples else None
    obs: dict[str, Tensor] = {}
    prog.start("sampling", S)
    deadline.begin()
    acc_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n_kept, done = n_samples, S
    for s in range(S):
        for b, mask in enumerate(masks):
            x, U, grad, a, _ = _hmc_step(x, U, grad, pg, steps[b], n_lf[b], mask, generator)
            n_grad += n_lf[b]
            accept[s, b] = a
        if report:
            acc_sum += accept[s].mean()
            prog.update(1, accept=float(acc_sum) / (s + 1), step_size=steps[0])
        if (s + 1) % thin:
            continue
        k = s // thin
        pot[:, k] = U
        if samples is not None:
            samples[k] = x
        if observe is not None:
            with torch.no_grad():
                values = observe(x)
            if not isinstance(values, dict) or (obs and set(values) != set(obs)):
                raise ValueError("observe must return a dict of (C,) tensors with the same keys every call")
            for name, v in values.items():
                if not isinstance(v, torch.Tensor) or tuple(v.shape) != (C,):
                    shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                    raise ValueError(f"observe()[{name!r}] must be a tensor shaped ({C},), got {shape}")
                if name not in obs:
                    obs[name] = torch.empty((C, n_samples), dtype=v.dtype, device=v.device)
                obs[name][:, k] = v.detach()
        if k >= 1 and k + 1 < n_samples and deadline.expired():
            n_kept, done = k + 1, s + 1
            break
    _sync(x)
    t_end = time.perf_counter()
    partial = n_kept < n_samples
    if partial:
        accept, pot = accept[:done], pot[:, :n_kept]
        obs = {name: v[:, :n_kept] for name, v in obs.items()}
        samples = samples[:n_kept] if samples is not None else None
    prog.finish(f"stopped at the time budget after {n_kept}/{n_samples} kept trajectories" if partial
                else f"acceptance {float(accept.mean()):.3f}")

    return HMCResult(samples=samples, observables=obs, potential=pot, accept_prob=accept,
                     warmup_accept_prob=warm_acc, step_size=torch.tensor(steps, dtype=torch.float64),
                     n_grad_evals=n_grad, n_grad_evals_warmup=n_grad_warmup,
                     warmup_time=t_warm - t_start, sampling_time=t_end - t_warm, x_final=x,
                     n_kept=n_kept, partial=partial, n_leapfrog=n_lf)
