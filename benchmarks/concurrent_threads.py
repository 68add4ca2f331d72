"""Two sample.py runs at once: ``threads=1`` each vs the default (the cores this process may use).

    python benchmarks/concurrent_threads.py                        # trains a small flow first (budget 20 s)
    python benchmarks/concurrent_threads.py --run runs/demo/<date> --n-samples 200

Both configurations start two identical ``sample.py`` processes (different seeds) at the same
time and time each of them (process wall time, and the samplers' own wall time from
summary.json). On a machine with C cores, two runs with C threads each oversubscribe it; the
ratio default / threads=1 is the point. Prints a table and writes
benchmarks/results/concurrent_threads.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}


def train_small(work: Path, budget: str) -> Path:
    run = work / "train"
    subprocess.run([sys.executable, str(REPO / "train.py"), "target.L=8", "trainer=cpu", "callbacks=minimal",
                    "logger=none", "batch_size=128", "eval_every=0", "final_eval_samples=1024", f"budget={budget}", "threads=1",
                    f"hydra.run.dir={run}"], check=True, env=ENV, capture_output=True, text=True)
    return run


def sample_args(run: Path, out: Path, seed: int, threads: str, n_samples: int, n_chains: int) -> list[str]:
    return [sys.executable, str(REPO / "sample.py"), f"run={run}", f"out_dir={out}", f"seed={seed}",
            f"threads={threads}", "mode=compare", "compare=[latent_hmc,physical_hmc,flow_metropolis]",
            "device=cpu", "importance_samples=2048", "figures=false", "log_to=none", "quiet=true",
            f"settings.n_chains={n_chains}", "settings.n_warmup=10", f"settings.n_samples={n_samples}"]


def concurrent(run: Path, work: Path, threads: str, n_samples: int, n_chains: int, timeout: float) -> list[dict]:
    """Start two sample.py processes together; wall time of each and their samplers' own time.
    A process still running after ``timeout`` s is stopped and reported as timed out (wall > timeout)."""
    procs, t0 = [], time.perf_counter()
    for i in range(2):
        out = work / f"sample_{threads}_{i}"
        procs.append((out, subprocess.Popen(sample_args(run, out, i, threads, n_samples, n_chains), env=ENV,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    rows = []
    for out, p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            rows.append({"threads_setting": threads, "threads": None, "process_wall_s": time.perf_counter() - t0,
                         "samplers_wall_s": None, "timed_out": True})
            continue
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"sample.py failed: {err[-2000:]}")
        s = json.loads((out / "summary.json").read_text())
        rows.append({"threads_setting": threads, "threads": s["threads"], "process_wall_s": wall,
                     "samplers_wall_s": sum(r["wall_time_s"] for r in s["samplers"].values()), "timed_out": False})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a trained run (default: train a small L = 8 flow first)")
    ap.add_argument("--train-budget", default="15s")
    ap.add_argument("--n-samples", type=int, default=40)
    ap.add_argument("--n-chains", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per pair of runs (then reported as timed out)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "concurrent_threads.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = args.run or train_small(work, args.train_budget)
        print(f"trained run: {run}", flush=True)
        rows = (concurrent(run, work, "1", args.n_samples, args.n_chains, args.timeout)
                + concurrent(run, work, "null", args.n_samples, args.n_chains, args.timeout))
    cores = len(os.sched_getaffinity(0))
    mean = {t: sum(r["process_wall_s"] for r in rows if r["threads_setting"] == t) / 2 for t in ("null", "1")}
    print(f"two concurrent sample.py runs on {cores} cores ({platform.processor() or platform.machine()}); "
          "the machine may be shared, so absolute times vary")
    print(f"{'threads':>16} {'torch threads':>14} {'process wall s':>15} {'samplers wall s':>16}")
    for r in rows:
        label = "default" if r["threads_setting"] == "null" else r["threads_setting"]
        if r["timed_out"]:
            print(f"{label:>16} {'?':>14} {'>' + format(r['process_wall_s'], '.1f'):>15} {'(timed out)':>16}")
        else:
            print(f"{label:>16} {r['threads']:>14} {r['process_wall_s']:>15.1f} {r['samplers_wall_s']:>16.1f}")
    ratio = mean["null"] / mean["1"]
    bound = ">= " if any(r["timed_out"] for r in rows if r["threads_setting"] == "null") else ""
    print(f"mean wall: default {bound}{mean['null']:.1f} s, threads=1 {mean['1']:.1f} s; "
          f"ratio default / threads=1 = {bound}{ratio:.2f}")
    result = {"cores": cores, "timeout_s": args.timeout, "ratio_is_lower_bound": bool(bound), "n_samples": args.n_samples, "n_chains": args.n_chains, "rows": rows, "mean_wall_s": mean,
              "ratio_default_over_threads1": ratio, "note": "2-core shared machine; run briefly with small settings"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
