"""Variational free-energy gap against wall-clock training time, through the real training path.

    python benchmarks/train_quality.py --L 8  --minutes 1 2 5
    python benchmarks/train_quality.py --L 16 --minutes 1 2 5 15
    python benchmarks/train_quality.py --overhead            # Lightning vs a plain PyTorch loop
    python benchmarks/train_quality.py --L 8 --minutes 2 -- model.hidden=16 batch_size=512   # any train.yaml override

The config is ``conf/train.yaml`` with ``experiment=ising{L}_critical`` plus the overrides. The
number of optimizer steps is chosen from a short timing probe so that the learning-rate schedule
spans the whole budget; at each mark (training time, evaluations excluded) the flow is evaluated
on ``--eval-samples`` fresh samples: gap per site (F_q/N + ln Z_x/N), relative error against the
continuous ln Z_x/N, and the same for the Z2-symmetrised density; at the last mark also the
RG-organisation figures (R²(m | top 1, 2 levels) on flow samples, response-radius growth). Prints a table and writes
benchmarks/results/train_quality_L{L}.json; the run directory (with checkpoints) is kept.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from neuralrg.analysis.quick import format_rg, quick_rg_figures
from neuralrg.sampling.importance import evaluate_flow
from neuralrg.training.data import StepIndices
from neuralrg.pipelines.budget import measure_step_time, objective_phases, steps_that_fit, training_device
from neuralrg.pipelines.train import build_module

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


class WallClockMarks(pl.Callback):
    """Evaluate at training-time marks (seconds; evaluation time excluded); stop after the last."""

    def __init__(self, marks_s: list[float], eval_samples: int) -> None:
        self.marks = sorted(marks_s)
        self.eval_samples = eval_samples
        self.records: list[dict] = []
        self.eval_time = 0.0
        self.t0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def training_time(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_time

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, force: bool = False) -> None:
        if not self.marks or (self.training_time() < self.marks[0] and not force):
            return
        mark = self.marks.pop(0)
        t_train = self.training_time()
        t = time.perf_counter()
        flow = pl_module.flow.eval()
        rec = {"minutes": mark / 60, "training_s": t_train, "step": trainer.global_step,
               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        trained_z2 = flow.z2  # model.z2=true trains the symmetrised density: leave it as it was
        flow.z2 = False
        res = evaluate_flow(flow, self.eval_samples)
        flow.z2 = True
        sym = evaluate_flow(flow, self.eval_samples)
        flow.z2 = trained_z2
        flow.train()
        for k in ("free_energy_per_site", "free_energy_per_site_err", "gap_per_site", "relative_error",
                  "ess_fraction", "metropolis_acceptance"):
            rec[k] = res[k]
        rec["z2_gap_per_site"] = sym["gap_per_site"]
        rec["z2_relative_error"] = sym["relative_error"]
        rec["z2_ess_fraction"] = sym["ess_fraction"]
        rg = ""
        if not self.marks:  # the last mark: the RG-organisation figures beside gap and ESS (issue 19)
            rec["rg"] = quick_rg_figures(flow)
            rg = "  " + format_rg(rec["rg"])
        self.records.append(rec)
        print(f"  {rec['minutes']:5.1f} min  step {rec['step']:6d}  gap/N {rec['gap_per_site']:.5f} "
              f"± {rec['free_energy_per_site_err']:.5f}  rel {rec['relative_error']:.2e}  "
              f"Z2 gap/N {rec['z2_gap_per_site']:.5f}  ESS/M {rec['ess_fraction']:.3f} (Z2 {rec['z2_ess_fraction']:.3f}){rg}",
              flush=True)
        self.eval_time += time.perf_counter() - t
        if not self.marks:
            trainer.should_stop = True


def compose_cfg(L: int, overrides: list[str], run_dir: Path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"experiment=ising{L}_critical", "logger=none",
                                           "callbacks=minimal", f"paths.run_dir={run_dir}", *overrides])


def probe_step_seconds(cfg) -> list[tuple[int, float]]:
    """[(first step, seconds per step)] of each objective phase of the run (one phase unless a data
    phase hands over to another objective), on the device training will use, each after 5 untimed
    warm-up steps (on a GPU the first steps build FFT plans and fill the allocator's cache)."""
    module = build_module(cfg)
    device = training_device(cfg)
    module.to(device)
    opt = instantiate(cfg.optimizer)(module.trained_parameters())
    return [(k, measure_step_time(module, opt, device, step=k, warmup=5, probe=5)) for k in objective_phases(module)]


def run_quality(L: int, minutes: list[float], overrides: list[str], eval_samples: int, threads: int,
                tag: str = "") -> dict:
    torch.set_num_threads(threads)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run_dir = RESULTS / "runs" / f"L{L}{tag}_{stamp}_{os.getpid()}"
    cfg = compose_cfg(L, overrides, run_dir)
    phases = probe_step_seconds(cfg)
    step_s = phases[0][1]
    budget = 60 * max(minutes)
    steps = max(10, steps_that_fit(budget / 1.04, phases))  # Lightning and checkpoint overhead margin
    OmegaConf.set_struct(cfg, False)
    cfg.steps = steps
    cfg.eval_every = max(100, steps // 20)
    cfg.steps_per_epoch = cfg.eval_every
    probe_ms = " then ".join(f"{1000 * t:.1f}" for _, t in phases)
    print(f"L = {L}: probe {probe_ms} ms/step -> {steps} steps for {max(minutes)} min; run dir {run_dir}")
    pl.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    marks = WallClockMarks([60 * m for m in minutes], eval_samples)
    ckpt = instantiate(cfg.callbacks.checkpoint)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[ckpt, marks], max_steps=steps,
                          default_root_dir=str(run_dir), enable_progress_bar=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=StepIndices(cfg.steps_per_epoch))
    wall = time.perf_counter() - t0
    while marks.marks:  # the schedule ended before the last mark (slower than the probe)
        marks.on_train_batch_end(trainer, module, None, None, 0, force=True)
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    return {"L": L, "K": module.flow.target.K, "overrides": overrides, "model": module.flow.config,
            "num_parameters": module.flow.num_parameters(), "batch_size": cfg.batch_size, "steps": steps,
            "probe_ms_per_step": 1000 * step_s, "wall_s": wall, "threads": threads, "run_dir": str(run_dir),
            "records": marks.records}


def lightning_overhead(L: int = 16, batch: int = 256, steps: int = 30, threads: int = 2) -> dict:
    """ms/step of the same model and optimizer: plain loop vs Lightning (no logger/ckpt/eval).

    The plain loop does the same work per step as ``FlowModule.training_step`` (sample, loss,
    finite check, backward, gradient-norm clipping, Adam, schedule), so the difference is what
    Lightning and its per-step metric logging add."""
    torch.set_num_threads(threads)
    cfg = compose_cfg(L, [f"batch_size={batch}", "eval_every=0", f"steps={steps}"], RESULTS / "overhead")
    pl.seed_everything(0, verbose=False)
    module = build_module(cfg)
    opt = instantiate(cfg.optimizer)(module.flow.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def plain_step() -> None:
        f, _ = module.free_energy_samples(batch)
        loss = f.mean()
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(module.flow.parameters(), float(cfg.grad_clip))
        assert torch.isfinite(gnorm)
        opt.step()
        sched.step()

    for _ in range(3):
        plain_step()
    t = time.perf_counter()
    for _ in range(steps):
        plain_step()
    plain = (time.perf_counter() - t) / steps
    module = build_module(cfg)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps + 3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                self.t = time.perf_counter()

    timer = Timer()
    trainer.callbacks.append(timer)
    trainer.fit(module, train_dataloaders=StepIndices(steps + 3))
    light = (time.perf_counter() - timer.t) / steps
    return {"L": L, "batch": batch, "threads": threads, "plain_ms": 1000 * plain, "lightning_ms": 1000 * light,
            "overhead_fraction": light / plain - 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=8)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5])
    ap.add_argument("--eval-samples", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--overhead", action="store_true")
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    machine = f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}"
    if args.overhead:
        res = lightning_overhead(threads=args.threads)
        print(f"L = {res['L']}, batch {res['batch']}: plain loop {res['plain_ms']:.1f} ms/step, Lightning "
              f"{res['lightning_ms']:.1f} ms/step, overhead {100 * res['overhead_fraction']:.1f}%")
        out = RESULTS / "lightning_overhead.json"
    else:
        res = run_quality(args.L, args.minutes, args.overrides, args.eval_samples, args.threads, args.tag)
        print(f"\n{'min':>5} {'step':>6} {'gap/N':>9} {'± err':>8} {'rel.err':>9} {'Z2 gap/N':>9} {'ESS/M':>7} {'Z2 ESS/M':>8}")
        for r in res["records"]:
            print(f"{r['minutes']:5.1f} {r['step']:6d} {r['gap_per_site']:9.5f} {r['free_energy_per_site_err']:8.5f} "
                  f"{r['relative_error']:9.2e} {r['z2_gap_per_site']:9.5f} {r['ess_fraction']:7.3f} {r['z2_ess_fraction']:8.3f}"
                  + (f"  {format_rg(r['rg'])}" if "rg" in r else ""))
        out = RESULTS / f"train_quality_L{args.L}{args.tag}.json"
    res["machine"] = machine
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
