"""Why the latent HMC step size is small: energy error against ε and local curvature of U(z).

    python benchmarks/latent_curvature.py RUN [RUN ...] [--chains 256] [--threads 2] [--tag _X]

For each trained flow: exact draws x ~ p from physical HMC (64 chains, 300 + 600 trajectories,
thinned), mapped to latents z = g⁻¹(x) (exact draws of the latent target when the Z2-symmetrised
potential is used). Then, from those z with fresh momenta: the energy error ΔH of one 10-step
leapfrog trajectory for several ε (acceptance, median / 90% / 99% of |ΔH|); the same with only one RG
level's latents moving (which level sets the step); |ΔH| after 10, 40 and 160 steps at half the largest
ε with acceptance ≥ 0.9 (bounded for a smooth potential, growing where the force jumps); and at 16 of the z
the Hessian eigenvalue of largest magnitude of U(z) = E(g(z)) − ln|det ∂g/∂z| (without the Z2 term), by
power iteration on Hessian-vector products, with the share of its eigenvector on each RG level
and its participation ratio (1 = one latent site). Also E[(∂U/∂z_i)²] per level, which equals
the mean curvature E[∂²U/∂z_i²] under the target. Prints a table per run and writes
benchmarks/results/latent_curvature{tag}.json.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from neuralrg.checkpoint import load_flow
from neuralrg.sampling.hmc import kinetic_energy, leapfrog, make_potential_and_grad, run_hmc
from neuralrg.sampling.latent import latent_potential, physical_potential_and_grad

RESULTS = Path(__file__).parent / "results"
EPS = (0.05, 0.1, 0.2, 0.3, 0.5)
LEVEL_EPS = (0.05, 0.1, 0.2, 0.4)
LENGTH_STEPS = (10, 40, 160)


def _energy_error(z, p0, U, g, pg, eps: float, n_steps: int, mask=None) -> dict:
    """Acceptance and |ΔH| quantiles of one leapfrog trajectory from every row of z."""
    _, p1, U1, _ = leapfrog(z, p0, g, pg, eps, n_steps, mask=mask)
    dH = (U1 + kinetic_energy(p1) - U - kinetic_energy(p0)).nan_to_num(1e9)
    q = torch.quantile(dH.abs().double(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {"eps": eps, "n_steps": n_steps, "accept": float(torch.exp(torch.clamp(-dH, max=0)).mean()),
            "abs_dH_median": float(q[0]), "abs_dH_p90": float(q[1]), "abs_dH_p99": float(q[2])}


def exact_latents(flow, n: int, generator: torch.Generator) -> torch.Tensor:
    """n exact draws of the Z2 latent target: x ~ p by physical HMC (well separated draws), a
    sign s = ±1 drawn with probability q(s·x) / (q(x) + q(−x)), and z = g⁻¹(s·x)."""
    with torch.no_grad():
        x0 = flow.sample(64, generator=generator)[0]
    res = run_hmc(None, x0, n_warmup=300, n_samples=600, n_leapfrog=10, keep_samples=True, generator=generator,
                  grad_fn=physical_potential_and_grad(flow.target))
    x = res.samples[::max(1, 600 * 64 // n // 64)].reshape(-1, flow.L, flow.L)
    x = x[torch.randperm(x.shape[0], generator=generator)[:n]]
    with torch.no_grad():
        lq_plus, lq_minus = flow.log_prob_unsymmetrised(x), flow.log_prob_unsymmetrised(-x)
        keep = torch.rand(x.shape[0], dtype=x.dtype, generator=generator) < torch.sigmoid(lq_plus - lq_minus)
        return flow.inverse(torch.where(keep[:, None, None], x, -x))


def top_curvature(potential, z: torch.Tensor, n_iter: int = 40, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per chain: Hessian eigenvalue of largest |λ| and its unit eigenvector (power iteration)."""
    def hvp(v):
        zz = z.detach().requires_grad_(True)
        g = torch.autograd.grad(potential(zz).sum(), zz, create_graph=True)[0]
        return torch.autograd.grad((g * v).sum(), zz)[0]

    v = torch.randn(z.shape, dtype=z.dtype, generator=generator)
    v = v / v.flatten(1).norm(dim=1)[:, None, None]
    lam = torch.zeros(z.shape[0], dtype=z.dtype)
    for _ in range(n_iter):
        w = hvp(v)
        lam = (w * v).flatten(1).sum(1)
        v = w / w.flatten(1).norm(dim=1)[:, None, None]
    return lam.detach(), v.detach()


def analyse(run: str, n: int, generator: torch.Generator) -> dict:
    flow = load_flow(run)
    flow.z2 = True  # the potential latent HMC samples by default
    for p in flow.parameters():
        p.requires_grad_(False)
    z = exact_latents(flow, n, generator)
    U_fn = latent_potential(flow)
    pg = make_potential_and_grad(U_fn)
    U, g = pg(z)
    lv = flow.latent_levels
    out = {"run": run, "model": flow.config, "n_latents": int(z.shape[0]),
           "mean_curvature_per_level": [float((g[:, lv == k] ** 2).mean()) for k in range(flow.n_levels)],
           "leapfrog": []}
    p0 = torch.randn(z.shape, dtype=z.dtype, generator=generator)
    for eps in EPS:
        out["leapfrog"].append(_energy_error(z, p0, U, g, pg, eps, 10))
    # which level sets the step: only level k's latents move (the others and their momenta held)
    out["leapfrog_per_level"] = []
    for k in range(flow.n_levels):
        mask = (lv == k).expand(z.shape)
        pk = torch.where(mask, p0, torch.zeros((), dtype=p0.dtype))
        out["leapfrog_per_level"].append([dict(_energy_error(z, pk, U, g, pg, eps, 10, mask=mask), level=k,
                                               n_latents=int((lv == k).sum())) for eps in LEVEL_EPS])
    # does the error oscillate (a shadow Hamiltonian) or grow with the trajectory's length?
    eps_len = min((r["eps"] for r in out["leapfrog"] if r["accept"] < 0.9), default=EPS[-1]) / 2
    out["leapfrog_length"] = [_energy_error(z, p0, U, g, pg, eps_len, n) for n in LENGTH_STEPS]
    flow.z2 = False  # the Z2 term is ≈ constant away from m ≈ 0, and its double backward is unstable
    lam, v = top_curvature(latent_potential(flow), z[:16], generator=generator)
    out["top_curvature"] = sorted((float(x) for x in lam), key=abs)  # signed, by |λ|
    out["top_vector_level_share"] = [float((v[:, lv == k] ** 2).sum(1).mean()) for k in range(flow.n_levels)]
    out["top_vector_participation"] = float((1.0 / (v ** 4).flatten(1).sum(1)).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--chains", type=int, default=256, help="latent points (exact draws) to integrate from")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for run in args.runs:
        r = analyse(run, args.chains, gen)
        results.append(r)
        cfg = r["model"]
        block = (cfg.get("block") or {}).get("kwargs") or cfg  # older configs: block arguments at top level
        print(f"\n{Path(run).name}: block={(cfg.get('block') or {}).get('class', 'PlaquetteBijector')} "
              f"activation={block.get('activation', 'leaky_relu')} precondition={cfg.get('precondition', False)}")
        print("  E[(dU/dz)^2] per level (mean curvature): " + " ".join(f"{c:.2f}" for c in r["mean_curvature_per_level"]))
        print("  eps   accept  |dH| median   p90     p99   (10 leapfrog steps from exact latents)")
        for row in r["leapfrog"]:
            print(f"  {row['eps']:<5} {row['accept']:6.3f}  {row['abs_dH_median']:9.3g} {row['abs_dH_p90']:8.3g} "
                  f"{row['abs_dH_p99']:8.3g}")
        print("  one level moving (10 steps): level  n   " + "  ".join(f"acc@{e:<4}" for e in LEVEL_EPS))
        for rows in r["leapfrog_per_level"]:
            print(f"                              {rows[0]['level']:<5} {rows[0]['n_latents']:<4} "
                  + "  ".join(f"{row['accept']:8.3f}" for row in rows))
        print(f"  trajectory length at eps {r['leapfrog_length'][0]['eps']:.3g}: "
              + ", ".join(f"{row['n_steps']} steps |dH| median {row['abs_dH_median']:.3g} acc {row['accept']:.3f}"
                          for row in r["leapfrog_length"]))
        tc = [abs(c) for c in r["top_curvature"]]
        print(f"  local |λ|max of the Hessian at 16 points: smallest {tc[0]:.1f}, median {tc[8]:.1f}, largest {tc[-1]:.1f}; "
              f"eigenvector share per level " + " ".join(f"{s:.2f}" for s in r["top_vector_level_share"])
              + f", participation {r['top_vector_participation']:.1f} sites")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"latent_curvature{args.tag}.json"
    path.write_text(json.dumps({"machine": f"{platform.machine()}, {args.threads} threads, torch {torch.__version__}",
                                "results": results}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
