"""The quick RG-organisation figures (``neuralrg.analysis.quick``) of trained runs, side by side.

    python benchmarks/rg_figures.py RUN [RUN ...] [--samples 4096] [--threads 1] [--tag _x]

RUN: a run directory (or checkpoint) of train.py or train_quality.py. For each: R²(m | top 1, 2
levels) on exact (Wolff) samples of p in the flow's sign convention, the same within one sign of
m, the cubic R², and the response-radius growth. Recomputes figures that older benchmark tables
hold under earlier definitions. Prints a table; writes benchmarks/results/rg_figures{tag}.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from neuralrg.analysis.quick import quick_rg_figures
from neuralrg.checkpoint import load_flow

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'run':<48} {'R² top1':>8} {'top2':>6} {'one sign':>9} {'cubic2':>7} {'growth':>7}")
    for run in args.runs:
        flow = load_flow(run).eval()
        rg = quick_rg_figures(flow, n_samples=args.samples)
        rows.append({"run": str(run), **rg})

        def f(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"
        print(f"{Path(run).name[:48]:<48} {f(rg['r2_m_top1']):>8} {f(rg['r2_m_top2']):>6} "
              f"{f(rg['r2_m_one_sign_top1']):>9} {f(rg['r2_m_cubic_top2']):>7} {f(rg['radius_growth']):>7}")
    out = RESULTS / f"rg_figures{args.tag}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {args.threads} threads", "samples": args.samples,
                               "rows": rows}, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
