"""The benchmark-table RG-organisation figures of trained runs, side by side.

    python benchmarks/rg_quick.py RUN [RUN ...] [--samples 4096] [--threads 1] [--tag _X]

For each run: R²(m | top 1, 2 levels) on the latents of exact samples of p (Wolff + x | s where it
applies, else the flow's own samples, marked "(q)"), also with cubic features of the same
latents (is m a smooth but nonlinear function of them?), and the response-radius growth per
level (``neuralrg.analysis.quick``). Prints a table; writes benchmarks/results/rg_quick{tag}.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from neuralrg.analysis.quick import format_rg, quick_rg_figures
from neuralrg.checkpoint import load_flow

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for run in args.runs:
        flow = load_flow(run)
        flow = flow[0] if isinstance(flow, tuple) else flow
        rg = quick_rg_figures(flow, n_samples=args.samples, seed=args.seed)
        rg["run"], rg["block"] = str(run), (flow.config.get("block") or {}).get("class")
        rows.append(rg)
        cub = "/".join("n/a" if v is None else f"{v:.2f}" for v in (rg["r2_m_cubic_top1"], rg["r2_m_cubic_top2"]))
        print(f"{Path(run).name}: {format_rg(rg)}  cubic R² {cub}  [{rg['samples']}]", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rg_quick{args.tag}.json"
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
                               "samples": args.samples, "seed": args.seed, "runs": rows}, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
