"""Latent HMC vs physical HMC vs flow Metropolis on one trained flow, same budget, one table.

    python benchmarks/sampling_compare.py RUN_DIR [--chains 64] [--samples 400] [--warmup 150]

RUN_DIR is a training run (e.g. the L = 16, K_c run of benchmarks/train_quality.py). All
samplers get the same number of chains and kept trajectories (flow-Metropolis: proposals)
unless --physical-samples / --metropolis-samples give the cheap ones more (and --physical-warmup
a longer warm-up to physical HMC); the HMC samplers share the leapfrog count, the target acceptance and the dual-averaging
warm-up. Reports τ_int(m²) and τ_int(E) in trajectories (with whether Sokal's window
converged — otherwise a lower bound), ESS per second, and the energy per site against the
exact value; the ratios latent/physical are the headline numbers. Writes
benchmarks/results/sampling_compare_L{L}{--tag}.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from neuralrg.pipelines.sample import format_table, run_sampling
from neuralrg.sampling.registry import available

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--leapfrog", type=int, default=10)
    ap.add_argument("--target-accept", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--physical-samples", type=int, default=None,
                    help="kept trajectories for physical HMC (cheap: give it more to converge its τ window)")
    ap.add_argument("--physical-warmup", type=int, default=None,
                    help="warm-up trajectories for physical HMC (default --warmup; give it >= 20 τ so its rows are not flagged)")
    ap.add_argument("--metropolis-samples", type=int, default=None)
    ap.add_argument("--hybrid-k", type=int, default=None, help="HMC trajectories per flow move of the hybrid (default 2)")
    ap.add_argument("--fold", default=None,
                    help="the sign fold (flow Metropolis, hybrid, latent HMC samplers): auto (the run's) or a number")
    ap.add_argument("--no-symmetrize", action="store_true", help="sample with the plain (not Z2) flow")
    ap.add_argument("--samplers", nargs="+", default=["latent_hmc", "physical_hmc", "flow_metropolis"])
    ap.add_argument("--tag", default="", help="suffix of the result file name, e.g. _silu_pc")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(n_chains=args.chains, n_warmup=args.warmup, n_samples=args.samples, n_leapfrog=args.leapfrog,
                    step_size=0.1, target_accept=args.target_accept, block_levels=None)
    per = {}
    if args.physical_samples:
        per["physical_hmc"] = {"n_samples": args.physical_samples}
    if args.physical_warmup:
        per["physical_hmc"] = {**per.get("physical_hmc", {}), "n_warmup": args.physical_warmup}
    if args.metropolis_samples:
        per["flow_metropolis"] = {"n_samples": args.metropolis_samples}
    if args.hybrid_k is not None:
        per["hybrid"] = {"k": args.hybrid_k}
    if args.fold is not None:  # every sampler that takes it: flow Metropolis, hybrid and the latent HMC samplers
        fold = args.fold if args.fold == "auto" else float(args.fold)
        for name in args.samplers:
            if "fold" in available()[name].defaults:
                per[name] = {**per.get(name, {}), "fold": fold}
    summary = run_sampling(run=args.run, samplers=args.samplers, settings=settings, per_sampler=per,
                           symmetrize=not args.no_symmetrize,
                           out_dir=str(RESULTS / "sampling_runs" / (Path(args.run).name + args.tag)), importance_samples=16384)
    print(format_table(summary))
    s = summary["samplers"]
    ratios = {}
    if "latent_hmc" in s and "physical_hmc" in s:
        lat, phy = s["latent_hmc"], s["physical_hmc"]
        ratios = {
            "tau_m2_physical_over_latent": phy["tau_int"]["m2"]["trajectories"] / lat["tau_int"]["m2"]["trajectories"],
            "ess_per_s_latent_over_physical": lat["ess_per_second"] / phy["ess_per_second"],
            "windows_converged": {k: {o: v["tau_int"][o]["converged"] for o in ("m2", "energy")} for k, v in s.items()},
        }
        ratios["cost_latent_over_physical"] = lat["seconds_per_trajectory"] / phy["seconds_per_trajectory"]
        ratios["tau_m2_latent_needed_for_parity"] = (phy["tau_int"]["m2"]["trajectories"]
                                                     / ratios["cost_latent_over_physical"])
        print(f"τ_int(m²) physical/latent = {ratios['tau_m2_physical_over_latent']:.1f}   "
              f"ESS/s latent/physical = {ratios['ess_per_s_latent_over_physical']:.2f}   "
              f"a latent trajectory costs {ratios['cost_latent_over_physical']:.0f} physical ones, so ESS/s "
              f"parity needs latent τ_int(m²) ≤ {ratios['tau_m2_latent_needed_for_parity']:.2f}")
    L = summary["target"]["L"]
    out = {"machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
           "settings": settings, "ratios": ratios, "summary": summary}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sampling_compare_L{L}{args.tag}.json"
    path.write_text(json.dumps(out, indent=2, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
