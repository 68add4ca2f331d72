"""``train.py budget=10m``: size the run (steps, hence the learning-rate schedule) to a wall-clock budget.

``plan_budget`` measures one optimizer step of the configured objective on the training device
(a few untimed warm-up steps, then timed probe steps of a throw-away copy of the model,
CUDA-synchronised) and the cost per evaluation sample, then solves

    budget·(1 − reserve) − probe − final evaluation = steps · (t_step + eval_samples·t_eval / eval_every)

for ``steps`` (a ``loss.name=data`` run makes its data set inside the probe, so the probe's time
counts it; the run then reuses that set, ``TrainingData``). ``reserve`` (10 %) covers Lightning's
set-up, checkpoints and figures. A run whose
objective changes part-way (``loss.name=data`` with a data phase, then ``loss.after``) is timed in
both phases and the steps are counted phase by phase. So are the steps with the latent smoothness term
(``loss.latent_fisher``: timed with and without it), switched on at a fraction of the run
(``latent_fisher_from``, a step that moves with the run's length) on every k-th step (``latent_fisher_every``):
``fisher_phases``. ``trainer.max_time`` (the fit's share of the
budget) is the safety net.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..analysis.quick import default_sample_count
from ..sampling.importance import evaluate_flow

RESERVE = 0.10
PROBE_SHARE = 0.05  # the probe stops early after this share of the budget (slow steps, loaded machines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_device(cfg: DictConfig) -> torch.device:
    """The device Lightning will train on (single device): cuda when the accelerator allows it and one is present."""
    acc = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    return torch.device("cuda") if acc in ("auto", "gpu", "cuda") and torch.cuda.is_available() else torch.device("cpu")


def measure_step_time(module: Any, optimizer: torch.optim.Optimizer, device: torch.device, step: int = 0,
                      warmup: int = 2, probe: int = 5, max_seconds: float = float("inf"),
                      fisher: bool | None = None) -> float:
    """Seconds per optimizer step of ``module`` (a ``FlowModule``) on ``device``, with the loss of
    global step ``step`` (``FlowModule.step_loss``: the objective configured for that step; ``fisher``
    forces the latent smoothness term on or off):
    ``warmup`` untimed steps (allocator, kernels, a data set or chains made on first use), then the
    mean of ``probe`` timed ones; after ``max_seconds`` each phase stops early (at least one untimed
    and one timed step)."""
    def one() -> None:
        loss = module.step_loss(step, fisher)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.trained_parameters(), 10.0)
        optimizer.step()

    t_start = time.perf_counter()
    for _ in range(warmup):
        one()
        if time.perf_counter() - t_start > max_seconds / 2:
            break
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    while n < probe:
        one()
        n += 1
        _sync(device)
        if time.perf_counter() - t_start > max_seconds:
            break
    return (time.perf_counter() - t0) / n


def objective_phases(module: Any, done_steps: int = 0) -> list[int]:
    """First global steps of the objective phases a run from ``done_steps`` goes through: [done_steps],
    plus the step where a data phase hands over to ``loss.after`` if that comes later."""
    cfg, batch = module.loss_cfg, int(module.batch_size)
    switch = cfg.data_steps(batch)
    if switch and switch > done_steps and cfg.objective(switch, batch) != cfg.objective(done_steps, batch):
        return [done_steps, int(switch)]
    return [done_steps]


def steps_that_fit(seconds: float, phases: list[tuple[int, float]]) -> int:
    """Optimizer steps that fit ``seconds``, given ``phases`` = [(first step, seconds per step), ...]
    in increasing order of first step (the last phase lasts to the end of the run)."""
    n, left = 0, seconds
    for i, (start, per) in enumerate(phases):
        length = phases[i + 1][0] - start if i + 1 < len(phases) else math.inf
        k = min(length, math.floor(max(left, 0.0) / per))
        n, left = n + int(k), left - k * per
        if k < length:
            break
    return n


def fisher_phases(phases: list[tuple[int, float]], objectives: list[str], fisher_start: int,
                  t_fisher: float) -> list[tuple[int, float]]:
    """``phases`` ([(first step, seconds per step), ...], objectives beside them) with the reverse-KL steps from
    ``fisher_start`` on at ``t_fisher`` seconds each (the latent smoothness term switched on there)."""
    out: list[tuple[int, float]] = []
    for i, ((start, per), objective) in enumerate(zip(phases, objectives)):
        end = phases[i + 1][0] if i + 1 < len(phases) else math.inf
        if objective != "reverse_kl" or fisher_start >= end:
            out.append((start, per))
            continue
        if fisher_start > start:
            out.append((start, per))
        out.append((max(start, fisher_start), t_fisher))
    return out


def steps_with_late_term(seconds: float, phases: list[tuple[int, float]], objectives: list[str], late: float,
                         t_fisher: float, done_steps: int = 0) -> int:
    """The longest run that fits ``seconds`` when its reverse-KL steps from the fraction ``late`` of the whole
    run on (global step ⌈late·(done_steps + new steps)⌉) cost ``t_fisher`` each (``fisher_phases``): new steps.
    A longer run moves the switch later and so fits more steps: from the run without the term (an upper
    bound) the count only falls, to the first count that fits."""
    steps = steps_that_fit(seconds, phases)
    while steps > 0:
        fits = steps_that_fit(seconds, fisher_phases(phases, objectives, math.ceil(late * (done_steps + steps)),
                                                     t_fisher))
        if fits >= steps:
            break
        steps = fits
    return steps


def plan_budget(cfg: DictConfig, budget_s: float, build_module: Callable[[DictConfig], Any],
                done_steps: int = 0) -> dict[str, Any]:
    """The steps that fit ``budget_s`` seconds of training + evaluation (module docstring).

    ``build_module(cfg)`` builds a throw-away ``FlowModule`` for the probe; ``done_steps``: steps
    already in the checkpoint of a resumed run (the plan adds to them). Returns the plan
    (budget_s, device, step_time_s of the first phase, phase_step_times_s {first step: seconds per
    step}, eval_time_per_sample_s, final_eval_s, probe_s, steps, max_time_s); ValueError if not
    even one step fits.
    """
    t_start = time.perf_counter()
    device = training_device(cfg)
    module = build_module(cfg).to(device)
    module.flow.train()
    optimizer = instantiate(cfg.optimizer)(module.trained_parameters())
    starts = objective_phases(module, done_steps)
    loss_cfg = module.loss_cfg
    smooth = loss_cfg.latent_fisher > 0  # the latent smoothness term: steps timed without it and (last phase) with it
    share = PROBE_SHARE * budget_s / (len(starts) + smooth)
    t_steps = [measure_step_time(module, optimizer, device, step=k, max_seconds=share, fisher=False if smooth else None)
               for k in starts]
    if smooth:
        t_fisher = measure_step_time(module, optimizer, device, step=starts[-1], max_seconds=share, fisher=True)
        objectives = [loss_cfg.objective(k, int(module.batch_size)) for k in starts]
    n_eval = 512
    module.flow.eval()
    _sync(device)
    t0 = time.perf_counter()
    evaluate_flow(module.flow, n_eval)
    _sync(device)
    t_eval = (time.perf_counter() - t0) / n_eval
    flow = module.flow
    passes = 2 if (not flow.z2 and flow.target.z2_symmetric) else 1  # final_evaluation's z2_eval
    final_eval = passes * int(cfg.final_eval_samples) * t_eval
    if flow.config.get("kind") == "mera":  # final_evaluation's RG figures: two inverse passes, about
        final_eval += 2 * default_sample_count(flow.n_sites) * t_eval
    del module, optimizer
    probe = time.perf_counter() - t_start
    fit_s = budget_s * (1.0 - RESERVE) - probe - final_eval
    eval_every = int(cfg.eval_every)
    per_eval = int(cfg.eval_samples) * t_eval / eval_every if eval_every > 0 else 0.0
    phases = [(k, t + per_eval) for k, t in zip(starts, t_steps)]
    if smooth:  # a term on every k-th step: its extra cost spread over the k steps
        t_on = t_steps[-1] + (t_fisher - t_steps[-1]) / loss_cfg.latent_fisher_every
        steps = steps_with_late_term(fit_s, phases, objectives, loss_cfg.latent_fisher_from, t_on + per_eval,
                                     done_steps)
    else:
        steps = steps_that_fit(fit_s, phases)
    if steps < 1:
        raise ValueError(f"budget={budget_s:.0f} s leaves no time to train: the probe took {probe:.1f} s, a step "
                         f"{t_steps[0]:.3g} s and the final evaluation ~{final_eval:.1f} s; give a larger budget "
                         "or smaller final_eval_samples")
    return {"budget_s": budget_s, "device": str(device), "step_time_s": t_steps[0],
            "phase_step_times_s": dict(zip(starts, t_steps)),
            "latent_fisher_step_time_s": t_fisher if smooth else None, "eval_time_per_sample_s": t_eval,
            "final_eval_s": final_eval, "probe_s": probe, "steps": done_steps + steps,
            "planned_new_steps": steps, "max_time_s": fit_s * (1.0 + RESERVE)}


def max_time_string(seconds: float) -> str:
    """Lightning's ``max_time`` "DD:HH:MM:SS" (rounded up to whole seconds)."""
    s = max(1, math.ceil(seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
