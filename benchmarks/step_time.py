"""Time one reverse-KL training step (sample + loss + backward + Adam step) of the flows.

    python benchmarks/step_time.py                 # full table (L = 8, 16, 32; batch 256, 1024; 1 and 2 threads)
    python benchmarks/step_time.py --quick         # L = 16, batch 256 only
    python benchmarks/step_time.py --quick --out benchmarks/results/step_time_quick.json
    python benchmarks/step_time.py --quick --threads 1 --models "mera context" --repeats 15   # one model, one thread
    python benchmarks/step_time.py --quick --threads 1 --models "mera context spline" "mera context smooth" \
        --path-gradient --out benchmarks/results/step_time_smooth.json   # the two element-wise maps, as the presets train

Prints a table (ms/step, samples/s, parameters) and writes benchmarks/results/step_time.json.
Reference (issue 3): a straightforward implementation (10 couplings/block, MLP width 10,
depth 3, ~50k parameters) took ≈ 510 ms/step at L = 16, batch 256, 2 threads on this 2-core
CPU; the ratio column is 510 ms divided by our time for that case.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from neuralrg import K_C, IsingTarget, build_flat, build_mera

CONTEXT = "neuralrg.flows.context.ContextPlaquetteBijector"
CONTEXT_SPLINE = "neuralrg.flows.context.ContextSplinePlaquetteBijector"


def _context_spline(t, transform: str, coarse: dict | None = None):
    """conf/model/mera_context_spline.yaml at the L = 16 preset's width 48 (the Ising presets' model);
    ``coarse`` as model.coarse."""
    return build_mera(t, coarse=coarse, block={"class": CONTEXT_SPLINE, "kwargs": {
        "n_couplings": 4, "hidden": [48, 48], "activation": "silu", "n_bins": 8, "tail_bound": 5.0,
        "transform": transform}}, decimator_block={"class": CONTEXT, "kwargs": {
            "n_couplings": 8, "hidden": [48, 48], "activation": "silu"}}, precondition=True, skeleton="haar")


REFERENCE_MS = 510.0  # L = 16, batch 256, 2 threads (issue 3)
MODELS = {
    "mera (default)": lambda t: build_mera(t, activation="silu", precondition=True),  # conf/model/mera.yaml
    "mera context": lambda t: build_mera(t, block=CONTEXT, activation="silu", precondition=True,
                                         skeleton="haar"),  # conf/model/mera_context.yaml (L >= 16 presets)
    "mera context spline": lambda t: _context_spline(t, "rational_quadratic"),
    "mera context smooth": lambda t: _context_spline(t, "smooth"),  # model.block.transform=smooth
    "mera context smooth coarse96": lambda t: _context_spline(t, "smooth", {"from_level": 2, "hidden": [96, 96]}),
    "mera context smooth coarse128x3": lambda t: _context_spline(
        t, "smooth", {"from_level": 2, "hidden": [128, 128, 128]}),
    "mera leaky": lambda t: build_mera(t),  # leaky_relu, no preconditioner (the builder's defaults)
    "flat baseline": lambda t: build_flat(t),
}


def time_step(flow: torch.nn.Module, batch: int, repeats: int, warmup: int = 2, path_gradient: bool = False) -> float:
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        if path_gradient:  # as the training module's path_gradient=true: ln q(x) by the inverse, parameters frozen
            _, x, _ = flow.sample_with_latent(batch)
            with flow.frozen():
                loss = (flow.log_prob(x) + flow.target.energy(x)).mean()
        else:
            loss = flow.reverse_kld(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 2, --quick: 2)")
    ap.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS), help="default: all")
    ap.add_argument("--path-gradient", action="store_true", help="time the path-gradient step (one extra inverse)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    args = ap.parse_args()
    Ls, batches, threads = ([16], [256], [2]) if args.quick else ([8, 16, 32], [256, 1024], [1, 2])
    threads = args.threads or threads
    models = {k: v for k, v in MODELS.items() if args.models is None or k in args.models}
    rows = []
    header = f"{'model':<20} {'L':>3} {'batch':>5} {'thr':>3} {'params':>7} {'ms/step':>9} {'samples/s':>10} {'vs 510ms':>8}"
    print(header)
    for L in Ls:
        target = IsingTarget(L, K_C)
        for name, build in models.items():
            torch.manual_seed(0)
            flow = build(target)
            for batch in batches:
                for nt in threads:
                    torch.set_num_threads(nt)
                    reps = args.repeats if L * L * batch <= 256 * 256 else max(2, args.repeats // 2)
                    ms = time_step(flow, batch, reps, path_gradient=args.path_gradient)
                    ratio = REFERENCE_MS / ms if (L, batch, nt) == (16, 256, 2) else None
                    row = dict(model=name, L=L, batch=batch, threads=nt, path_gradient=args.path_gradient,
                               params=flow.num_parameters(),
                               ms_per_step=ms, samples_per_s=batch / ms * 1000, speedup_vs_reference=ratio)
                    rows.append(row)
                    print(f"{name:<20} {L:>3} {batch:>5} {nt:>3} {row['params']:>7} {ms:>9.1f} "
                          f"{row['samples_per_s']:>10.0f} {'' if ratio is None else format(ratio, '.2f') + 'x':>8}")
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads max, "
                      f"torch {torch.__version__}", "reference_ms": REFERENCE_MS, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
