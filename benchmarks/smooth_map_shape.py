"""How sharp the smooth element-wise maps of a trained flow are, on its own samples.

    python benchmarks/smooth_map_shape.py RUN [RUN ...] [--samples 128] [--seed 0] [--threads 1] [--tag _X]

Each coupling with ``transform: smooth`` (``neuralrg.flows.smooth``) maps an element by K tanh steps
f_i(v) = v + a_i σ_i tanh((v − μ_i)/σ_i), whose parameters its conditioner computes from the other
elements. A step bends f by at most about |a|/σ (f'' ≤ 0.77·|a|/σ): large values would make latent HMC's
potential rough. While ``flow.sample(samples)`` runs, every step's a and σ are recorded (a hook on
``smooth._components``) and their quantiles printed: widths σ (2B/K = 1.25 at initialisation for the
presets' B = 5, K = 8), amplitudes |a| (0 at initialisation) and |a|/σ. Writes
benchmarks/results/smooth_map_shape{tag}.json.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
from pathlib import Path

import torch

import neuralrg.flows.smooth as smooth
from neuralrg.checkpoint import load_flow

RESULTS = Path(__file__).parent / "results"
QUANTILES = (0.5, 0.9, 0.99, 0.999)


@contextlib.contextmanager
def recorded_steps(out: list):
    """Append (a, σ) of every call of ``smooth._components`` to ``out`` while the block runs."""
    original = smooth._components

    def hook(raw, bound):
        a, mu, sigma = original(raw, bound)
        out.append((a.detach().reshape(-1), sigma.detach().reshape(-1)))
        return a, mu, sigma

    smooth._components = hook
    try:
        yield out
    finally:
        smooth._components = original


def _quantiles(v: torch.Tensor) -> dict[str, float]:
    v = v.double()
    if v.numel() > 2 ** 24:  # torch.quantile's limit: an evenly spaced subset
        v = v[:: v.numel() // 2 ** 24 + 1]
    q = torch.quantile(v, torch.tensor(QUANTILES, dtype=torch.float64))
    return {**{f"q{p}": float(x) for p, x in zip(QUANTILES, q)}, "min": float(v.min()), "max": float(v.max())}


def shape(run: str, samples: int, seed: int) -> dict:
    flow = load_flow(run)
    torch.manual_seed(seed)
    with recorded_steps([]) as steps, torch.no_grad():
        flow.sample(samples)
    if not steps:
        raise SystemExit(f"{run}: the flow has no smooth element-wise maps (model.block.transform is not smooth)")
    a = torch.cat([s[0] for s in steps]).abs()
    sigma = torch.cat([s[1] for s in steps])
    return {"run": run, "samples": samples, "seed": seed, "tanh_steps": a.numel(),
            "sigma": _quantiles(sigma), "abs_a": _quantiles(a), "abs_a_over_sigma": _quantiles(a / sigma)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [shape(r, args.samples, args.seed) for r in args.runs]
    print(f"{'run':40s} {'quantity':10s} " + " ".join(f"{'q' + str(p):>8s}" for p in QUANTILES) + f" {'min':>8s} {'max':>8s}")
    for r in rows:
        for key in ("sigma", "abs_a", "abs_a_over_sigma"):
            q = r[key]
            print(f"{Path(r['run']).name[:40]:40s} {key:10s} " + " ".join(f"{q[f'q{p}']:8.3f}" for p in QUANTILES)
                  + f" {q['min']:8.3f} {q['max']:8.3f}")
    out = RESULTS / f"smooth_map_shape{args.tag}.json"
    out.write_text(json.dumps({"machine": platform.platform(), "command_args": vars(args), "runs": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
