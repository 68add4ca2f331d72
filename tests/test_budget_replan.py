"""``budget=``: the run re-sizes itself once from its own step times (``pipelines.budget.BudgetReplan``).

The probe's step time is made wrong on purpose (its ``measure_step_time`` scaled by 4 or by 1/4), and the run
must still end near its budget, with the schedule run to its end, and with the steps it took recorded where a
resume reads them (config.yaml). References: the checkpoint read back with torch.load, the config file read with
OmegaConf, the step arithmetic counted out by hand.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

pl = pytest.importorskip("pytorch_lightning")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import load_ckpt, make_cfg  # noqa: E402

import neuralrg.pipelines.budget as budget  # noqa: E402
from neuralrg.pipelines.budget import BudgetReplan, phase_model_steps, replan_step, steps_with_late_term  # noqa: E402
from neuralrg.pipelines.train import _budget_replan, run_training  # noqa: E402
from neuralrg.training.schedule import build_scheduler, lr_factor  # noqa: E402

torch.set_num_threads(1)
os.environ["WANDB_MODE"] = "disabled"


def _model(phases, objectives=None, eval_s=0.0, t_on=None, late=0.0):
    return {"phases": phases, "objectives": objectives or ["reverse_kl"] * len(phases), "eval_s_per_step": eval_s,
            "latent_fisher_step_s": t_on, "latent_fisher_from": late}


def test_phase_model_steps_counts_scaled_steps_and_an_unscaled_evaluation():
    assert phase_model_steps(30.0, _model([[0, 1.0]], eval_s=0.5), 0) == 20          # 1.5 s a step
    assert phase_model_steps(30.0, _model([[0, 1.0]], eval_s=0.5), 0, scale=2.0) == 12  # 2.5 s a step
    # a data phase to step 10 at 2 s, then 1 s: from step 4, 6 data steps (12 s) then 18 more
    two = _model([[0, 2.0], [10, 1.0]], ["data", "reverse_kl"])
    assert phase_model_steps(30.0, two, 4) == 6 + 18
    assert phase_model_steps(30.0, two, 12) == 30  # past the data phase
    assert phase_model_steps(30.0, two, 4, scale=0.5) == 6 + 48  # 6 s for the data steps, 24 s at 0.5 s
    # the smoothness term from half the run: the same count as the planner's own arithmetic
    late = _model([[0, 1.0]], t_on=3.0, late=0.5)
    assert phase_model_steps(100.0, late, 0) == steps_with_late_term(100.0, [(0, 1.0)], ["reverse_kl"], 0.5, 3.0) == 50
    assert phase_model_steps(100.0, late, 20, scale=0.5) == steps_with_late_term(
        100.0, [(20, 0.5)], ["reverse_kl"], 0.5, 1.5, 20)


def test_replan_step_is_the_end_of_the_warm_up_within_the_run():
    assert replan_step(0, 500, 50) == 50
    assert replan_step(0, 100, 50) == 25      # a quarter of a short run
    assert replan_step(0, 400, 0) == 8        # no warm-up: the shortest timed window
    assert replan_step(300, 500, 50) == 350   # a resumed run counts from its checkpoint
    assert replan_step(0, 20, 50) is None     # too short to time


def test_a_schedule_follows_a_length_that_changes():
    lin = torch.nn.Linear(2, 2)
    length = {"n": 100}
    opt = torch.optim.SGD(lin.parameters(), lr=1.0)
    sched = build_scheduler(opt, name="cosine", total_steps=lambda: length["n"], warmup_steps=10, min_factor=0.01)
    for _ in range(10):
        opt.step()
        sched.step()
    length["n"] = 300
    for _ in range(40):
        opt.step()
        sched.step()
    want = lr_factor(50, name="cosine", total_steps=300, warmup_steps=10, min_factor=0.01)
    assert sched.get_last_lr()[0] == pytest.approx(want)
    assert want > lr_factor(50, name="cosine", total_steps=100, warmup_steps=10, min_factor=0.01)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, total_steps=lambda: 0)


def test_the_predicted_step_time_switches_to_the_smoothness_term_where_it_starts():
    plan = {"steps": 100, "planned_new_steps": 100,
            "phase_model": _model([[0, 2.0], [10, 1.0]], ["data", "reverse_kl"], t_on=3.0, late=0.5)}
    cb = BudgetReplan(plan, deadline=0.0, at_step=8)
    assert [cb.predicted_step_s(s, 100) for s in (0, 9, 10, 49, 50, 99)] == [2.0, 2.0, 1.0, 1.0, 3.0, 3.0]
    assert cb.predicted_step_s(60, 200) == 1.0  # a longer run switches later


def test_a_replan_rewrites_steps_and_keeps_a_resume_header(tmp_path):
    cfg = make_cfg("steps=100", run_dir=tmp_path / "run")
    path = tmp_path / "config.resume-x.yaml"
    path.write_text("# resumed x with overrides: ['budget=1m']\n" + OmegaConf.to_yaml(cfg, resolve=True))
    plan = {"steps": 100, "planned_new_steps": 100, "phase_model": _model([[0, 1.0]])}
    (cb,) = _budget_replan(cfg, plan, 0.0, path)
    assert cb.at_step == min(int(cfg.scheduler.warmup_steps), 25)
    cb.on_change(137)
    text = path.read_text()
    assert text.startswith("# resumed x with overrides: ['budget=1m']\n")
    assert OmegaConf.load(path).steps == 137 and cfg.steps == 137
    assert _budget_replan(cfg, {**plan, "steps": 20, "planned_new_steps": 20}, 0.0, path) == []


def _probe_off_by(monkeypatch, factor: float) -> None:
    real = budget.measure_step_time
    monkeypatch.setattr(budget, "measure_step_time", lambda *a, **k: factor * real(*a, **k))


@pytest.mark.parametrize("factor", [6.0, 1 / 6])
def test_a_budget_run_with_a_wrong_probe_still_fills_its_budget(tmp_path, monkeypatch, factor):
    """The probe says a step takes 6× (or 1/6 of) what it does: without the re-plan the run would stop at a
    sixth of its budget (or be cut off by max_time six times short of its schedule's end). The factor read back
    is not exactly 1/factor: a training step also carries Lightning's per-step work, and the machine's load moves."""
    _probe_off_by(monkeypatch, factor)
    seconds = 12.0
    run = tmp_path / "run"
    cfg = make_cfg(f"budget={seconds:g}s", "eval_every=0", "steps_per_epoch=40", "scheduler.warmup_steps=10",
                   "final_eval_samples=256", run_dir=run)
    s = run_training(cfg)
    plan, replan = s["budget"], s["budget"]["replan"]
    at = replan_step(0, replan["steps_before"], 10)
    assert replan["applied"] and replan["at_step"] == at and replan["timed_steps"] == at - budget.REPLAN_SKIP
    if factor > 1:
        assert replan["scale"] < 0.5 and replan["steps_after"] > 2 * replan["steps_before"]
    else:
        assert replan["scale"] > 2.0 and replan["steps_after"] < 0.5 * replan["steps_before"]
    # the run took the re-planned steps (or max_time, the safety net, cut it), and recorded them
    assert plan["steps"] == replan["steps_after"] == plan["planned_new_steps"]
    assert s["steps"] == plan["steps"] or (plan["stopped_by_max_time"] and s["steps"] < plan["steps"])
    assert OmegaConf.load(run / "config.yaml").steps == plan["steps"]
    used = s["wall_time_s"] + plan["probe_s"]
    assert 0.5 * seconds <= used <= 1.15 * seconds, (used, plan)
    if s["steps"] == plan["steps"]:  # the cosine schedule ran to its end: the last rate is lr · min_factor
        sched = load_ckpt(run / "checkpoints" / "last.ckpt")["lr_schedulers"][0]
        assert sched["last_epoch"] == plan["steps"]
        assert sched["_last_lr"][0] == pytest.approx(float(cfg.optimizer.lr) * float(cfg.scheduler.min_factor))
    assert json.loads((run / "summary.json").read_text())["budget"]["replan"]["steps_after"] == plan["steps"]
    assert math.isfinite(s["gap_per_site"])
