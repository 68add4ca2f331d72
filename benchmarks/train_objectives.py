"""Training objectives side by side at equal wall-clock: reverse KL, adaptive flow-MCMC, exact data → reverse KL.

    python benchmarks/train_objectives.py --L 16 --seconds 600
    python benchmarks/train_objectives.py --L 8 --seconds 30                 # a quick look
    python benchmarks/train_objectives.py --L 16 --seconds 600 -- loss.forward_weight=0.3 batch_size=512

Every run trains the same model (``experiment=ising{L}_critical`` plus the overrides, same seed,
so the same initial parameters) through ``FlowModule`` for the same wall-clock budget, which
includes the exact-data generation (Wolff chains, before training) of the data run. The number of
optimizer steps comes from a timing probe of each objective, so the learning-rate schedule
spans the budget; a callback stops a run that overruns it. ``data`` pre-trains for
``--data-fraction`` of its steps by maximum likelihood, then reverse KL takes over.

At the end each flow is evaluated on ``--eval-samples`` fresh samples of its Z2-symmetrised
density: gap per site (against the exact ln Z_x), IS ESS/M, flow-MH acceptance; also the plain
(not symmetrised) gap. Prints a table and writes benchmarks/results/train_objectives_L{L}.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).parent))
from train_quality import RESULTS, compose_cfg  # noqa: E402

from neuralrg.analysis.quick import format_rg, quick_rg_figures  # noqa: E402
from neuralrg.pipelines.train import build_module  # noqa: E402
from neuralrg.sampling.importance import evaluate_flow  # noqa: E402
from neuralrg.training.data import StepIndices  # noqa: E402
from neuralrg.training.module import FlowModule, ignore_known_warnings  # noqa: E402

#: variant -> (training objective, overrides): the objectives, and the model options of the ablation
#: (the sign fold applies to the reverse KL alone: the other objectives switch it off)
OBJECTIVES = {
    "reverse_kl": ("reverse_kl", ["loss.name=reverse_kl"]),
    "sign_fold": ("reverse_kl", ["loss.name=reverse_kl", "loss.sign_fold=uniform"]),
    "no_fold": ("reverse_kl", ["loss.name=reverse_kl", "loss.sign_fold=null"]),
    "flow_mcmc": ("flow_mcmc", ["loss.name=flow_mcmc", "loss.sign_fold=null"]),
    "data": ("data", ["loss.name=data", "loss.after=reverse_kl", "loss.sign_fold=null"]),
    "odd": ("reverse_kl", ["loss.name=reverse_kl", "model.block._target_=neuralrg.flows.odd.OddPlaquetteBijector"]),
    "haar": ("reverse_kl", ["loss.name=reverse_kl", "model.skeleton=haar"]),
    "stl": ("reverse_kl", ["loss.name=reverse_kl", "path_gradient=true"]),
    "haar_flow_mcmc": ("flow_mcmc", ["loss.name=flow_mcmc", "loss.sign_fold=null", "model.skeleton=haar"]),
}


class Budget(pl.Callback):
    """Stop once ``offset_s`` + training time reaches ``budget_s``."""

    def __init__(self, budget_s: float, offset_s: float = 0.0) -> None:
        self.budget_s, self.offset_s, self.t0 = budget_s, offset_s, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.offset_s + time.perf_counter() - self.t0 >= self.budget_s:
            trainer.should_stop = True


def device_of(cfg) -> torch.device:
    accel = str(cfg.trainer.get("accelerator", "auto"))
    return torch.device("cuda" if torch.cuda.is_available() and accel in ("auto", "gpu", "cuda") else "cpu")


def probe_seconds(module: FlowModule, cfg, objective: str, n_warmup: int = 3, n: int = 5) -> float:
    """Median seconds of one optimizer step of ``objective`` (module's parameters get changed)."""
    device = device_of(cfg)
    module.to(device)
    opt = instantiate(cfg.optimizer)(module.trained_parameters())
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ts = []
    for i in range(n_warmup + n):
        if objective == "flow_mcmc" and module.chains is not None and not module.chains.initialized:
            module.chains.init_from_flow(module.flow)
        sync()
        t = time.perf_counter()
        if objective == "reverse_kl":
            loss = module.free_energy_samples(int(cfg.batch_size))[0].mean()
        else:
            loss = module._forward_kl_step(objective, i)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i >= n_warmup:
            ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def run_one(name: str, L: int, seconds: float, overrides: list[str], data_fraction: float, eval_samples: int,
            root: Path) -> dict:
    run_dir = root / name
    objective, variant = OBJECTIVES[name]
    cfg = compose_cfg(L, [*overrides, *variant, "eval_every=0"], run_dir)
    OmegaConf.set_struct(cfg, False)
    gen_s = 0.0
    data = None
    if objective == "data":  # the data set first: its wall time counts against the budget
        cfg.loss.pretrain_steps = 1  # placeholder until the step count is known
        probe = build_module(cfg)
        data = probe._ensure_data()
        gen_s = data.generation_s
        t_data = probe_seconds(probe, cfg, "data")
        t_rkl = probe_seconds(build_module(cfg), cfg, "reverse_kl")
        step_s = data_fraction * t_data + (1 - data_fraction) * t_rkl
    else:
        step_s = probe_seconds(build_module(cfg), cfg, objective)
    steps = max(10, int((seconds - gen_s) / (step_s * 1.04)))
    cfg.steps = steps
    cfg.steps_per_epoch = max(1, min(100, steps))
    if objective == "data":
        cfg.loss.pretrain_steps = max(1, int(data_fraction * steps))
    print(f"{name}: probe {1000 * step_s:.1f} ms/step -> {steps} steps"
          + (f" ({cfg.loss.pretrain_steps} on data; data generated in {gen_s:.1f} s)" if data else ""), flush=True)
    pl.seed_everything(cfg.seed, verbose=False)
    module = build_module(cfg)
    if data is not None:
        module.data, module.data_generation_s = data, gen_s
        data._order, data._pos, data.epoch = None, 0, 0
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[Budget(seconds, gen_s)], max_steps=steps,
                          default_root_dir=str(run_dir), enable_progress_bar=False, enable_checkpointing=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=StepIndices(cfg.steps_per_epoch))
    train_s = time.perf_counter() - t0
    flow = module.flow.to(device_of(cfg)).eval()
    plain = evaluate_flow(flow, eval_samples)
    flow.z2 = True
    sym = evaluate_flow(flow, eval_samples)
    flow.z2 = False
    rec = {"objective": name, "steps": int(trainer.global_step), "planned_steps": steps,
           "probe_ms_per_step": 1000 * step_s, "train_s": train_s, "data_generation_s": gen_s,
           "wall_s": train_s + gen_s, "gap_per_site": plain["gap_per_site"],
           "gap_per_site_err": plain["free_energy_per_site_err"],
           "z2_gap_per_site": sym["gap_per_site"], "z2_gap_per_site_err": sym["free_energy_per_site_err"],
           "z2_ess_fraction": sym["ess_fraction"], "z2_metropolis_acceptance": sym["metropolis_acceptance"],
           "z2_relative_error": sym["relative_error"], "loss": OmegaConf.to_container(cfg.loss, resolve=True),
           "rg": quick_rg_figures(flow)}
    if module.chains is not None and module.chains.initialized:
        rec["chain_mh_acceptance"] = module.chains.mh_acceptance
        rec["chain_step_size"] = module.chains.step_size
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=600.0, help="wall-clock budget per objective")
    ap.add_argument("--objectives", nargs="+", default=["reverse_kl", "flow_mcmc", "data"], choices=list(OBJECTIVES))
    ap.add_argument("--data-fraction", type=float, default=0.25, help="share of the data run's steps on data")
    ap.add_argument("--eval-samples", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="")
    ap.add_argument("overrides", nargs="*", help="train.yaml overrides for every run")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ignore_known_warnings()
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = RESULTS / "runs" / f"objectives_L{args.L}{args.tag}_{stamp}_{os.getpid()}"
    records = [run_one(name, args.L, args.seconds, args.overrides, args.data_fraction, args.eval_samples, root)
               for name in args.objectives]
    print(f"\nL = {args.L}, K_c, {args.seconds:.0f} s per objective (data generation included); "
          f"Z2-symmetrised density, {args.eval_samples} samples")
    print(f"{'objective':>11} {'steps':>6} {'wall s':>7} {'data s':>7} {'Z2 gap/N':>9} {'± err':>8} "
          f"{'gap/N':>8} {'ESS/M':>7} {'flow-MH':>8} {'chain MH':>9}  RG organisation (flow samples)")
    for r in records:
        print(f"{r['objective']:>11} {r['steps']:6d} {r['wall_s']:7.1f} {r['data_generation_s']:7.1f} "
              f"{r['z2_gap_per_site']:9.5f} {r['z2_gap_per_site_err']:8.5f} {r['gap_per_site']:8.5f} "
              f"{r['z2_ess_fraction']:7.3f} {r['z2_metropolis_acceptance']:8.3f} "
              f"{r.get('chain_mh_acceptance', float('nan')):9.3f}  {format_rg(r['rg'])}")
    out = RESULTS / f"train_objectives_L{args.L}{args.tag}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"L": args.L, "seconds": args.seconds, "overrides": args.overrides,
                               "data_fraction": args.data_fraction, "eval_samples": args.eval_samples,
                               "threads": args.threads, "run_dir": str(root), "records": records,
                               "machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}"},
                              indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
