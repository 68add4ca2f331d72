"""The package on a CUDA device: every flow block, target and sampler runs there and agrees with the CPU.

Skipped without CUDA (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``. A
hard-coded CPU tensor or dtype anywhere on these paths fails here, not on a user's cluster.
``NEURALRG_TEST_DEVICE=cpu`` runs the same checks CPU against CPU (a dry run of this file).
"""
import math
import os

import pytest
import torch

from neuralrg import IsingTarget, build_flat, build_mera
from neuralrg.physics.lattice import K_C
from neuralrg.physics.phi4 import Phi4Target
from neuralrg.sampling.chains import summarize_run
from neuralrg.sampling.registry import available, resolve_settings, run_sampler, unsupported_reason

DEV = torch.device(os.environ.get("NEURALRG_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEV.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")
F64 = torch.float64

BLOCKS = {
    "affine": None,
    "odd": "neuralrg.flows.OddPlaquetteBijector",
    "context": "neuralrg.flows.context.ContextPlaquetteBijector",
    "site": "neuralrg.flows.site.SitePlaquetteBijector",
    "spline": "neuralrg.flows.spline.SplinePlaquetteBijector",
    "context_spline": "neuralrg.flows.context.ContextSplinePlaquetteBijector",
    "site_spline": "neuralrg.flows.site.SiteSplinePlaquetteBijector",
}


def randomised(flow: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def flow_pair(target, **kw):
    """The same randomised float64 flow on the CPU and on the GPU."""
    torch.manual_seed(0)
    cpu = randomised(build_mera(target, **kw).to(F64))
    torch.manual_seed(0)
    gpu = randomised(build_mera(target, **kw).to(F64)).to(DEV)
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("block", sorted(BLOCKS))
@pytest.mark.parametrize("skeleton,z2", [("haar", False), ("none", True)])
def test_flows_agree_with_cpu(block, skeleton, z2):
    target = IsingTarget(8, K_C)
    cpu, gpu = flow_pair(target, block=BLOCKS[block], skeleton=skeleton, z2=z2, precondition=True,
                         n_couplings=2, hidden=[8])
    z = torch.randn(5, 8, 8, dtype=F64)
    x_c, ld_c = cpu.forward_and_log_det(z)
    x_g, ld_g = gpu.forward_and_log_det(z.to(DEV))
    assert x_g.device.type == DEV.type and ld_g.device.type == DEV.type and x_g.dtype == F64
    assert torch.allclose(x_g.cpu(), x_c, atol=1e-10) and torch.allclose(ld_g.cpu(), ld_c, atol=1e-8)
    z_back, ld_inv = gpu.inverse_and_log_det(x_g)
    assert (z_back.cpu() - z).abs().max() < 1e-10 and (ld_g + ld_inv).abs().max() < 1e-8
    assert torch.allclose(gpu.log_prob(x_g).cpu(), cpu.log_prob(x_c), atol=1e-8)
    xs, lq = gpu.sample(4)
    assert xs.device.type == DEV.type and lq.device.type == DEV.type and torch.isfinite(lq).all()
    loss = gpu.reverse_kld(8)
    loss.backward()
    assert all(p.grad is None or p.grad.device.type == DEV.type for p in gpu.parameters())


def test_flat_flow_and_float32_on_cuda():
    target = IsingTarget(8, K_C)
    flow = build_flat(target).to(DEV)
    x, lq = flow.sample(16)
    assert x.device.type == DEV.type and x.dtype == torch.float32 and torch.isfinite(lq).all()
    flow = build_mera(target, precondition=True).to(DEV)
    x, lq = flow.sample(16)
    assert x.dtype == torch.float32 and torch.allclose(flow.log_prob(x), lq, atol=1e-2)


@pytest.mark.parametrize("target", [IsingTarget(8, K_C), IsingTarget(8, -0.4), IsingTarget(8, 0.4, K_y=0.2),
                                    IsingTarget(8, 0.5, disorder="pm_j", seed=1), Phi4Target(8, 0.2, 0.5)],
                         ids=["ising", "afm", "aniso", "glass", "phi4"])
def test_targets_agree_with_cpu(target):
    x = torch.randn(6, 8, 8, dtype=F64)
    lp_c, lp_g = target.log_prob(x), target.log_prob(x.to(DEV))
    assert lp_g.device.type == DEV.type and torch.allclose(lp_g.cpu(), lp_c, atol=1e-9)


@pytest.mark.parametrize("name", sorted(available()))
def test_every_sampler_runs_on_cuda(name):
    """Each sampler on a CUDA flow: finite observables on the flow's device, a sane energy at L = 4."""
    target = IsingTarget(4, 0.3)
    assert unsupported_reason(name, target) is None  # every sampler applies to the uniform Ising model
    torch.manual_seed(0)
    flow = build_mera(target, precondition=True, n_couplings=2, hidden=[8]).to(DEV)
    flow.eval()
    s = resolve_settings(name, {"n_chains": 8, "n_warmup": 10, "n_samples": 20})
    run = run_sampler(name, flow, target, s, torch.Generator(device=DEV).manual_seed(0))
    for v in run.observables.values():
        assert v.device.type == DEV.type and torch.isfinite(v.double()).all()
    e = summarize_run(run, target)["observables"]["energy_per_site"]["mean"]
    assert math.isfinite(e) and -2.0 < e < 0.0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cuda_graphed_potential_matches_eager(dtype):
    """A captured latent potential replays the eager values, returns fresh tensors, falls back on other shapes."""
    from neuralrg.sampling.hmc import cuda_graphed, make_potential_and_grad
    from neuralrg.sampling.latent import latent_potential

    torch.manual_seed(0)
    flow = randomised(build_mera(IsingTarget(8, K_C), block=BLOCKS["context"], precondition=True, skeleton="haar",
                                 n_couplings=2, hidden=[8]).to(dtype)).to(DEV)
    with flow.frozen():
        pg = make_potential_and_grad(latent_potential(flow))
        z = torch.randn(16, 8, 8, dtype=dtype, device=DEV)
        gpg = cuda_graphed(pg, z)
        assert (gpg is pg) == (DEV.type != "cuda")
        tol = 1e-10 if dtype == F64 else 1e-4
        for _ in range(3):
            z = torch.randn(16, 8, 8, dtype=dtype, device=DEV)
            (U, g), (U1, g1) = pg(z), gpg(z)
            assert torch.allclose(U1, U, rtol=tol, atol=tol) and torch.allclose(g1, g, rtol=tol, atol=tol)
        U2, _ = gpg(torch.randn(16, 8, 8, dtype=dtype, device=DEV))
        assert not torch.equal(U2, U1), "a replay must not overwrite what an earlier call returned"
        z5 = torch.randn(5, 8, 8, dtype=dtype, device=DEV)
        assert torch.allclose(gpg(z5)[0], pg(z5)[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["latent_hmc", "physical_hmc", "latent_hmc_flow_mh"])
def test_cuda_graph_runs_the_same_chains(name):
    """With and without the CUDA graph the same seed gives the same chains (same kernels, same order)."""
    target = IsingTarget(4, 0.3)
    torch.manual_seed(0)
    flow = build_mera(target, precondition=True, n_couplings=2, hidden=[8]).to(F64).to(DEV)
    flow.eval()
    runs = []
    for graph in (False, True):
        s = resolve_settings(name, {"n_chains": 8, "n_warmup": 10, "n_samples": 20}, {"cuda_graph": graph})
        runs.append(run_sampler(name, flow, target, s, torch.Generator(device=DEV).manual_seed(3)))
    for key, v in runs[0].observables.items():
        assert torch.allclose(runs[1].observables[key], v, rtol=1e-8, atol=1e-8), key
