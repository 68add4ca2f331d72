"""Critical slowing down at K_c, measured: τ_int against L per sampler, the dynamic exponent z (issue 18).

    python train.py experiment=ising_ladder ladder.rungs=[8,16,32] ladder.budget=[3m,5m,8m] hydra.run.dir=runs/ladder_z
    python benchmarks/critical_slowing.py runs/ladder_z [--at 64] [--samplers latent_hmc physical_hmc wolff]

For every rung of a ladder run (``<dir>/L<L>/``; or give run directories with --runs) it samples
the rung's flow with each sampler through ``run_sampling`` (same chains, warm-up, leapfrog count (or,
with --trajectory-length T, the same trajectory length: ceil(T/step) leapfrog steps at each L's adapted
step) and target acceptance for the HMC samplers; physical HMC and Wolff get ``--cheap-factor`` times more
trajectories because they cost less each) and records τ_int(m²) and τ_int(E) in trajectories (with
Sokal's window flag), their error (Madras–Sokal: σ_τ ≈ τ·sqrt(2(2W+1)/(C·T))), the seconds per
trajectory per site, and ESS/s. With ``--at 64`` the largest rung's level-shared flow is also run
at L = 64 with the same parameters (zero-shot; its gap is reported, not its training).

Fits τ ∝ L^z per sampler and observable by weighted least squares in log–log (z ± its standard
error; windows that did not converge make τ a lower bound and are marked), also for τ counted in
gradient evaluations (the exponent of the cost where the leapfrog count grows with L). The ESS/s ratios
latent/physical and hybrid/physical HMC, for m² and E, get errors from the τ errors and a weighted power
law in L, whose slope ± error and crossing of 1 (with its 1σ range) are printed. Prints a table and writes
benchmarks/results/critical_slowing<tag>.json.

``--seeds N`` samples every rung N times (seeds i, i + 1000, …); ``--merge`` adds the rows of earlier JSON
files and ``--summaries`` those of ``sample.py`` output directories (same trajectory length and fold). Rows of
the same L and sampler, from any of these, are pooled into one (``pool_rows``: τ weighted by sample count).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from neuralrg.pipelines.sample import run_sampling
from neuralrg.sampling.registry import available

RESULTS = Path(__file__).parent / "results"


def tau_error(tau: float, window: int, n: int) -> float:
    """Madras–Sokal standard error of τ_int with window W from n = C·T samples."""
    return tau * math.sqrt(2.0 * (2 * window + 1) / max(n, 1))


def ess_ratio(rows: list[dict], name: str, obs: str = "m2") -> dict | None:
    """ESS/s of sampler ``name`` over physical HMC's per L (trained rungs) for ``obs`` (m2 or energy), each
    with its error from the two τ errors (ESS ∝ 1/τ), and a weighted power law in L fitted to them:
    its slope ± error, the L where it crosses 1 (extrapolated, or interpolated where a measured ratio
    already passed 1) and that L's 1σ range (delta method). ``bounds`` marks ratios from unconverged
    windows: "lower" (physical τ a lower bound), "upper" (the sampler's), "unknown" (both). None
    with fewer than two common L."""
    nn = {r["L"]: r for r in rows if r["sampler"] == name and not r["zero_shot"]}
    phy = {r["L"]: r for r in rows if r["sampler"] == "physical_hmc" and not r["zero_shot"]}
    common = sorted(set(nn) & set(phy))
    if len(common) < 2:
        return None

    def ess(r: dict) -> float:  # ess_per_second is the order parameter's; the energy's has 1/τ_E instead of 1/τ_m2
        return r["ess_per_second"] * (1.0 if obs == "m2" else r["tau_m2"] / r[f"tau_{obs}"])

    def rel(r: dict) -> float:
        return r[f"tau_{obs}_err"] / r[f"tau_{obs}"]

    ratio = [ess(nn[L]) / ess(phy[L]) for L in common]
    err = [q * math.hypot(rel(nn[L]), rel(phy[L])) for q, L in zip(ratio, common)]
    kind = {(True, True): None, (True, False): "lower", (False, True): "upper", (False, False): "unknown"}
    bounds = {L: kind[(nn[L][f"tau_{obs}_converged"], phy[L][f"tau_{obs}_converged"])] for L in common}
    fit = fit_power(common, ratio, err)
    a, b = fit["log_a"], fit["z"]
    out = {"observable": obs, "ratios": dict(zip(common, ratio)), "errors": dict(zip(common, err)),
           "bounds": bounds, "slope": b, "slope_err": fit["z_err"], "L_cross": None, "L_cross_range": None,
           "crossed": any(q >= 1.0 for q in ratio)}
    if b > 0:
        ln_c = -a / b
        c = fit["cov"]  # of (ln a, slope), scaled by the fit's scatter
        var = c[0][0] / b**2 + a**2 * c[1][1] / b**4 - 2.0 * a * c[0][1] / b**3
        s = math.sqrt(max(var, 0.0))
        out["L_cross"], out["L_cross_range"] = math.exp(ln_c), [math.exp(ln_c - s), math.exp(ln_c + s)]
    return out


def rows_from_summary(s: dict, L: int, zero_shot: bool = False) -> list[dict]:
    """One table row per sampler of a ``run_sampling`` summary (``sample.py``'s summary.json) at lattice L."""
    imp = s.get("importance_sampling_z2") or s.get("importance_sampling") or {}
    rows = []
    for name, r in s["samplers"].items():
        n = r["settings"]["n_chains"] * r["trajectories_kept"]
        row = {"L": L, "zero_shot": zero_shot, "sampler": name, "seeds": 1, "n_samples": n, "acceptance": r["acceptance"],
               "seconds_per_trajectory": r["seconds_per_trajectory"],
               "us_per_trajectory_site": 1e6 * r["seconds_per_trajectory"] / (r["settings"]["n_chains"] * L * L),
               "ess_per_second": r["ess_per_second"], "gap_per_site": imp.get("gap_per_site"),
               "dev_sigma_energy": r["deviation_sigma"].get("energy_per_site")}
        st = r["settings"]
        lf = st.get("leapfrog_per_block") or ([st["n_leapfrog"]] if "n_leapfrog" in st else None)
        row["step_size"] = st.get("step_size")
        row["leapfrog_per_trajectory"] = sum(lf) if lf else None
        for obs in ("m2", "energy"):
            t = r["tau_int"][obs]
            row[f"tau_{obs}"] = t["trajectories"]
            row[f"tau_{obs}_err"] = tau_error(t["trajectories"], t["window"], n)
            row[f"tau_{obs}_converged"] = t["converged"]
            if lf:  # τ in gradient evaluations: what a trajectory of this L costs
                row[f"tau_{obs}_grads"] = t["trajectories"] * sum(lf)
                row[f"tau_{obs}_grads_err"] = row[f"tau_{obs}_err"] * sum(lf)
        rows.append(row)
    return rows


def pool_rows(rows: list[dict]) -> list[dict]:
    """Rows of the same (L, sampler, zero-shot) from several seeds or runs, pooled into one: each τ (and τ in
    gradient evaluations) the mean of the rows' τ weighted by their sample counts w_i ∝ n_i (equal without
    ``n_samples``), error sqrt(Σ w_i² σ_i²), converged only if every window was. (Not inverse variance: σ_τ ∝ τ,
    so 1/σ² weights favour the runs whose τ came out low and bias the pool low.) Seconds per trajectory the mean;
    ESS/s = mean(ESS/s·τ(m²)·s/trajectory) / (pooled τ(m²)·mean s/trajectory), so ESS/s stays ∝ 1/(τ·cost).
    ``seeds`` counts the pooled rows. Single rows pass unchanged."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["L"], r["sampler"], r["zero_shot"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        row = dict(group[0], seeds=sum(r.get("seeds", 1) for r in group))
        if all("n_samples" in r for r in group):
            row["n_samples"] = sum(r["n_samples"] for r in group)
        for key in ("acceptance", "seconds_per_trajectory", "us_per_trajectory_site"):
            row[key] = float(np.mean([r[key] for r in group]))
        n = [float(r.get("n_samples", 1)) for r in group]
        w = [ni / sum(n) for ni in n]
        for obs in ("m2", "energy"):
            for unit in ("", "_grads"):
                k = f"tau_{obs}{unit}"
                if not all(k in r for r in group):
                    row.pop(k, None)
                    row.pop(f"{k}_err", None)
                    continue
                row[k] = sum(wi * r[k] for wi, r in zip(w, group))
                row[f"{k}_err"] = math.sqrt(sum((wi * r[f"{k}_err"]) ** 2 for wi, r in zip(w, group)))
            row[f"tau_{obs}_converged"] = all(r[f"tau_{obs}_converged"] for r in group)
        scale = np.mean([r["ess_per_second"] * r["tau_m2"] * r["seconds_per_trajectory"] for r in group])
        row["ess_per_second"] = float(scale / (row["tau_m2"] * row["seconds_per_trajectory"]))
        lfs = [r["leapfrog_per_trajectory"] for r in group]
        row["leapfrog_per_trajectory"] = None if None in lfs else float(np.mean(lfs))
        steps = [r["step_size"] for r in group]  # one per block of levels (blocked latent HMC)
        row["step_size"] = [float(np.mean(b)) for b in zip(*steps)] if all(steps) else None
        out.append(row)
    return out


def fit_power(Ls: list[int], taus: list[float], errs: list[float]) -> dict:
    """τ = a L^z by weighted least squares of ln τ on ln L (weights 1/σ_lnτ²): z, its error."""
    if len(Ls) < 2:
        return {"z": None, "z_err": None, "log_a": None, "chi2_per_dof": None, "cov": None}
    x, y = np.log(Ls), np.log(taus)
    s = np.maximum(np.array(errs) / np.array(taus), 1e-3)
    w = 1.0 / s**2
    A = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(A.T @ (A * w[:, None]))
    coef = cov @ (A.T @ (w * y))
    resid = y - A @ coef
    chi2 = float(np.sum(w * resid**2))
    dof = len(Ls) - 2
    scale = max(1.0, chi2 / dof) if dof > 0 else 1.0  # inflate by the fit's own scatter
    return {"z": float(coef[1]), "z_err": float(math.sqrt(cov[1, 1] * scale)), "log_a": float(coef[0]),
            "chi2_per_dof": chi2 / dof if dof > 0 else None, "cov": (cov * scale).tolist()}


def rung_dirs(args) -> dict[int, Path]:
    if args.runs:
        out = {}
        for r in args.runs:
            cfg = Path(r) / "config.yaml"
            m = re.search(r"\n  L: (\d+)", "\n" + cfg.read_text()) if cfg.is_file() else None
            if m is None:
                raise SystemExit(f"cannot read target.L from {cfg}")
            out[int(m.group(1))] = Path(r)
        return dict(sorted(out.items()))
    d = Path(args.ladder)
    return dict(sorted((int(p.name[1:]), p) for p in d.glob("L*") if p.name[1:].isdigit()
                       and (p / "checkpoints" / "last.ckpt").is_file()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ladder", nargs="?", help="a ladder run directory (its L<L>/ rungs)")
    ap.add_argument("--runs", nargs="+", help="training run directories instead of a ladder")
    ap.add_argument("--samplers", nargs="+", default=["latent_hmc", "physical_hmc", "wolff"])
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--leapfrog", type=int, default=10)
    ap.add_argument("--trajectory-length", type=float, default=None,
                    help="HMC samplers: ceil(T/step) leapfrog steps a move at each L's adapted step (a fixed "
                         "trajectory length across L; --leapfrog is then ignored)")
    ap.add_argument("--cheap-factor", type=int, default=4, help="trajectory multiplier for physical HMC and Wolff")
    ap.add_argument("--at", type=int, nargs="*", default=[], help="also run the largest rung's flow at these L")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fold", default=None,
                    help="the sign fold for every sampler that takes it (hybrid, flow Metropolis, latent HMC): "
                         "auto (a rung's trained fold) or a number (a uniform fold of that size); default none")
    ap.add_argument("--seeds", type=int, default=1,
                    help="sampling runs per rung (seeds i, i + 1000, ...), pooled into one row (pool_rows)")
    ap.add_argument("--summaries", nargs="+", default=[],
                    help="sample.py output directories (summary.json) whose rows join the table; rows of the "
                         "same L and sampler, from here, --merge or the runs, are pooled (pool_rows)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--merge", nargs="+", default=[],
                    help="critical_slowing*.json files of earlier runs (e.g. the largest L run on its own, in "
                         "parallel): their rows join this run's table and fits; their HMC settings must match")
    args = ap.parse_args()
    if not args.ladder and not args.runs and not args.merge and not args.summaries:
        ap.error("give a ladder run directory, --runs, --merge or --summaries")
    if args.seeds < 1:
        ap.error(f"--seeds must be >= 1, got {args.seeds}")
    torch.set_num_threads(args.threads)
    rungs = rung_dirs(args) if args.ladder or args.runs else {}
    if not rungs and not args.merge and not args.summaries:
        raise SystemExit("no trained rungs found")
    jobs = [(L, d, None) for L, d in rungs.items()] + [(L, rungs[max(rungs)], L) for L in args.at]
    base = dict(n_chains=args.chains, n_warmup=args.warmup, n_samples=args.samples, n_leapfrog=args.leapfrog,
                step_size=0.1, target_accept=0.8, trajectory_length=args.trajectory_length)
    cheap = {"n_samples": args.samples * args.cheap_factor}
    per = {k: cheap for k in ("physical_hmc", "wolff") if k in args.samplers}
    if args.fold is not None:
        fold = args.fold if args.fold == "auto" else float(args.fold)
        per.update({k: {"fold": fold} for k in args.samplers if "fold" in available()[k].defaults})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (L, run, at_L) in enumerate(jobs):
            for k in range(args.seeds):  # seed i for the first: the runs of before --seeds existed
                s = run_sampling(run=str(run), samplers=list(args.samplers), settings=base, at_L=at_L,
                                 out_dir=str(Path(tmp) / f"s{i}_{k}"), importance_samples=4096 if k == 0 else 0,
                                 figures=False, seed=i + 1000 * k, per_sampler=per)
                rows += rows_from_summary(s, L, at_L is not None)
            print(f"L={L}{' (zero-shot)' if at_L else ''} done", flush=True)
    for d in args.summaries:  # sample.py output directories
        s = json.loads((Path(d) / "summary.json").read_text())
        st = s.get("settings", {})
        diff = {k: (st.get(k), getattr(args, k)) for k in ("trajectory_length", "fold") if st.get(k) != getattr(args, k)}
        if diff:
            raise SystemExit(f"{d}: settings differ from this run's {diff} (theirs, ours); not used")
        rows += [r for r in rows_from_summary(s, int(s["target"]["L"])) if r["sampler"] in args.samplers]
    for path in args.merge:
        other = json.loads(Path(path).read_text())
        # the fold must agree only where a merged row's sampler takes one (physical HMC and Wolff do not)
        folded = any("fold" in available()[r["sampler"]].defaults for r in other["rows"] if r["sampler"] in args.samplers)
        same = ("leapfrog", "trajectory_length") + (("fold",) if folded else ())
        diff = {k: (other["settings"].get(k), getattr(args, k)) for k in same if other["settings"].get(k) != getattr(args, k)}
        if diff:
            raise SystemExit(f"{path}: settings differ from this run's {diff} (theirs, ours); not merged")
        rows += [r for r in other["rows"] if r["sampler"] in args.samplers]
    rows = pool_rows(rows)
    rows.sort(key=lambda r: (r["zero_shot"], r["L"], args.samplers.index(r["sampler"])))
    fits = {}
    for name in args.samplers:
        for obs in ("m2", "energy"):
            rs = [r for r in rows if r["sampler"] == name and not r["zero_shot"]]
            if len(rs) >= 2:
                fits[f"{name}/{obs}"] = {**fit_power([r["L"] for r in rs], [r[f"tau_{obs}"] for r in rs],
                                                     [r[f"tau_{obs}_err"] for r in rs]),
                                         "all_converged": all(r[f"tau_{obs}_converged"] for r in rs)}
                if all(f"tau_{obs}_grads" in r for r in rs):  # z of the cost: τ in gradient evaluations
                    fits[f"{name}/{obs}/grads"] = {
                        **fit_power([r["L"] for r in rs], [r[f"tau_{obs}_grads"] for r in rs],
                                    [r[f"tau_{obs}_grads_err"] for r in rs]),
                        "all_converged": all(r[f"tau_{obs}_converged"] for r in rs)}
    # ESS/s ratio neural/physical HMC against L: a power law fitted to the ratio, extrapolated to 1
    crossings = {f"{name}/{obs}": ess_ratio(rows, name, obs) for name in ("latent_hmc", "hybrid")
                 if name in args.samplers for obs in ("m2", "energy")}
    crossing = crossings.get("latent_hmc/m2")
    print(f"\n{'L':>4} {'sampler':<14} {'acc':>5} {'step':>6} {'leapfrog':>8} {'τ(m²)':>14} {'τ(E)':>14} "
          f"{'µs/(traj·site)':>15} {'ESS/s':>8} {'gap/N':>8}")
    for r in rows:
        f = lambda o: f"{r[f'tau_{o}']:.1f}±{r[f'tau_{o}_err']:.1f}{'' if r[f'tau_{o}_converged'] else '>'}"  # noqa: E731
        gap = "" if r["gap_per_site"] is None else f"{r['gap_per_site']:.4f}"
        step = "/".join(f"{e:.3f}" for e in r["step_size"] or [])  # a step per block of levels
        lf = "" if r["leapfrog_per_trajectory"] is None else str(r["leapfrog_per_trajectory"])
        print(f"{r['L']:>4}{'*' if r['zero_shot'] else ' '}{r['sampler']:<14} {r['acceptance']:5.2f} {step:>6} {lf:>8} {f('m2'):>14} "
              f"{f('energy'):>14} {r['us_per_trajectory_site']:15.2f} {r['ess_per_second']:8.2f} {gap:>8}")
    print("('>': τ window not converged, a lower bound; '*': zero-shot, the largest rung's flow at this L)")
    print("\ndynamic exponents τ ∝ L^z (τ in trajectories; '/grads': in gradient evaluations, the cost's exponent):")
    for k, f in fits.items():
        print(f"  {k:<22} z = {f['z']:.2f} ± {f['z_err']:.2f}{'' if f['all_converged'] else '  (some windows unconverged: lower bounds)'}")
    flag = {None: "", "lower": "≥", "upper": "≤", "unknown": "?"}
    for name, c in crossings.items():
        if c is None:
            continue
        ratios = ", ".join(f"L={L}: {flag[c['bounds'][L]]}{v:.3g}±{c['errors'][L]:.2g}" for L, v in c["ratios"].items())
        if c["L_cross"] is None:
            cross = "no crossing (the ratio does not rise)"
        else:
            lo, hi = c["L_cross_range"]
            how = "interpolated, a measured ratio passed 1" if c["crossed"] else "extrapolated"
            cross = f"crosses 1 at L ≈ {c['L_cross']:.0f} (1σ {lo:.0f}–{hi:.0f}, {how})"
        print(f"ESS/s {name} over physical HMC: {ratios}; slope in ln L {c['slope']:.2f} ± {c['slope_err']:.2f}; {cross}")
    print("('≥' / '≤': a τ window did not converge, the ratio is a bound; '?': both did not)")
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
           "load_average_at_end": os.getloadavg(), "settings": vars(args), "rows": rows, "fits": fits,
           "ess_ratio": crossing, "ess_ratio_hybrid": crossings.get("hybrid/m2"),
           "ess_ratios": crossings}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"critical_slowing{args.tag}.json"
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"written {path}")


if __name__ == "__main__":
    main()
