"""Cost of one leapfrog step (one potential + gradient evaluation for all chains): latent HMC
(with and without the Z2-symmetrised potential) against physical HMC, for several chain counts.

    python benchmarks/hmc_cost.py RUN [--chains 32 128 512] [--threads 2]

ESS per second parity needs τ_int(latent) ≤ τ_int(physical) / (cost ratio) in trajectories at the
same number of leapfrog steps, so this ratio is the bar latent HMC has to clear. Prints a table
and writes benchmarks/results/hmc_cost.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from neuralrg.checkpoint import load_flow
from neuralrg.sampling.hmc import leapfrog, make_potential_and_grad
from neuralrg.sampling.latent import latent_potential, physical_potential_and_grad

RESULTS = Path(__file__).parent / "results"


def ms_per_leapfrog(pg, x: torch.Tensor, n: int) -> float:
    p = torch.randn_like(x)
    U, g = pg(x)
    leapfrog(x, p, g, pg, 0.01, 2)  # warm-up
    t = time.perf_counter()
    leapfrog(x, p, g, pg, 0.01, n)
    return 1e3 * (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--chains", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flow = load_flow(args.run)
    for p in flow.parameters():
        p.requires_grad_(False)
    rows = []
    print(f"{'chains':>6} {'latent Z2':>10} {'latent':>8} {'physical':>9} {'Z2/phys':>8} {'plain/phys':>10}   (ms per leapfrog step)")
    for C in args.chains:
        x = torch.randn(C, flow.L, flow.L, dtype=flow.dtype)
        row = {"chains": C}
        for name, z2 in (("latent_z2", True), ("latent_plain", False)):
            flow.z2 = z2
            row[name] = ms_per_leapfrog(make_potential_and_grad(latent_potential(flow)), x, 20)
        row["physical"] = ms_per_leapfrog(physical_potential_and_grad(flow.target), x, 200)
        rows.append(row)
        print(f"{C:>6} {row['latent_z2']:>10.2f} {row['latent_plain']:>8.2f} {row['physical']:>9.3f} "
              f"{row['latent_z2'] / row['physical']:>8.0f} {row['latent_plain'] / row['physical']:>10.0f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "hmc_cost.json"
    path.write_text(json.dumps({"machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
                                "run": args.run, "model": flow.config, "rows": rows}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
