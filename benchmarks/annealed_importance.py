"""Annealed importance sampling against the flow's own importance weights, at equal wall time.

    python benchmarks/annealed_importance.py RUN [RUN ...] [--stages 0 4 16 64] [--n-leapfrog 5]
        [--seconds 120] [--fold auto] [--threads 1] [--tag _X]

For each trained flow (a run directory or checkpoint) and each number of stages K
(``neuralrg.sampling.annealed``; K = 0 is the flow's own importance sampling): a pilot run fixes the
step (K > 0), a calibration batch times a draw, and then as many independent draws as fit in
``--seconds`` (pilot included) are made. Per row: draws M, ln Ẑ/N − exact with its error σ and the
deviation in σ, the PSIS k̂ (≤ ½: the error bar holds; > 0.7: ln Ẑ itself does not), ESS/M, the
cost σ²·s of ln Ẑ (the variance of the total ln Ẑ times the seconds spent: lower is better; it
means something only where k̂ ≤ ½), the mean work per site above the exact −ln Z/N (K = 0: the flow's
variational gap), and the weighted energy per site's deviation from exact in σ. The density is the
samplers': the sign fold with ``--fold auto`` where the flow was trained with one, else q_sym on
Z2-symmetric targets. Writes benchmarks/results/annealed_importance{tag}.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from neuralrg.checkpoint import load_flow
from neuralrg.sampling.annealed import annealed_importance, annealed_summary

RESULTS = Path(__file__).parent / "results"
CALIBRATION = {True: 64, False: 2048}  # draws timed before a row, with moves (K > 0) and without


def one_row(flow, K: int, args: argparse.Namespace, gen: torch.Generator) -> dict:
    batch = args.batch_size if K else 4096
    fold = None if args.fold == "none" else (args.fold if args.fold == "auto" else float(args.fold))
    kw = dict(stages=K, n_leapfrog=args.n_leapfrog, fold=fold, batch_size=batch, generator=gen)
    t0 = time.perf_counter()
    n_cal = CALIBRATION[K > 0]
    pilot = annealed_importance(flow, n_cal, **kw)  # fixes ε (its pilot run) and warms up
    pilot_s = time.perf_counter() - t0
    kw["step_size"] = pilot.step_size
    cal = annealed_importance(flow, n_cal, **kw)
    per_draw = cal.seconds / n_cal
    M = int(max(n_cal, min(args.max_draws, (args.seconds - pilot_s) / per_draw)))
    M -= M % 2  # replica pairs for the glass overlap
    draws = annealed_importance(flow, M, **kw)
    s = annealed_summary(flow, draws, gen)
    seconds = draws.seconds + pilot_s
    n = flow.n_sites
    row = {"stages": K, "n_leapfrog": args.n_leapfrog if K else 0, "draws": M, "seconds": seconds,
           "step_size": draws.step_size, "accept_mean": float(draws.accept.mean()) if K else None,
           "log_z_per_site": s["is_log_z_per_site"], "err": s["is_log_z_per_site_err"],
           "khat": s.get("is_khat"), "reliable": s.get("is_reliable"), "note": s.get("is_note"),
           "ess_fraction": s["ess_fraction"], "cost_var_seconds": (s["is_log_z_per_site_err"] * n) ** 2 * seconds,
           "grad_evals_per_draw": draws.grad_evals_per_draw, "observables": s["observables"],
           "deviation_sigma": s["deviation_sigma"]}
    if "exact_free_energy_per_site" in s:
        exact = -s["exact_free_energy_per_site"]
        row.update(exact_log_z_per_site=exact, diff=s["is_log_z_per_site"] - exact,
                   dev_sigma=(s["is_log_z_per_site"] - exact) / s["is_log_z_per_site_err"],
                   work_gap_per_site=s["gap_per_site"])
    return row


def fmt(v, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(rows: list[dict]) -> str:
    head = ("| run | K | draws | s | ε | ln Ẑ/N − exact | σ | dev | k̂ | ESS/M | σ²·s | work gap/N | e dev |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        flag = "" if r.get("reliable") else " (!)"
        lines.append(f"| {r['name']} | {r['stages']} | {r['draws']} | {r['seconds']:.0f} | {fmt(r['step_size'], '.3f')} "
                     f"| {fmt(r.get('diff'), '+.5f')} | {r['err']:.5f} | {fmt(r.get('dev_sigma'), '+.1f')}σ "
                     f"| {fmt(r['khat'], '.2f')}{flag} | {r['ess_fraction']:.3f} | {r['cost_var_seconds']:.3g} "
                     f"| {fmt(r.get('work_gap_per_site'), '.5f')} | {fmt(r['deviation_sigma'].get('energy_per_site'), '+.1f')}σ |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="training run directories or checkpoints")
    ap.add_argument("--stages", type=int, nargs="+", default=[0, 4, 16, 64])
    ap.add_argument("--n-leapfrog", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=120.0, help="wall seconds per row (pilot included)")
    ap.add_argument("--max-draws", type=int, default=200000)
    ap.add_argument("--batch-size", type=int, default=256, help="draws annealed at once (K > 0)")
    ap.add_argument("--fold", default="auto", help="auto | none | a number (neuralrg.sampling.fold)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    rows = []
    for run in args.runs:
        flow = load_flow(run, map_location="cpu")
        flow.z2 = flow.target.z2_symmetric  # q_sym where no fold applies (sample.py's default)
        name = Path(run).name if Path(run).is_dir() else Path(run).parent.parent.name
        for K in args.stages:
            gen = torch.Generator().manual_seed(args.seed)
            row = {"name": name, "run": str(run), "target": flow.target.describe(), **one_row(flow, K, args, gen)}
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"annealed_importance{args.tag}.json"
    out.write_text(json.dumps({"command": "python benchmarks/annealed_importance.py " + " ".join(sys.argv[1:]), "args": vars(args), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "threads": args.threads, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "rows": rows}, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
