"""Coverage of neuralrg's error bars, measured against exact answers.

    python benchmarks/coverage.py                 # L = 4 and 8, 60 seeds each (a few minutes on 2 cores)
    python benchmarks/coverage.py --seeds 100 --L 4

Importance sampling: for a poor flow (briefly trained) and a good flow (trained longer) at each L,
repeat IS ln Z with M fresh samples over many seeds and report how often |ln Ẑ − ln Z| ≤ 1σ and
≤ 2σ, split by the PSIS k̂ flag (k̂ ≤ 0.7 reliable), for the plain delta-method estimate and the
Pareto-smoothed one. MCMC: repeat short latent-HMC and physical-HMC runs (good flow) and report the
coverage of the τ_int error bars of e and ⟨m²⟩ against Kaufman / transfer-matrix values, split by
whether the τ_int window converged. Prints a table and writes benchmarks/results/coverage.json.
Flows are trained by a plain reverse-KL loop (tests/helpers.py style), seeded.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch

from neuralrg import K_C, IsingTarget, build_mera
from neuralrg.physics.exact import exact_solution
from neuralrg.physics.transfer_matrix import uniform_solution
from neuralrg.sampling import run_latent_hmc, run_physical_hmc, summarize_run
from neuralrg.physics.importance import KHAT_ERROR_BAR
from neuralrg.sampling.chains import WARMUP_TAUS
from neuralrg.sampling.importance import draw_log_weights, flow_summary

RESULTS = Path(__file__).parent / "results"


def train(L: int, steps: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    flow = build_mera(IsingTarget(L, K_C), n_couplings=4, hidden=16, activation="silu", precondition=True).double()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(steps):
        opt.zero_grad()
        flow.reverse_kld(256).backward()
        opt.step()
        sched.step()
    return flow.eval()


def _cover(dev: np.ndarray) -> dict:
    n = int(dev.size)
    return {"n": n, "within_1sigma": float(np.mean(np.abs(dev) <= 1)) if n else None,
            "within_2sigma": float(np.mean(np.abs(dev) <= 2)) if n else None}


def is_coverage(flow, n_seeds: int, M: int, z2: bool = False) -> dict:
    """IS coverage of the plain density, or of the Z2-symmetrised one (``z2``): a flow trained by
    reverse KL at K_c tends to cover one sign of m only, and then ln Ẑ misses up to ln 2 (a bias no
    tail diagnostic can see, since the missing mode is never sampled)."""
    flow.z2 = bool(z2)
    exact = flow.target.log_z / flow.n_sites
    rows = []
    for s in range(n_seeds):
        g = torch.Generator().manual_seed(1000 + s)
        with torch.no_grad():
            lq, lp = draw_log_weights(flow, M, generator=g)
        r = flow_summary(flow, lq, lp)
        err = r["is_log_z_per_site_err"]
        psis = r["is_psis_log_z_per_site"]
        rows.append({"dev": (r["is_log_z_per_site"] - exact) / err if err > 0 else math.inf,
                     "psis_dev": (psis - exact) / err if psis is not None and err > 0 else None,
                     "khat": r["is_khat"], "reliable": r["is_reliable"], "ess": r["ess_fraction"],
                     "gap": r["gap_per_site"]})
    flow.z2 = False
    return tabulate_is(rows, bool(z2))


def mcmc_coverage(flow, n_seeds: int, sampler: str, n_samples: int, n_warmup: int = 50) -> dict:
    L = flow.L
    exact = exact_solution(L, K_C)
    m2 = uniform_solution(L, K_C)["m2"]
    flow.z2 = True
    rows = {"energy": [], "m2": []}
    for s in range(n_seeds):
        g = torch.Generator().manual_seed(2000 + s)
        run = (run_latent_hmc if sampler == "latent_hmc" else run_physical_hmc)(
            flow, n_chains=16, n_warmup=n_warmup, n_samples=n_samples, n_leapfrog=5, step_size=0.2, generator=g)
        summ = summarize_run(run, flow.target)
        for key, name, ref in (("energy", "energy_per_site", exact["energy_per_site"]), ("m2", "m2", m2)):
            o = summ["observables"][name]
            series = run.observables[key].detach().to("cpu", torch.float64)  # (C, T), energy per site
            chain_means = series.mean(dim=1).numpy()
            err_chains = float(np.std(chain_means, ddof=1) / math.sqrt(chain_means.size))
            rows[key].append({"mean": o["mean"], "err": o["err"], "err_between_chains": err_chains,
                              "dev": (o["mean"] - ref) / o["err"], "dev_between_chains": (o["mean"] - ref) / err_chains,
                              "converged": bool(o["converged"]), "tau": o.get("tau_int"),
                              "reliable": bool(summ["reliable"]), "n_warmup": n_warmup})
    flow.z2 = False
    return tabulate_mcmc(rows)


def tabulate_mcmc(rows: dict[str, list[dict]]) -> dict:
    """Coverage of the MCMC rows by error bar and flag; ``unflagged``: the library's rule
    (``summarize_run``: both windows converged and warm-up ≥ WARMUP_TAUS τ_int), recomputed from
    the rows so that older result files can be re-tabulated (``--retable``)."""
    out = {}
    taumax = [max(a["tau"], b["tau"], 0.5) for a, b in zip(rows["energy"], rows["m2"])]
    conv = [a["converged"] and b["converged"] for a, b in zip(rows["energy"], rows["m2"])]
    unflagged = np.array([c and r.get("n_warmup", 50) >= WARMUP_TAUS * t
                          for c, t, r in zip(conv, taumax, rows["energy"])], dtype=bool)
    for key, rs in rows.items():
        d, c = np.array([r["dev"] for r in rs]), np.array([r["converged"] for r in rs])
        dc = np.array([r["dev_between_chains"] for r in rs])
        dm = np.array([r["dev"] * r["err"] / max(r["err"], r["err_between_chains"]) for r in rs])
        out[key] = {"all": _cover(d), "converged": _cover(d[c]), "unconverged": _cover(d[~c]),
                    "between_chains": _cover(dc), "max_of_both": _cover(dm),
                    "max_of_both_converged": _cover(dm[c]), "unflagged": _cover(dm[unflagged]),
                    "mean_bias_sigma": float(d.mean()), "rows": rs}
    return out


def tabulate_is(rows: list[dict], z2: bool) -> dict:
    """IS coverage by k̂ band and by the library's reliability flag (``flow_summary``: k̂ ≤ ½, and for
    this Z2-symmetric target only the symmetrised density), recomputed from the rows (``--retable``)."""
    dev = np.array([r["dev"] for r in rows])
    rel = np.array([z2 and r["khat"] <= KHAT_ERROR_BAR for r in rows], dtype=bool)
    khat = np.array([r["khat"] for r in rows])
    psis = np.array([r["psis_dev"] for r in rows if r["psis_dev"] is not None])
    return {"gap_per_site": float(np.mean([r["gap"] for r in rows])), "ess_fraction": float(np.mean([r["ess"] for r in rows])),
            "khat_median": float(np.median(khat)), "all": _cover(dev),
            "reliable": _cover(dev[rel]), "flagged": _cover(dev[~rel]), "psis": _cover(psis),
            "khat_le_0.5": _cover(dev[khat <= 0.5]), "khat_0.5_0.7": _cover(dev[(khat > 0.5) & (khat <= 0.7)]),
            "khat_gt_0.7": _cover(dev[khat > 0.7]), "mean_bias_sigma": float(np.mean(dev)), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--seeds", type=int, default=60)
    ap.add_argument("--M", type=int, default=4096, help="importance samples per estimate")
    ap.add_argument("--mcmc-samples", type=int, default=200)
    ap.add_argument("--mcmc-seeds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-mcmc", action="store_true", help="importance sampling only")
    ap.add_argument("--best-steps", type=int, default=3000, help="training steps of the best flow")
    ap.add_argument("--mcmc-warmup", type=int, default=50, help="warm-up trajectories of the MCMC runs")
    ap.add_argument("--mcmc-only", action="store_true", help="MCMC only, on the good flow")
    ap.add_argument("--samplers", nargs="+", default=["latent_hmc", "physical_hmc"])
    ap.add_argument("--retable", help="re-tabulate a stored result file with the current flags; nothing is sampled")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.retable:
        result = json.loads(Path(args.retable).read_text())
        result["is"] = {k: tabulate_is(v["rows"], k.endswith("_z2")) for k, v in result["is"].items()}
        result["mcmc"] = {k: tabulate_mcmc({o: v[o]["rows"] for o in ("energy", "m2")}) for k, v in result["mcmc"].items()}
    else:
        result = {"machine": platform.processor() or platform.machine(), "threads": args.threads, "seeds": args.seeds,
                  "M": args.M, "mcmc_warmup": args.mcmc_warmup, "is": {}, "mcmc": {}}
        labels = (("good", None),) if args.mcmc_only else (("poor", 20), ("good", None), ("best", args.best_steps))
        for L in args.L:
            for label, steps in labels:
                flow = train(L, steps or (600 if L == 4 else 900))
                if not args.mcmc_only:
                    result["is"][f"L{L}_{label}"] = is_coverage(flow, args.seeds, args.M)
                    result["is"][f"L{L}_{label}_z2"] = is_coverage(flow, args.seeds, args.M, z2=True)
                if label == ("good" if args.mcmc_only else "best") and not args.no_mcmc:
                    for sampler in args.samplers:
                        result["mcmc"][f"L{L}_{sampler}"] = mcmc_coverage(flow, args.mcmc_seeds, sampler,
                                                                          args.mcmc_samples, args.mcmc_warmup)
                print(f"L={L} {label} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        result["wall_time_s"] = time.perf_counter() - t0
    f = lambda c: "   n/a" if c["n"] == 0 else f"{c['within_1sigma']:.2f}/{c['within_2sigma']:.2f} (n={c['n']})"  # noqa: E731
    print("\nimportance sampling ln Z/N: fraction within 1σ / 2σ of exact")
    print(f"{'flow':<13} {'gap/N':>8} {'ESS/M':>7} {'k̂ med':>6}  {'all':>18} {'k̂≤0.5':>18} {'0.5<k̂≤0.7':>18} "
          f"{'k̂>0.7':>18} {'PSIS':>18} {'unflagged':>18}")
    for k, r in result["is"].items():
        print(f"{k:<13} {r['gap_per_site']:8.4f} {r['ess_fraction']:7.3f} {r['khat_median']:6.2f}  {f(r['all']):>18} "
              f"{f(r['khat_le_0.5']):>18} {f(r['khat_0.5_0.7']):>18} {f(r['khat_gt_0.7']):>18} {f(r['psis']):>18} "
              f"{f(r['reliable']):>18}")
    print("\nMCMC τ_int error bars: fraction within 1σ / 2σ of exact")
    print(f"{'run':<16} {'obs':<7} {'τ_int: all':>18} {'converged':>18} {'unconverged':>18} {'between chains':>18} "
          f"{'max of both':>18} {'max, converged':>18} {'unflagged':>18}")
    for k, r in result["mcmc"].items():
        for obs, c in r.items():
            print(f"{k:<16} {obs:<7} {f(c['all']):>18} {f(c['converged']):>18} {f(c['unconverged']):>18} "
                  f"{f(c['between_chains']):>18} {f(c['max_of_both']):>18} {f(c['max_of_both_converged']):>18} "
                  f"{f(c['unflagged']):>18}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"coverage{args.tag}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwall time {result.get('wall_time_s', 0):.0f} s; written {out}")


if __name__ == "__main__":
    main()
