"""Collective variables across temperature: run the analysis on every run of a sweep and compare.

Recipe (L = 8, five couplings around K_c, one training run each):

    .venv/bin/python train.py experiment=ising8_sweep          # -> multirun/ising8_sweep/<date>/<0..4>/
    .venv/bin/python benchmarks/sweep_analysis.py multirun/ising8_sweep/<date>
    # or list run directories explicitly:
    .venv/bin/python benchmarks/sweep_analysis.py runs/train/<a> runs/train/<b> --sampler auto

Every path is a run directory (or .ckpt), or a directory searched recursively for run
directories (those with checkpoints/*.ckpt). For each run ``neuralrg.analysis.run_analysis``
writes ``<run>/analysis/<timestamp>/`` as ``analyze.py`` would (``--reuse`` takes the newest
existing analysis.json instead). Then, sorted by K:

* ``sweep_analysis.png``: (a) MI between same-level neighbouring latents per RG level vs K,
  with the MI of neighbouring physical variables; (b) the free-energy landscape
  F(z_top) = −ln ρ(z_top) under p for each K; (c) the bimodality coefficient of z_top and of m
  vs K (5/9 marks bimodality); (d) the fitted response-radius growth factor vs K;
* ``sweep_analysis.json``: {"created", "mi_estimator", "runs": [{"run", "analysis_dir", "L",
  "K", "mi_per_level": {method: [nats per level, null for the top]}, "physical_nn_mi":
  {method: nats}, "neighbour_corr_per_level", "top_latent": {bimodality_coefficient,
  density_ratio_at_zero, grid, free_energy}, "magnetisation": {bimodality_coefficient,
  density_ratio_at_zero}, "growth_factor_rms", "max_abs_corr_top_m", "sampler",
  "n_configurations"}]}.

Outputs go to ``--out`` (default: ``<first path>/sweep_analysis/<timestamp>``).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from neuralrg.physics.lattice import K_C  # noqa: E402


def is_run(p: Path) -> bool:
    """A checkpoint file, or a directory holding checkpoints/last.ckpt or last.ckpt."""
    return (p.is_file() and p.suffix == ".ckpt") or (p / "checkpoints" / "last.ckpt").is_file() \
        or (p / "last.ckpt").is_file()


def find_runs(paths: list[str]) -> list[Path]:
    """Run directories named by ``paths`` (each a run, or searched recursively for runs)."""
    runs: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise ValueError(f"path {raw!r} does not exist")
        if is_run(p):
            runs.append(p)
            continue
        found = sorted({c.parent.parent for c in p.rglob("checkpoints/*.ckpt")})
        if not found:
            raise ValueError(f"no training run (checkpoints/*.ckpt) found under {p}")
        runs += found
    seen, unique = set(), []
    for r in runs:
        if r.resolve() not in seen:
            seen.add(r.resolve())
            unique.append(r)
    return unique


def latest_analysis(run: Path) -> dict[str, Any] | None:
    base = run if run.is_dir() else run.parent.parent
    found = sorted((base / "analysis").glob("*/analysis.json"))
    if not found:
        return None
    res = json.loads(found[-1].read_text())
    res["out_dir"] = str(found[-1].parent)
    return res


def condense(result: dict[str, Any]) -> dict[str, Any]:
    """The per-run numbers the sweep compares (see the module docstring)."""
    methods = result["mi_estimator"]["methods"]
    nn = next((p for p in result["physical_pairs"] if p["distance"] == 1), None)
    top, mag = result["landscape"]["top_latent"], result["landscape"]["magnetisation"]
    return {
        "run": result["run"], "analysis_dir": result.get("out_dir"),
        "L": result["target"]["L"], "K": result["target"]["K"],
        "mi_per_level": {m: [s["neighbours"]["mi"][m] for s in result["level_stats"]] for m in methods},
        "physical_nn_mi": {m: (nn["mi"][m] if nn else None) for m in methods},
        "neighbour_corr_per_level": [s["neighbours"]["correlation"] for s in result["level_stats"]],
        "top_latent": {"bimodality_coefficient": top["bimodality_coefficient"],
                       "density_ratio_at_zero": top["density_ratio_at_zero"],
                       "grid": top["kde"]["grid"], "free_energy": top["kde"]["free_energy"]},
        "magnetisation": {"bimodality_coefficient": mag["bimodality_coefficient"],
                          "density_ratio_at_zero": mag["density_ratio_at_zero"]},
        "growth_factor_rms": result["response"]["growth_factor_rms"],
        "max_abs_corr_top_m": result["coarse_latents"]["levels"][0]["max_abs_corr_m"],
        "sampler": result["sampling"]["sampler"], "n_configurations": result["sampling"]["n_configurations"],
    }


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def plot_sweep(rows: list[dict[str, Any]], primary: str):
    from neuralrg.plotting import plt

    Ks = [r["K"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    n_levels = max(len(r["mi_per_level"][primary]) for r in rows)
    for k in range(n_levels):
        vals = [_num(r["mi_per_level"][primary][k]) if k < len(r["mi_per_level"][primary]) else math.nan for r in rows]
        if not all(math.isnan(v) for v in vals):
            axes[0].plot(Ks, vals, "o-", label=f"latents, level {k}")
    axes[0].plot(Ks, [_num(r["physical_nn_mi"][primary]) for r in rows], "ks--", label="physical x, nn")
    axes[0].set_ylabel(f"neighbour MI [nats] ({primary})")
    axes[0].legend(fontsize=6)
    cmap = plt.get_cmap("viridis")
    kmin, kmax = min(Ks), max(Ks)
    for r in rows:
        c = cmap(0.5 if kmax == kmin else (r["K"] - kmin) / (kmax - kmin))
        axes[1].plot(r["top_latent"]["grid"], [_num(f) for f in r["top_latent"]["free_energy"]], color=c,
                     label=f"K = {r['K']:.3f}")
    axes[1].set_ylim(-0.2, 8)
    axes[1].set_xlabel("top latent z_top")
    axes[1].set_ylabel("F = −ln ρ [nats]")
    axes[1].legend(fontsize=6)
    axes[2].plot(Ks, [_num(r["top_latent"]["bimodality_coefficient"]) for r in rows], "o-", label="z_top")
    axes[2].plot(Ks, [_num(r["magnetisation"]["bimodality_coefficient"]) for r in rows], "s--", label="m")
    axes[2].axhline(5 / 9, color="k", lw=0.6, ls=":", label="5/9")
    axes[2].set_ylabel("bimodality coefficient")
    axes[2].legend(fontsize=7)
    axes[3].plot(Ks, [_num(r["growth_factor_rms"]) for r in rows], "o-")
    axes[3].axhline(2.0, color="k", lw=0.6, ls=":")
    axes[3].set_ylabel("response radius growth per level")
    for ax in (axes[0], axes[2], axes[3]):
        ax.axvline(K_C, color="grey", lw=0.6, ls="--")
        ax.set_xlabel("K")
    fig.suptitle("collective variables across the temperature sweep (K_c dashed)", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", help="run directories / checkpoints, or a multirun directory")
    ap.add_argument("--out", default=None, help="output directory (default <first path>/sweep_analysis/<timestamp>)")
    ap.add_argument("--reuse", action="store_true", help="use each run's newest existing analysis.json if any")
    ap.add_argument("--sampler", default="latent_hmc", choices=["latent_hmc", "flow_metropolis", "auto"])
    ap.add_argument("--n-chains", type=int, default=64)
    ap.add_argument("--n-warmup", type=int, default=100)
    ap.add_argument("--n-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-run-figures", action="store_true", help="skip the per-run figures")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from neuralrg.pipelines.analyze import run_analysis
    from neuralrg.plotting import save_figure

    try:
        runs = find_runs(args.paths)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows, primary, estimator = [], None, None
    for run in runs:
        result = latest_analysis(run) if args.reuse else None
        if result is None:
            print(f"analysing {run} ...", flush=True)
            try:
                result = run_analysis(run=str(run), sampler=args.sampler, seed=args.seed, device=args.device,
                                      settings=dict(n_chains=args.n_chains, n_warmup=args.n_warmup,
                                                    n_samples=args.n_samples),
                                      figures=not args.no_run_figures)
            except ValueError as exc:
                print(f"error: {run}: {exc}", file=sys.stderr)
                return 1
        else:
            print(f"reusing {result['out_dir']}", flush=True)
        estimator = result["mi_estimator"]
        primary = estimator["primary"]
        rows.append(condense(result))
    rows.sort(key=lambda r: r["K"])
    first = Path(args.paths[0])
    first = first if first.is_dir() else first.parent
    out = Path(args.out) if args.out else first / "sweep_analysis" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    save_figure(plot_sweep(rows, primary), out / "sweep_analysis.png")
    summary = {"created": datetime.now().isoformat(), "mi_estimator": estimator, "runs": rows}
    (out / "sweep_analysis.json").write_text(json.dumps(summary, indent=2))
    for r in rows:
        mi = ", ".join(f"{_num(v):.3f}" for v in r["mi_per_level"][primary])
        print(f"K = {r['K']:.4f}: latent MI per level [{mi}], physical nn MI {_num(r['physical_nn_mi'][primary]):.3f}, "
              f"BC(z_top) = {_num(r['top_latent']['bimodality_coefficient']):.3f}, "
              f"BC(m) = {_num(r['magnetisation']['bimodality_coefficient']):.3f}")
    print(f"outputs: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
