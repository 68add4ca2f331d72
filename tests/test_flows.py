"""Flows: invertibility, log-det against the autograd Jacobian, structure of the hierarchy."""
import math

import pytest
import torch

from neuralrg import IsingTarget, build_flat, build_mera, latent_levels
from neuralrg.flows import PlaquetteBijector

KC = 0.44068679350977147


def randomise(flow, scale=0.05, seed=0):
    """Move every parameter away from the identity initialisation (values stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def make(kind, L, z2=False, dtype=torch.float64, **kw):
    t = IsingTarget(L, KC)
    f = build_mera(t, z2=z2, **kw) if kind == "mera" else build_flat(t, z2=z2, **kw)
    return randomise(f.to(dtype))


@pytest.mark.parametrize("kind", ["mera", "flat"])
@pytest.mark.parametrize("L", [4, 8, 16])
@pytest.mark.parametrize("z2", [False, True])
def test_round_trips(kind, L, z2):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        f = make(kind, L, z2=z2, dtype=dtype)
        z = torch.randn(6, L, L, dtype=dtype)
        x, ld = f.forward_and_log_det(z)
        assert x.dtype == dtype and ld.dtype == dtype
        assert not torch.allclose(x, z, atol=1e-3), "weights must be away from the identity"
        z_back, ld_inv = f.inverse_and_log_det(x)
        assert (z_back - z).abs().max() <= tol
        assert (ld + ld_inv).abs().max() <= tol * L * L
        x2 = torch.randn(6, L, L, dtype=dtype)
        x_back = f.forward(f.inverse(x2))
        assert (x_back - x2).abs().max() <= tol
        # log q from sampling equals log_prob of the same x (Z2 included)
        xs, lq = f.sample(5)
        assert torch.allclose(lq, f.log_prob(xs), atol=tol * L * L * 10)


def _jacobian_logdet(f, z):
    L = z.shape[-1]
    J = torch.autograd.functional.jacobian(lambda v: f.forward(v.reshape(1, L, L)).reshape(-1),
                                           z.reshape(-1))
    return torch.linalg.slogdet(J)[1]


@pytest.mark.parametrize("kind,L", [("mera", 4), ("flat", 4), ("mera", 8), ("flat", 8)])
def test_log_det_matches_autograd_jacobian(kind, L):
    f = make(kind, L)
    z = torch.randn(1, L, L, dtype=torch.float64)
    _, ld = f.forward_and_log_det(z)
    assert abs(ld.item() - _jacobian_logdet(f, z).item()) < 1e-8
    assert abs(ld.item()) > 1e-3  # a non-trivial map


def test_plaquette_block_log_det():
    blk = randomise(PlaquetteBijector(6, [16, 16]).double(), scale=0.2)
    y = torch.randn(1, 4, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: blk(v.reshape(1, 4))[0].reshape(-1), y.reshape(-1))
    assert abs(blk(y)[1].item() - torch.linalg.slogdet(J)[1].item()) < 1e-10


def test_latent_level_counts():
    for L in (2, 4, 8, 16, 32):
        n = int(math.log2(L))
        lv = latent_levels(L, n)
        counts = torch.bincount(lv.flatten(), minlength=n + 1)
        for k in range(n):
            assert counts[k] == 3 * (L // 2 ** (k + 1)) ** 2
        assert counts[n] == 1 and lv[0, 0] == n
    lv = latent_levels(16, 2)  # truncated hierarchy: (L/4)^2 sites survive
    assert (lv == 2).sum() == 16
    f = build_mera(IsingTarget(16, KC))
    assert torch.equal(f.latent_levels, latent_levels(16, 4))


def _cone_mask(L, level, i, j):
    """Sites a level-k latent at (i, j) can influence: the decimator plaquette of spacing d at
    level k, then one disentangler (reach d) per level below it, widening like 2^k."""
    d = 2 ** level
    reach = 2 * d  # decimator plaquette extent at this level
    for k in range(level, -1, -1):
        reach += 2 ** k  # disentangler of level k straddles by one spacing
    idx = torch.arange(L)
    def dist(a, b):
        r = (a - b) % L
        return torch.minimum(r, L - r)
    di = dist(idx, i)[:, None]
    dj = dist(idx, j)[None, :]
    return (di <= reach) & (dj <= reach)


@pytest.mark.parametrize("level", [0, 1, 2])
def test_causal_cone(level):
    L = 32
    f = make("mera", L)
    lv = f.latent_levels
    sites = (lv == level).nonzero()
    i, j = sites[len(sites) // 2].tolist()
    z = torch.randn(1, L, L, dtype=torch.float64)
    dz = torch.zeros_like(z)
    dz[0, i, j] = 1e-3
    with torch.no_grad():
        changed = (f.forward(z + dz) - f.forward(z)).abs()[0] > 0
    assert changed[i, j]
    assert not (changed & ~_cone_mask(L, level, i, j)).any()
    assert changed.sum() < L * L  # it is a cone, not the whole lattice
    # the finest latent touches only a small neighbourhood
    if level == 0:
        assert changed.sum() <= 36


def test_parameters_independent_of_L():
    n = [build_mera(IsingTarget(L, KC), depth=2).num_parameters() for L in (4, 8, 16)]
    assert n[0] == n[1] == n[2]
    shared = [build_mera(IsingTarget(L, KC), share_levels=True).num_parameters() for L in (4, 8, 16)]
    assert shared[0] == shared[1] == shared[2]


def test_identity_at_initialisation():
    f = build_mera(IsingTarget(8, KC)).double()
    z = torch.randn(3, 8, 8, dtype=torch.float64)
    x, ld = f.forward_and_log_det(z)
    assert torch.equal(x, z) and torch.all(ld == 0)


@pytest.mark.parametrize("L,block", [(6, None), (12, None), (12, "neuralrg.flows.context.ContextPlaquetteBijector")])
def test_mera_on_lattices_that_are_not_powers_of_two(L, block):
    """L = 2^n·c (c odd): n levels of plaquettes, the top level a c×c grid of latents; exact in float64."""
    f = randomise(build_mera(IsingTarget(L, KC), block=block, n_couplings=4, hidden=8, activation="silu",
                             precondition=True, skeleton="haar").to(torch.float64))
    n, c = {6: (1, 3), 12: (2, 3)}[L]
    assert f.config["depth"] == n
    levels = f.latent_levels
    assert [int((levels == k).sum()) for k in range(n + 1)] == [3 * (L >> (k + 1)) ** 2 for k in range(n)] + [c * c]
    z = torch.randn(2, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
    x, ld = f.forward_and_log_det(z)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-12 and (ld + ld_inv).abs().max() <= 1e-10
    assert abs(ld[0].item() - _jacobian_logdet(f, z[:1]).item()) < 1e-8 and abs(ld[0].item()) > 1e-3


@pytest.mark.parametrize("kw,name", [
    (dict(L=5), "needs an even L"), (dict(L=12, depth=3), "depth must be between 1 and 2"),
    (dict(L=8, depth=4), "depth"), (dict(L=8, n_couplings=0), "n_couplings"),
    (dict(L=8, hidden=0), "hidden"), (dict(L=8, depth=0), "depth"),
])
def test_bad_configuration(kw, name):
    L = kw.pop("L")
    with pytest.raises(ValueError, match=name):
        build_mera(IsingTarget(L, KC), **kw)


def test_z2_density_is_symmetric_and_normalised_sampling():
    f = make("mera", 4, z2=True)
    x = torch.randn(5, 4, 4, dtype=torch.float64)
    assert torch.allclose(f.log_prob(x), f.log_prob(-x), atol=1e-12)
    g = torch.Generator().manual_seed(0)
    xs, _ = f.sample(4000, generator=g)
    signs = torch.sign(xs.sum(dim=(1, 2)))
    assert abs(signs.mean().item()) < 0.1  # both signs drawn


def test_normflows_api():
    f = make("mera", 4)
    loss = f.reverse_kld(16)
    loss.backward()
    assert all(p.grad is not None for p in f.parameters() if p.requires_grad)
    stl = f.reverse_kld(16, score_fn=False)
    assert torch.isfinite(stl)


@pytest.mark.parametrize("kind", ["mera", "flat"])
def test_dtype_and_buffers_follow_module(kind):
    f = make(kind, 8, dtype=torch.float32)
    x, lq = f.sample(3)
    assert x.dtype == torch.float32 and lq.dtype == torch.float32
    f = f.double()
    x, lq = f.sample(3)
    assert x.dtype == torch.float64 and lq.dtype == torch.float64


def test_warm_start_from_smaller_lattice():
    from neuralrg.flows import transfer_mera_weights

    small = make("mera", 8)
    big = build_mera(IsingTarget(16, KC)).double()
    assert transfer_mera_weights(small, big) == 8
    # a field that is constant on 2×2 blocks... simpler: the level-0 blocks are identical
    s0 = [l for l in small.flows if l.kind == "decimator0"][0].block.state_dict()
    b0 = [l for l in big.flows if l.kind == "decimator0"][0].block.state_dict()
    assert all(torch.equal(s0[k], b0[k]) for k in s0)
    top_s = [l for l in small.flows if l.kind == "decimator2"][0].block.state_dict()
    top_b = [l for l in big.flows if l.kind == "decimator3"][0].block.state_dict()
    assert all(torch.equal(top_s[k], top_b[k]) for k in top_s)
    with pytest.raises(ValueError, match="n_couplings"):
        transfer_mera_weights(small, build_mera(IsingTarget(16, KC), n_couplings=3).double())


@pytest.mark.parametrize("kind", ["mera", "flat"])
@pytest.mark.parametrize("activation", ["silu", "softplus", "tanh"])
def test_smooth_activations_and_preconditioner_are_exact_bijections(kind, activation):
    """Round trip ≤1e-12 and log-det equal to the autograd Jacobian's, with the preconditioner."""
    f = make(kind, 4, activation=activation, precondition=True)
    z = torch.randn(3, 4, 4, dtype=torch.float64)
    x, ld = f.forward_and_log_det(z)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-12 and (ld + ld_inv).abs().max() <= 1e-10
    assert abs(ld[0].item() - _jacobian_logdet(f, z[:1]).item()) < 1e-8


def test_gaussian_preconditioner_is_the_square_root_of_A():
    """x = A^{1/2} y: applying it twice is A (a dense matrix built from the couplings), and the
    log-det is ½ ln det A."""
    from neuralrg.flows import GaussianPreconditioner

    t = IsingTarget(4, KC)
    pc = GaussianPreconditioner(t)
    eye = torch.eye(16, dtype=torch.float64).reshape(16, 4, 4)
    half, ld = pc(eye)
    A = pc(half.reshape(16, 16).T.reshape(16, 4, 4).contiguous())[0].reshape(16, 16).T
    # A = Kmat + c I from the lattice: K per directed neighbour bond, c on the diagonal
    Kmat = torch.zeros(16, 16, dtype=torch.float64)
    for i in range(4):
        for j in range(4):
            for di, dj in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                Kmat[4 * i + j, 4 * ((i + di) % 4) + (j + dj) % 4] += KC
    assert torch.allclose(A, Kmat + t.c * torch.eye(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ld, torch.full((16,), 0.5 * torch.linalg.slogdet(Kmat + t.c * torch.eye(16, dtype=torch.float64))[1].item(), dtype=torch.float64), atol=1e-10)
    back, ld_inv = pc.inverse(half)
    assert torch.allclose(back, eye, atol=1e-12) and torch.allclose(ld + ld_inv, torch.zeros(16, dtype=torch.float64))
    # float32 input stays float32
    assert pc(eye.float())[0].dtype == torch.float32


def test_checkpoint_configs_without_new_options_rebuild_the_old_model():
    """Defaults (leaky_relu, no preconditioner) rebuild models saved before the options existed."""
    from neuralrg.flows import build_flow

    f = build_mera(IsingTarget(8, KC))
    old = {k: v for k, v in f.config.items() if k not in ("activation", "precondition")}
    g = build_flow(IsingTarget(8, KC), **old)
    assert g.config == f.config and len(g.flows) == len(f.flows)


@pytest.mark.parametrize("kw,name", [(dict(activation="relu6"), "activation"),
                                     (dict(precondition="yes"), "precondition")])
def test_bad_flow_options(kw, name):
    for build in (build_mera, build_flat):
        with pytest.raises(ValueError, match=name):
            build(IsingTarget(8, KC), **kw)
