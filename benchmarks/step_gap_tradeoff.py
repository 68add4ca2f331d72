"""Issue 19's latent-HMC step against flow quality, over every L = 16, 10-minute run measured for it.

    python benchmarks/step_gap_tradeoff.py [RESULTS.json ...] [--target-step 0.173] [--reference-step S] [--out NAME]

Reads the ``runs`` of the issue-19 results files (default: every ``benchmarks/results/*.json`` whose runs carry
``step_an``, the step ``analyze.py`` adapts with 64 chains; ``z2_gap`` and ``z2_ess``, the Z2-symmetrised flow's
gap per site and ESS/M; ``lhmc.ess_per_lf_m2``, latent HMC's ESS of m² per leapfrog step, a figure free of the
machine's load) and prints them side by side, sorted by step, with the rank correlation of step and gap, and
the smallest gap among the runs that reach ``--target-step``. A run is the preset when its training command adds
nothing to ``experiment=ising16_critical budget=10m`` but threads, logger, seed and the run directory. Writes
benchmarks/results/<out>.json and docs/figures/<out>.png (step against gap, and against ESS per leapfrog step;
``--reference-step``: a second line, e.g. the issue's reference model re-measured after the same training time).
"""
from __future__ import annotations

import argparse
import glob
import json
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "figures"
PLAIN = ("python", "train.py", "experiment=ising16_critical", "budget=10m")
INCIDENTAL = ("threads=", "logger=", "hydra.run.dir=", "seed=")


def settings_of(command: str) -> list[str]:
    """The overrides of a training command beyond the preset's and the incidental ones."""
    return [w for w in shlex.split(command) if w not in PLAIN and not w.startswith(INCIDENTAL)]


def collect(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        data = json.loads(path.read_text())
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, dict):
            continue
        for name, run in runs.items():
            if not isinstance(run, dict) or run.get("step_an") is None or run.get("z2_gap") is None:
                continue
            extra = settings_of(str(run.get("train_command", "")))
            rows.append({"file": path.name, "run": name, "preset": not extra, "settings": " ".join(extra) or "preset",
                         "steps": run.get("steps"), "step": float(run["step_an"]), "z2_gap": float(run["z2_gap"]),
                         "z2_ess": run.get("z2_ess"),
                         "ess_per_leapfrog_m2": (run.get("lhmc") or {}).get("ess_per_lf_m2")})
    return sorted(rows, key=lambda r: r["step"])


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's ρ (no ties expected in measured figures)."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0] * len(v)
        for i, k in enumerate(order):
            r[k] = i
        return r
    ra, rb = ranks(a), ranks(b)
    n = len(a)
    return 1.0 - 6.0 * sum((x - y) ** 2 for x, y in zip(ra, rb)) / (n * (n * n - 1))


def figure(rows: list[dict], target: float, path: Path, reference: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "z2_gap", "Z2 gap per site (nats)"),
                           (axes[1], "ess_per_leapfrog_m2", "latent HMC: ESS of m² per leapfrog step")):
        for preset, marker, colour, name in ((True, "o", "tab:blue", "preset"), (False, "s", "tab:orange", "other settings")):
            pts = [(r["step"], r[key]) for r in rows if r["preset"] == preset and r[key] is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=colour, label=name)
        ax.axvline(target, color="grey", linestyle="--", label=f"issue 19's step {target}")
        if reference is not None:
            ax.axvline(reference, color="tab:green", linestyle=":", label=f"its reference model, same training time: {reference}")
        ax.set_xlabel("latent HMC step (analyze.py, 64 chains)")
        ax.set_ylabel(label)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("L = 16, K_c, 10 minutes of training per run: the step against what the flow is for")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="*", type=Path)
    ap.add_argument("--target-step", type=float, default=0.173)
    ap.add_argument("--reference-step", type=float, default=None)
    ap.add_argument("--out", default="step_gap_tradeoff")
    args = ap.parse_args()
    paths = args.results or [Path(p) for p in sorted(glob.glob(str(RESULTS / "*.json")))]
    rows = collect(paths)
    if len(rows) < 3:
        raise SystemExit(f"need at least 3 runs with step_an and z2_gap; found {len(rows)} in {len(paths)} files")
    print(f"{'step':>7} {'Z2 gap':>9} {'ESS/M':>6} {'ESS/lf':>7} {'steps':>6}  settings  (file: run)")
    for r in rows:
        ess, lf = r["z2_ess"], r["ess_per_leapfrog_m2"]
        print(f"{r['step']:7.4f} {r['z2_gap']:9.6f} {'' if ess is None else f'{ess:6.2f}':>6} "
              f"{'' if lf is None else f'{lf:7.4f}':>7} {r['steps'] or '':>6}  {r['settings']}  ({r['file']}: {r['run']})")
    rho = rank_correlation([r["step"] for r in rows], [r["z2_gap"] for r in rows])
    reach = [r for r in rows if r["step"] >= args.target_step]
    presets = [r for r in rows if r["preset"]]
    summary = {
        "n_runs": len(rows), "spearman_step_gap": rho, "target_step": args.target_step,
        "reference_step": args.reference_step,
        "runs_reaching_target": len(reach),
        "smallest_gap_reaching_target": min((r["z2_gap"] for r in reach), default=None),
        "preset_step_range": [min(r["step"] for r in presets), max(r["step"] for r in presets)] if presets else None,
        "preset_gap_range": [min(r["z2_gap"] for r in presets), max(r["z2_gap"] for r in presets)] if presets else None,
    }
    print(f"\nSpearman rho(step, gap) = {rho:+.2f} over {len(rows)} runs")
    if presets:
        print(f"preset ({len(presets)} runs): step {summary['preset_step_range'][0]:.3f}-{summary['preset_step_range'][1]:.3f}, "
              f"Z2 gap {summary['preset_gap_range'][0]:.5f}-{summary['preset_gap_range'][1]:.5f}")
    if reach:
        print(f"{len(reach)} runs reach step {args.target_step}; the smallest Z2 gap among them is "
              f"{summary['smallest_gap_reaching_target']:.5f}")
    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps({"inputs": [p.name for p in paths if any(r['file'] == p.name for r in rows)],
                               "summary": summary, "rows": rows}, indent=2))
    figure(rows, args.target_step, FIGURES / f"{args.out}.png", args.reference_step)
    print(f"wrote {out} and {FIGURES / (args.out + '.png')}")


if __name__ == "__main__":
    main()
