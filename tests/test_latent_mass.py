"""Latent HMC with a diagonal mass per RG level (``mass="level"``): the Hutchinson estimate of the
mean Hessian diagonal per level against the autograd Hessian, the scales follow a stiffer level,
exactness at L = 4, K_c against Kaufman, and a clear error for an unknown mass."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny_trained_flow
from neuralrg.physics.exact import exact_solution
from neuralrg.physics.lattice import K_C
from neuralrg.sampling.chains import summarize_run
from neuralrg.sampling.latent import latent_potential, level_step_scales
from neuralrg.sampling.registry import resolve_settings, run_sampler
from neuralrg.sampling.samplers.latent_hmc import run_latent_hmc

torch.set_num_threads(1)
F64 = torch.float64


def test_level_scales_are_the_mean_hessian_diagonal_per_level():
    f = tiny_trained_flow().to(F64)
    z1 = torch.randn(1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    with f.frozen():
        H = torch.autograd.functional.hessian(lambda v: latent_potential(f)(v.reshape(1, 4, 4)).sum(),
                                              z1.reshape(-1)).diagonal().reshape(4, 4)
        z = z1.expand(20000, 4, 4).contiguous()  # one state, many Rademacher probes: the estimate converges
        s = level_step_scales(f, z, bounds=(1e-3, 1e3), generator=torch.Generator().manual_seed(1))
    levels = f.latent_levels
    for k in range(int(levels.max()) + 1):
        c = H[levels == k].mean()
        assert float(s[levels == k].unique().numel()) == 1
        assert float(s[levels == k][0]) == pytest.approx(float(c.rsqrt()), rel=0.05), k
    assert s.dtype == F64


def test_level_mass_latent_hmc_is_exact():
    f = tiny_trained_flow(z2=True)
    s = resolve_settings("latent_hmc", None, dict(n_chains=32, n_warmup=30, n_samples=150, n_leapfrog=4,
                                                   step_size=0.3, mass="level"))
    r = run_sampler("latent_hmc", f, f.target, s, torch.Generator().manual_seed(4))
    summ = summarize_run(r, f.target)
    assert r.settings["mass"] == "level" and len(r.settings["level_step_scale"]) == f.n_levels
    assert 0.5 < r.accept < 0.95
    exact = exact_solution(4, K_C)["energy_per_site"]
    obs = summ["observables"]["energy_per_site"]
    assert 0 < obs["err"] < 0.03 and abs(obs["mean"] - exact) < 4 * obs["err"], (obs, exact)
    torch.testing.assert_close(r.energy, f.target.energy(r.x))


def test_unknown_mass_is_refused():
    f = tiny_trained_flow()
    with pytest.raises(ValueError, match="mass must be one of"):
        run_latent_hmc(f, n_chains=2, n_warmup=1, n_samples=2, mass="diag")
