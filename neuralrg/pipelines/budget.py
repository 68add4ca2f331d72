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

The probe times a few steps of a fresh model, and the steps of the run itself can be faster (a probe beside a
busy moment of the machine, first-use costs the warm-up steps did not absorb) or slower. So the run is re-sized
once, early (``BudgetReplan``, ``replan_step``: at the end of the learning-rate warm-up, where the schedule's
factor does not depend on the run's length): the steps it has taken, timed one by one (evaluation steps left
out), give a factor on the probe's step times, and the steps that fit the time left to the budget's deadline
become the run's length (schedule, smoothness-term switch, ``max_steps``, ``config.yaml``). summary.json's
``budget.replan`` says what was measured and done.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from ..analysis.quick import default_sample_count
from ..sampling.importance import evaluate_flow

RESERVE = 0.10
PROBE_SHARE = 0.05  # the probe stops early after this share of the budget (slow steps, loaded machines)
REPLAN_SKIP = 3  # the run's first steps (allocator, first use) are not timed for the re-plan
REPLAN_MIN_CHANGE = 0.02  # a re-plan that moves the length by less than this share (or 2 steps) changes nothing

log = logging.getLogger(__name__)


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


def phase_model_steps(seconds: float, model: dict[str, Any], done_steps: int, scale: float = 1.0) -> int:
    """New optimizer steps from global step ``done_steps`` that fit ``seconds`` under ``model`` (a plan's
    ``phase_model``: [first step, seconds per step] of each objective phase, the objectives, the evaluation's
    seconds per step, and the latent smoothness term's switch and cost per step or None), with every step time
    multiplied by ``scale`` (the evaluation's share is not)."""
    starts = [int(k) for k, _ in model["phases"]]
    phases, objectives = [], []
    for i, (start, t) in enumerate(model["phases"]):
        end = starts[i + 1] if i + 1 < len(starts) else math.inf
        if end <= done_steps:
            continue
        phases.append((max(int(start), done_steps), scale * float(t) + model["eval_s_per_step"]))
        objectives.append(model["objectives"][i])
    t_on = model.get("latent_fisher_step_s")
    if t_on is None:
        return steps_that_fit(seconds, phases)
    return steps_with_late_term(seconds, phases, objectives, model["latent_fisher_from"],
                                scale * t_on + model["eval_s_per_step"], done_steps)


def plan_budget(cfg: DictConfig, budget_s: float, build_module: Callable[[DictConfig], Any],
                done_steps: int = 0) -> dict[str, Any]:
    """The steps that fit ``budget_s`` seconds of training + evaluation (module docstring).

    ``build_module(cfg)`` builds a throw-away ``FlowModule`` for the probe; ``done_steps``: steps
    already in the checkpoint of a resumed run (the plan adds to them). Returns the plan
    (budget_s, device, step_time_s of the first phase, phase_step_times_s {first step: seconds per
    step}, eval_time_per_sample_s, final_eval_s, probe_s, steps, max_time_s, phase_model: what
    ``phase_model_steps`` re-sizes the run with); ValueError if not even one step fits.
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
    t_fisher = (measure_step_time(module, optimizer, device, step=starts[-1], max_seconds=share, fisher=True)
                if smooth else None)
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
    model = {"phases": [[k, t] for k, t in zip(starts, t_steps)], "objectives": objectives,
             "eval_s_per_step": int(cfg.eval_samples) * t_eval / eval_every if eval_every > 0 else 0.0,
             # a term on every k-th step: its extra cost spread over the k steps
             "latent_fisher_step_s": (t_steps[-1] + (t_fisher - t_steps[-1]) / loss_cfg.latent_fisher_every
                                      if smooth else None),
             "latent_fisher_from": loss_cfg.latent_fisher_from}
    steps = phase_model_steps(fit_s, model, done_steps)
    if steps < 1:
        raise ValueError(f"budget={budget_s:.0f} s leaves no time to train: the probe took {probe:.1f} s, a step "
                         f"{t_steps[0]:.3g} s and the final evaluation ~{final_eval:.1f} s; give a larger budget "
                         "or smaller final_eval_samples")
    return {"budget_s": budget_s, "device": str(device), "step_time_s": t_steps[0],
            "phase_step_times_s": dict(zip(starts, t_steps)),
            "latent_fisher_step_time_s": t_fisher, "eval_time_per_sample_s": t_eval,
            "final_eval_s": final_eval, "probe_s": probe, "steps": done_steps + steps,
            "planned_new_steps": steps, "max_time_s": fit_s * (1.0 + RESERVE), "phase_model": model}


def replan_step(done_steps: int, planned_new_steps: int, warmup_steps: int) -> int | None:
    """The global step after which ``BudgetReplan`` re-sizes a run: the end of the learning-rate warm-up, but
    no later than a quarter of the planned steps and no earlier than ``REPLAN_SKIP`` + 5 steps in (None: a run
    too short to time)."""
    window = REPLAN_SKIP + 5
    if planned_new_steps < 4 * window:
        return None
    return done_steps + max(window, min(int(warmup_steps), planned_new_steps // 4))


class BudgetReplan(pl.Callback):
    """Re-size a ``budget=`` run once, after global step ``at_step`` (``replan_step``), from its own step times.

    The steps from ``plan["steps"] − plan["planned_new_steps"]`` + ``REPLAN_SKIP`` to ``at_step`` are timed one by
    one (batch start to batch end; steps that ran an evaluation are left out); their sum over the sum of
    the times the probe predicted for them (``plan["phase_model"]``, the smoothness term where it was on) is a
    factor on every step time, and the run's length becomes ``at_step`` + the steps that then fit until
    ``deadline`` (``time.perf_counter()`` seconds). A change of less than ``REPLAN_MIN_CHANGE`` is not applied.
    Applying it sets the module's ``total_steps`` (the schedule reads it), the trainer's ``max_steps`` and
    ``max_epochs``, ``plan["steps"]`` and ``planned_new_steps``, and calls ``on_change(steps)`` (the run's
    config file). ``plan["replan"]`` records what was measured, whether or not it was applied.
    """

    def __init__(self, plan: dict[str, Any], deadline: float, at_step: int,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.plan, self.deadline, self.at_step, self.on_change = plan, float(deadline), int(at_step), on_change
        self.first = int(plan["steps"]) - int(plan["planned_new_steps"])
        self.measured = 0.0
        self.predicted = 0.0
        self.n_timed = 0
        self._t: float | None = None

    def predicted_step_s(self, step: int, total_steps: int) -> float:
        """The probe's seconds for global step ``step`` of a ``total_steps`` run (no evaluation share): the
        plan's phases, with the smoothness term from where ``fisher_phases`` switches it on."""
        model = self.plan["phase_model"]
        phases = [(int(k), float(t)) for k, t in model["phases"]]
        t_on = model.get("latent_fisher_step_s")
        if t_on is not None:
            phases = fisher_phases(phases, model["objectives"], math.ceil(model["latent_fisher_from"] * total_steps),
                                   float(t_on))
        return next((t for k, t in reversed(phases) if k <= step), phases[0][1])

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._t = time.perf_counter() if trainer.global_step < self.at_step else None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._t is None:
            return
        dt = time.perf_counter() - self._t
        step = trainer.global_step - 1  # the step just taken
        every = int(getattr(pl_module, "eval_every", 0))
        if step >= self.first + REPLAN_SKIP and not (every > 0 and (step + 1) % every == 0):
            self.measured += dt
            self.predicted += self.predicted_step_s(step, int(pl_module.total_steps))
            self.n_timed += 1
        if trainer.global_step == self.at_step and self.n_timed > 0:
            self.replan(trainer, pl_module)

    def replan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        scale = self.measured / self.predicted
        left = self.deadline - time.perf_counter()
        before = int(self.plan["steps"])
        after = self.at_step + phase_model_steps(left, self.plan["phase_model"], self.at_step, scale)
        applied = abs(after - before) > max(2, REPLAN_MIN_CHANGE * before)
        self.plan["replan"] = {"at_step": self.at_step, "timed_steps": self.n_timed,
                               "measured_step_s": self.measured / self.n_timed,
                               "predicted_step_s": self.predicted / self.n_timed, "scale": scale,
                               "seconds_left": left, "steps_before": before, "steps_after": after, "applied": applied}
        log.info("budget: steps %d-%d took %.3g s each, the probe said %.3g s: %s", self.at_step - self.n_timed,
                 self.at_step, self.measured / self.n_timed, self.predicted / self.n_timed,
                 f"{after} steps instead of {before}" if applied else f"{before} steps stay")
        if not applied:
            return
        pl_module.total_steps = after
        trainer.fit_loop.epoch_loop.max_steps = after
        per_epoch = trainer.num_training_batches
        if isinstance(per_epoch, int) and per_epoch > 0:
            trainer.fit_loop.max_epochs = math.ceil(after / per_epoch)
        self.plan["steps"] = after
        self.plan["planned_new_steps"] = after - self.first
        if self.on_change is not None:
            self.on_change(after)


def max_time_string(seconds: float) -> str:
    """Lightning's ``max_time`` "DD:HH:MM:SS" (rounded up to whole seconds)."""
    s = max(1, math.ceil(seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
