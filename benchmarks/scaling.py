"""Cost against lattice size at K_c: does the default flow grow linearly in N = L²? (issue 18)

    python benchmarks/scaling.py                          # L = 8 … 128, batch 16, 1 thread
    python benchmarks/scaling.py --L 16 32 64 --batch 8 --threads 2 --tag _quick
    python benchmarks/scaling.py --device cuda --batch 256 --model context --tag _gpu_context

Each L runs in its own subprocess (so its peak resident memory is its own) with the default model
of conf/model/mera.yaml (Haar skeleton, preconditioner, 8 RealNVP couplings, hidden [32, 32],
float32; ``--model context``: the context blocks of conf/model/mera_context.yaml; ``--model context_spline``:
conf/model/mera_context_spline.yaml at width 48, the model of the L >= 16 presets) on ``--device`` and
measures, medians over ``--repeats`` (on a GPU timed between ``torch.cuda.synchronize`` calls):

* one reverse-KL training step (sample, loss, backward, Adam) of ``--batch`` samples: ms and µs per
  sample per site;
* one latent-HMC trajectory (``--leapfrog`` leapfrog steps) of ``--batch`` chains: ms and µs per
  chain per site; on a GPU also with the potential replayed from a CUDA graph (``hmc.cuda_graphed``,
  opt-in for the samplers: settings.cuda_graph=true);
* the process's peak resident memory after both (MiB; includes Python + torch, ≈ 300 MiB; on a GPU
  the device's ``max_memory_allocated`` instead), and the growth of the peak over the training
  steps (on a GPU: the device memory the steps allocated beyond the model) beside what ``neuralrg.training.memory.step_memory``
  estimates for one step (the figure ``memory_limit`` checks, without its margin).

Prints a table with the per-site costs relative to L = 16 (the issue's target: within 1.5× from
L = 16 to L = 128) and writes benchmarks/results/scaling<tag>.json. Absolute times are of the
machine named in the JSON; run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


_CTX = "neuralrg.flows.context:ContextPlaquetteBijector"
MODELS = {  # build_mera arguments (besides skeleton, preconditioner, silu) of each --model
    "mera": dict(block=None, n_couplings=8, hidden=[32, 32]),
    "context": dict(block=_CTX, n_couplings=8, hidden=[32, 32]),
    # conf/model/mera_context_spline.yaml at the width of the L >= 16 presets (model.block.hidden=[48,48])
    "context_spline": dict(block="neuralrg.flows.context:ContextSplinePlaquetteBijector", n_couplings=4, hidden=[48, 48],
                           decimator_block={"class": _CTX, "kwargs": dict(n_couplings=8, hidden=[48, 48],
                                                                          activation="silu")}),
}


def measure(L: int, batch: int, repeats: int, leapfrog: int, threads: int, device: str = "cpu",
            model: str = "mera") -> dict:
    import torch

    from neuralrg import K_C, IsingTarget, build_mera
    from neuralrg.sampling.hmc import cuda_graphed, hmc_step, make_potential_and_grad
    from neuralrg.sampling.latent import latent_potential
    from neuralrg.training.memory import step_memory

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    target = IsingTarget(L, K_C)
    flow = build_mera(target, skeleton="haar", precondition="auto", activation="silu", **MODELS[model]).to(dev)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
        base_alloc = torch.cuda.memory_allocated(dev)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-4)
    n_sites = L * L
    rss_mib = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (KiB on Linux)
    before = rss_mib()

    def median_ms(fn) -> float:
        """Median wall ms of ``fn()`` over ``repeats`` calls after one untimed call (synchronised on a GPU)."""
        times = []
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i:
                times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)

    def train_step() -> None:
        loss = flow.reverse_kld(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step = median_ms(train_step)
    step_peak = rss_mib() - before
    if cuda:  # on a GPU the figure that matters is the device's: peak allocated by the steps
        step_peak = (torch.cuda.max_memory_allocated(dev) - base_alloc) / 2**20
    estimate = step_memory(flow).total(batch) / 2**20  # after the steps: its probes stay below their peak
    flow.eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    pg = make_potential_and_grad(latent_potential(flow))
    g = torch.Generator(device=dev).manual_seed(1)
    z = torch.randn(batch, L, L, generator=g, device=dev)
    state = [z, *pg(z)]

    def trajectory(potential_and_grad) -> None:
        state[:] = hmc_step(*state, potential_and_grad, step_size=0.1, n_leapfrog=leapfrog, generator=g)[:3]

    traj = median_ms(lambda: trajectory(pg))
    graph_ms = None
    if cuda:  # the same trajectories with the potential replayed from one CUDA graph (hmc.cuda_graphed)
        gpg = cuda_graphed(pg, z)
        if gpg is pg:
            raise RuntimeError("CUDA graph capture failed (see the warning): no graph timing to report")
        graph_ms = median_ms(lambda: trajectory(gpg))
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else rss_mib()
    return {"L": L, "N": n_sites, "params": sum(p.numel() for p in flow.parameters()), "batch": batch,
            "train_step_ms": step, "train_us_per_sample_site": 1000 * step / (batch * n_sites),
            "hmc_trajectory_ms": traj, "hmc_us_per_chain_site": 1000 * traj / (batch * n_sites),
            "hmc_trajectory_cuda_graph_ms": graph_ms, "leapfrog": leapfrog, "peak_rss_mib": peak,
            "train_step_peak_growth_mib": step_peak,
            "train_step_estimate_mib": estimate, "device": str(dev), "model": model,
            "device_name": torch.cuda.get_device_name(dev) if cuda else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--L", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--leapfrog", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="")
    ap.add_argument("--model", choices=sorted(MODELS), default="mera",
                    help="mera: conf/model/mera.yaml; context: conf/model/mera_context.yaml; context_spline: "
                         "conf/model/mera_context_spline.yaml at width 48 (the L >= 16 presets)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (on a GPU: peak MiB is the device's "
                    "max_memory_allocated, not the process's resident memory)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: measure one L, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.batch, args.repeats, args.leapfrog, args.threads, args.device,
                                 args.model)))
        return
    rows = []
    for L in args.L:
        cmd = [sys.executable, __file__, "--one", str(L), "--batch", str(args.batch), "--repeats", str(args.repeats),
               "--leapfrog", str(args.leapfrog), "--threads", str(args.threads), "--device", args.device,
               "--model", args.model]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"L={L}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            rows.append({"L": L, "error": res.stderr[-500:]})
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(f"L={L} done", file=sys.stderr, flush=True)
    ok = [r for r in rows if "error" not in r]
    ref = next((r for r in ok if r["L"] == 16), ok[0] if ok else None)
    print(f"{'L':>4} {'params':>8} {'step ms':>9} {'µs/(sample·site)':>17} {'vs L16':>7} {'traj ms':>9} "
          f"{'µs/(chain·site)':>16} {'vs L16':>7} {'peak MiB':>9} {'step ΔMiB':>9} {'est. MiB':>9}")
    for r in ok:
        print(f"{r['L']:>4} {r['params']:>8} {r['train_step_ms']:9.1f} {r['train_us_per_sample_site']:17.2f} "
              f"{r['train_us_per_sample_site'] / ref['train_us_per_sample_site']:7.2f} {r['hmc_trajectory_ms']:9.1f} "
              f"{r['hmc_us_per_chain_site']:16.2f} {r['hmc_us_per_chain_site'] / ref['hmc_us_per_chain_site']:7.2f} "
              f"{r['peak_rss_mib']:9.0f} {r['train_step_peak_growth_mib']:9.0f} {r['train_step_estimate_mib']:9.0f}"
              + (f"  graph traj ms {r['hmc_trajectory_cuda_graph_ms']:.1f}"
                 if r.get("hmc_trajectory_cuda_graph_ms") is not None else ""))
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
           "device": args.device, "model": args.model, "batch": args.batch,
           "load_average_at_end": os.getloadavg(), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scaling{args.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"written {path}")


if __name__ == "__main__":
    main()
