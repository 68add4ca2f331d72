"""Tests for neuralrg.sampling.hmc: invariance, integrator properties, adaptation, blocking."""
from __future__ import annotations

import math

import pytest
import torch

from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C
from neuralrg.sampling.hmc import (DualAveraging, hmc_step, leapfrog, make_potential_and_grad, n_leapfrog_for,
                                   run_hmc)

torch.set_num_threads(1)
F64 = torch.float64


# ----------------------------------------------------------------------------- helpers
def correlated_cov(d: int) -> torch.Tensor:
    """A fixed, strongly non-diagonal covariance with eigenvalues spread over ~1.5 decades."""
    if d == 2:
        return torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
    g = torch.Generator().manual_seed(1234)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
    eig = torch.logspace(-1.0, 0.5, d, dtype=F64)
    return (q * eig) @ q.T


def gaussian(cov: torch.Tensor):
    prec = torch.linalg.inv(cov)

    def potential(x):
        return 0.5 * torch.einsum("ci,ij,cj->c", x, prec, x)

    def grad_fn(x):
        g = x @ prec
        return 0.5 * (x * g).sum(1), g

    return potential, grad_fn


def check_gaussian_moments(samples: torch.Tensor, cov: torch.Tensor, n_sigma: float = 4.5) -> None:
    """samples (T, C, d) of a zero-mean Gaussian: compare mean and E[x xᵀ] with their truth.

    Error bars from the spread of per-chain time averages over the C independent chains, so
    autocorrelation within a chain is accounted for without modelling it.
    """
    T, C, d = samples.shape
    chain_mean = samples.mean(0)                                            # (C, d)
    chain_mom2 = torch.einsum("tci,tcj->cij", samples, samples) / T         # (C, d, d)
    mean, mean_err = chain_mean.mean(0), chain_mean.std(0) / math.sqrt(C)
    mom2, mom2_err = chain_mom2.mean(0), chain_mom2.std(0) / math.sqrt(C)
    scale = cov.diagonal().sqrt()
    # the test must have power: error bars well below the size of the entries
    assert (mean_err / scale).max() < 0.05
    assert (mom2_err / torch.outer(scale, scale)).max() < 0.05
    assert ((mean / mean_err).abs() < n_sigma).all(), (mean, mean_err)
    z = (mom2 - cov) / mom2_err
    assert (z.abs() < n_sigma).all(), (mom2, cov, z)


def ising_potential(L: int = 4):
    target = IsingTarget(L, K_C)
    return target, target.energy


# ----------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("d", [2, 5])
def test_gaussian_invariance_from_offset_start(d):
    cov = correlated_cov(d)
    potential, _ = gaussian(cov)
    g = torch.Generator().manual_seed(10 + d)
    # start far from the target: all chains at mean +3 with a narrow spread
    x0 = 3.0 + 0.1 * torch.randn(256, d, dtype=F64, generator=g)
    res = run_hmc(potential, x0, n_warmup=100, n_samples=300, step_size=0.1, n_leapfrog=10,
                  generator=g, keep_samples=True)
    assert res.samples.shape == (300, 256, d)
    check_gaussian_moments(res.samples, cov)
    assert 0.6 < float(res.mean_accept) <= 1.0


def test_blocked_gaussian_invariance_two_complementary_blocks():
    d = 5
    cov = correlated_cov(d)
    potential, _ = gaussian(cov)
    a = torch.tensor([True, False, True, False, True])
    g = torch.Generator().manual_seed(7)
    x0 = -2.0 + 0.1 * torch.randn(256, d, dtype=F64, generator=g)
    res = run_hmc(potential, x0, n_warmup=100, n_samples=300, step_size=0.1, n_leapfrog=8,
                  blocks=[a, (~a).to(F64)], generator=g, keep_samples=True)
    assert res.step_size.shape == (2,) and res.accept_prob.shape == (300, 2, 256)
    check_gaussian_moments(res.samples, cov)


def test_fixed_trajectory_length_invariance_and_leapfrog_count():
    """trajectory_length T: every move takes ceil(T/eps) steps at the adapted eps, and the chain
    still targets the Gaussian; counts of gradient evaluations follow, per block."""
    assert n_leapfrog_for(1.0, 0.1) == 10 and n_leapfrog_for(1.0, 0.3) == 4 and n_leapfrog_for(0.01, 0.5) == 1
    d = 5
    cov = correlated_cov(d)
    potential, _ = gaussian(cov)
    g = torch.Generator().manual_seed(21)
    x0 = 2.0 + 0.1 * torch.randn(256, d, dtype=F64, generator=g)
    a = torch.tensor([True, False, True, False, True])
    res = run_hmc(potential, x0, n_warmup=100, n_samples=300, step_size=0.1, n_leapfrog=1, trajectory_length=2.0,
                  blocks=[a, ~a], generator=g, keep_samples=True)
    check_gaussian_moments(res.samples, cov)
    want = [math.ceil(2.0 / float(e)) for e in res.step_size]
    assert res.n_leapfrog == want and min(want) >= 2  # n_leapfrog (1) is ignored
    assert res.n_grad_evals - res.n_grad_evals_warmup == 300 * sum(want)
    fixed = run_hmc(potential, x0, n_warmup=3, n_samples=4, step_size=0.1, n_leapfrog=6, generator=g)
    assert fixed.n_leapfrog == [6] and fixed.n_grad_evals == 1 + 7 * 6


# ----------------------------------------------------------------------------- integrator
@pytest.mark.parametrize("masked", [False, True])
def test_leapfrog_reversibility_and_outputs(masked):
    target, energy = ising_potential(4)
    pg = make_potential_and_grad(energy)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(8, 4, 4, dtype=F64, generator=g)
    p0 = torch.randn(8, 4, 4, dtype=F64, generator=g)
    mask = None
    if masked:
        mask = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 == 0
        p0 = p0 * mask
    U0, g0 = pg(x0)
    x1, p1, U1, g1 = leapfrog(x0, p0, g0, pg, 0.05, 40, mask=mask)
    assert not torch.allclose(x1, x0)
    # returned potential and gradient are those of the end point (analytic reference)
    torch.testing.assert_close(U1, energy(x1), rtol=0, atol=1e-12)
    torch.testing.assert_close(g1, target.grad_energy(x1), rtol=0, atol=1e-12)
    x2, p2, U2, _ = leapfrog(x1, -p1, g1, pg, torch.tensor(0.05, dtype=F64), 40, mask=mask)
    assert (x2 - x0).abs().max() < 1e-12
    assert (p2 + p0).abs().max() < 1e-12
    assert (U2 - U0).abs().max() < 1e-10
    if masked:
        assert torch.equal(x1[:, ~mask], x0[:, ~mask])


def test_energy_error_scales_as_step_size_squared():
    _, energy = ising_potential(4)
    pg = make_potential_and_grad(energy)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randn(32, 4, 4, dtype=F64, generator=g)
    p0 = torch.randn(32, 4, 4, dtype=F64, generator=g)
    U0, g0 = pg(x0)
    h0 = U0 + 0.5 * p0.square().sum((1, 2))
    errs = []
    for eps, n in [(0.1, 10), (0.05, 20), (0.025, 40)]:  # same trajectory length 1
        _, p, U, _ = leapfrog(x0, p0, g0, pg, eps, n)
        errs.append(float((U + 0.5 * p.square().sum((1, 2)) - h0).abs().mean()))
    assert errs[0] > 1e-4  # well above rounding
    for big, small in zip(errs, errs[1:]):
        assert 3.0 < big / small < 5.0, errs


# ----------------------------------------------------------------------------- adaptation
@pytest.mark.parametrize("target", [0.6, 0.8])
def test_dual_averaging_reaches_target_on_deterministic_curve(target):
    # acceptance exp(-ε/0.5): the fixed point is ε* = -0.5 ln(target)
    da = DualAveraging(1.0, target)
    assert da.final_step_size == 1.0
    eps = da.step_size
    for _ in range(2000):
        eps = da.adapt(math.exp(-eps / 0.5))
    assert da.final_step_size == pytest.approx(-0.5 * math.log(target), rel=0.02)
    # a non-finite acceptance counts as zero and shrinks the step
    before = da.step_size
    assert da.adapt(float("nan")) < before


@pytest.mark.parametrize("target", [0.6, 0.8])
def test_dual_averaging_hmc_acceptance(target):
    d = 10
    scales = torch.logspace(math.log10(0.5), math.log10(1.5), d, dtype=F64)

    def potential(x):
        return 0.5 * (x / scales).square().sum(1)

    g = torch.Generator().manual_seed(11)
    x0 = torch.randn(64, d, dtype=F64, generator=g) * scales
    res = run_hmc(potential, x0, n_warmup=200, n_samples=100, step_size=0.05, n_leapfrog=10,
                  target_accept=target, generator=g)
    assert res.step_size.item() != 0.05
    assert abs(float(res.mean_accept) - target) < 0.1
    # frozen: without adaptation the step size is left alone
    res2 = run_hmc(potential, x0, n_warmup=5, n_samples=2, step_size=0.05, n_leapfrog=2, adapt=False,
                   generator=g)
    assert res2.step_size.item() == 0.05


# ----------------------------------------------------------------------------- blocking
def test_mask_leaves_unmasked_coordinates_bit_identical():
    _, energy = ising_potential(4)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(16, 4, 4, dtype=F64, generator=g)
    x0[:, 0, 1] = -0.0  # signed zeros must survive too
    mask = torch.zeros(4, 4, dtype=torch.int64)
    mask[:2] = 1  # 0/1 integer mask, top half moves
    res = run_hmc(energy, x0, n_warmup=10, n_samples=10, step_size=0.2, n_leapfrog=5, blocks=[mask],
                  generator=g, keep_samples=True)
    m = mask.bool()
    bits = res.samples.view(torch.int64)
    assert torch.equal(bits[:, :, ~m], x0.view(torch.int64)[None, :, ~m].expand(10, -1, -1))
    assert (res.samples[:, :, m] != x0[None, :, m]).float().mean() > 0.5
    # per-chain masks (C, L, L): each chain moves only its own coordinates
    pm = torch.rand(16, 4, 4, generator=g) < 0.5
    pm[:, 0, 0] = True
    res = run_hmc(energy, x0, n_warmup=0, n_samples=5, step_size=0.2, n_leapfrog=5, blocks=[pm],
                  generator=g)
    assert torch.equal(res.x_final.view(torch.int64)[~pm], x0.view(torch.int64)[~pm])
    assert not torch.equal(res.x_final[pm], x0[pm])


# ----------------------------------------------------------------------------- bookkeeping
def test_analytic_grad_matches_autograd_chain_gaussian():
    cov = correlated_cov(5)
    potential, grad_fn = gaussian(cov)
    x0 = torch.randn(16, 5, dtype=F64, generator=torch.Generator().manual_seed(0))
    a = torch.tensor([True, True, False, False, True])
    # Without adaptation the two chains agree to rounding. With adaptation, early warm-up
    # trajectories with too large steps blow up and their ΔH (hence the adapted step size)
    # carries large absolute rounding errors, so that comparison is looser.
    for blocks, adapt, tol in [(None, False, 1e-12), ([a, ~a], False, 1e-12), (None, True, 1e-5),
                               ([a, ~a], True, 1e-5)]:
        kw = dict(n_warmup=20, n_samples=20, step_size=0.3, n_leapfrog=6, blocks=blocks, adapt=adapt,
                  keep_samples=True)
        r1 = run_hmc(potential, x0, generator=torch.Generator().manual_seed(99), **kw)
        r2 = run_hmc(None, x0, grad_fn=grad_fn, generator=torch.Generator().manual_seed(99), **kw)
        torch.testing.assert_close(r1.samples, r2.samples, rtol=0, atol=tol)
        torch.testing.assert_close(r1.step_size, r2.step_size, rtol=tol, atol=0)
        torch.testing.assert_close(r1.accept_prob, r2.accept_prob, rtol=0, atol=tol)
        assert 0.2 < float(r1.accept_prob.mean()) < 1.0
        assert r1.n_grad_evals == r2.n_grad_evals
        # a different seed gives a different chain
        r3 = run_hmc(potential, x0, generator=torch.Generator().manual_seed(100), **kw)
        assert not torch.allclose(r1.samples, r3.samples)


def test_analytic_grad_matches_autograd_chain_ising():
    # the Ising relaxation with its analytic gradient A⁻¹x − tanh x; the dynamics is chaotic, so
    # rounding differences (~1e-16) between the two gradient paths grow: compare loosely
    target, energy = ising_potential(4)
    a = torch.zeros(4, 4, dtype=torch.bool)
    a[::2, ::2] = True

    def grad_fn(x):
        return target.energy(x), target.grad_energy(x)

    x0 = torch.randn(8, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    kw = dict(n_warmup=10, n_samples=10, step_size=0.1, n_leapfrog=6, blocks=[a, ~a], keep_samples=True)
    r1 = run_hmc(energy, x0, generator=torch.Generator().manual_seed(99), **kw)
    r2 = run_hmc(None, x0, grad_fn=grad_fn, generator=torch.Generator().manual_seed(99), **kw)
    torch.testing.assert_close(r1.samples, r2.samples, rtol=0, atol=1e-6)
    torch.testing.assert_close(r1.accept_prob, r2.accept_prob, rtol=0, atol=1e-6)


def test_result_bookkeeping_observe_thin_and_traces():
    cov = correlated_cov(2)
    potential, _ = gaussian(cov)
    x0 = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    calls = []

    def observe(x):
        calls.append(1)
        return {"x0": x[:, 0].clone(), "r2": x.square().sum(1).float()}

    res = run_hmc(potential, x0, n_warmup=4, n_samples=5, thin=3, step_size=0.3, n_leapfrog=7,
                  blocks=[torch.tensor([True, False]), torch.tensor([False, True])], observe=observe,
                  generator=torch.Generator().manual_seed(2), keep_samples=True)
    assert len(calls) == 5
    assert res.samples.shape == (5, 6, 2) and res.potential.shape == (6, 5)
    assert res.observables["x0"].shape == (6, 5) and res.observables["r2"].dtype == torch.float32
    torch.testing.assert_close(res.observables["x0"], res.samples[:, :, 0].T)
    torch.testing.assert_close(res.potential, potential(res.samples.reshape(-1, 2)).reshape(5, 6).T)
    torch.testing.assert_close(res.x_final, res.samples[-1])
    assert res.accept_prob.shape == (15, 2, 6) and res.warmup_accept_prob.shape == (4, 2)
    assert ((res.accept_prob >= 0) & (res.accept_prob <= 1)).all()
    assert res.n_grad_evals_warmup == 1 + 4 * 2 * 7
    assert res.n_grad_evals == 1 + (4 + 15) * 2 * 7
    assert res.warmup_time > 0 and res.sampling_time > 0
    assert res.mean_accept.shape == (2,)


def test_non_finite_energy_is_rejected():
    # U = x²/2 on x < 1, NaN beyond (a "wall" the chains must never cross)
    def potential(x):
        u = 0.5 * x.square().sum(1)
        return torch.where(x[:, 0] < 1.0, u, torch.full_like(u, float("nan")))

    x0 = torch.zeros(64, 1, dtype=F64)
    res = run_hmc(potential, x0, n_warmup=0, n_samples=50, step_size=0.5, n_leapfrog=4, adapt=False,
                  generator=torch.Generator().manual_seed(4), keep_samples=True)
    assert (res.samples < 1.0).all()
    assert torch.isfinite(res.accept_prob).all() and (res.accept_prob == 0).any()
    with pytest.raises(ValueError, match="x0"):
        run_hmc(potential, torch.full((3, 1), 2.0, dtype=F64), n_warmup=0, n_samples=1)


def test_hmc_step_rejection_keeps_state_exactly():
    cov = correlated_cov(2)
    potential, grad_fn = gaussian(cov)
    x = torch.randn(32, 2, dtype=F64, generator=torch.Generator().manual_seed(8))
    U, gr = grad_fn(x)
    x1, U1, g1, a, acc = hmc_step(x, U, gr, grad_fn, 0.6, 3, generator=torch.Generator().manual_seed(9))
    assert (~acc).any() and acc.any()
    assert torch.equal(x1[~acc], x[~acc]) and torch.equal(U1[~acc], U[~acc])
    torch.testing.assert_close(U1, potential(x1), rtol=0, atol=1e-12)
    torch.testing.assert_close(g1, grad_fn(x1)[1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- validation
def _pot(x):
    return 0.5 * x.square().sum(1)


@pytest.mark.parametrize("kwargs, param", [
    (dict(n_samples=0), "n_samples"),
    (dict(step_size=0.0), "step_size"),
    (dict(step_size=-0.1), "step_size"),
    (dict(step_size=float("nan")), "step_size"),
    (dict(step_size=float("inf")), "step_size"),
    (dict(step_size=torch.tensor([0.1, 0.2])), "step_size"),
    (dict(n_leapfrog=0), "n_leapfrog"),
    (dict(n_leapfrog=2.5), "n_leapfrog"),
    (dict(n_warmup=-1), "n_warmup"),
    (dict(thin=0), "thin"),
    (dict(target_accept=1.0), "target_accept"),
    (dict(trajectory_length=0.0), "trajectory_length"),
    (dict(trajectory_length=-1.0), "trajectory_length"),
    (dict(trajectory_length=float("inf")), "trajectory_length"),
    (dict(x0=torch.zeros(0, 3, dtype=F64)), "x0"),
    (dict(x0=torch.zeros(4, 3, dtype=torch.int64)), "x0"),
    (dict(blocks=[torch.ones(4, dtype=torch.bool)]), "blocks"),
    (dict(blocks=[torch.tensor([0, 2, 1])]), "blocks"),
    (dict(blocks=[torch.zeros(3, dtype=torch.bool)]), "blocks"),
    (dict(blocks=[]), "blocks"),
    (dict(blocks=[torch.ones(3, dtype=torch.bool)], step_size=[0.1, 0.1]), "step_size"),
    (dict(potential=None), "potential"),
    (dict(grad_fn=lambda x: (x.sum(), x)), "grad_fn"),
    (dict(potential=lambda x: x.square()), "potential"),
])
def test_bad_inputs_raise(kwargs, param):
    args = dict(potential=_pot, x0=torch.zeros(4, 3, dtype=F64), n_warmup=1, n_samples=2, n_leapfrog=2)
    args.update(kwargs)
    potential, x0 = args.pop("potential"), args.pop("x0")
    with pytest.raises(ValueError, match=param):
        run_hmc(potential, x0, **args)


def test_bad_inputs_low_level():
    x = torch.zeros(4, 3, dtype=F64)
    pg = make_potential_and_grad(_pot)
    U, g = pg(x)
    with pytest.raises(ValueError, match="step_size"):
        leapfrog(x, x, g, pg, -1.0, 3)
    with pytest.raises(ValueError, match="n_steps"):
        leapfrog(x, x, g, pg, 0.1, 0)
    with pytest.raises(ValueError, match="mask"):
        leapfrog(x, x, g, pg, 0.1, 2, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="target_accept"):
        DualAveraging(0.1, 0.0)
    with pytest.raises(ValueError, match="initial_step_size"):
        DualAveraging(0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reproducible_and_on_device():
    _, energy = ising_potential(4)
    x0 = torch.randn(32, 4, 4, device="cuda", dtype=torch.float32)
    kw = dict(n_warmup=10, n_samples=10, n_leapfrog=5, keep_samples=True,
              observe=lambda x: {"m": x.mean((1, 2))})
    r1 = run_hmc(energy, x0, generator=torch.Generator(device="cuda").manual_seed(0), **kw)
    r2 = run_hmc(energy, x0, generator=torch.Generator(device="cuda").manual_seed(0), **kw)
    assert r1.samples.is_cuda and r1.observables["m"].is_cuda and r1.samples.dtype == torch.float32
    assert torch.equal(r1.samples, r2.samples)
    with pytest.raises(ValueError, match="generator"):
        run_hmc(energy, x0, n_warmup=0, n_samples=1, generator=torch.Generator())


def test_cuda_graph_option_off_cuda_and_bad_values():
    """On the CPU ``cuda_graph`` changes nothing; a non-bool value is a clear error (driver and sampler settings)."""
    from neuralrg.sampling.hmc import cuda_graphed, make_potential_and_grad
    from neuralrg.sampling.registry import resolve_settings

    _, energy = ising_potential(4)
    pg = make_potential_and_grad(energy)
    assert cuda_graphed(pg, torch.zeros(3, 4, 4)) is pg
    x0 = torch.randn(8, 4, 4, generator=torch.Generator().manual_seed(1))
    kw = dict(n_warmup=5, n_samples=5, n_leapfrog=3, keep_samples=True)
    r1 = run_hmc(energy, x0, generator=torch.Generator().manual_seed(0), cuda_graph=True, **kw)
    r2 = run_hmc(energy, x0, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(r1.samples, r2.samples)
    with pytest.raises(ValueError, match="cuda_graph"):
        run_hmc(energy, x0, generator=torch.Generator().manual_seed(0), cuda_graph="yes", **kw)
    with pytest.raises(ValueError, match="cuda_graph"):
        resolve_settings("latent_hmc", {}, {"cuda_graph": 1})
