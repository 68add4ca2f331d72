"""Plaquette couplings with a 3×3 neighbourhood (``neuralrg.flows.context``): identity start,
triangular structure (conditioning channels of every plaquette pass through, the update of a
plaquette depends on its neighbours), float64 round trip and log-det against the autograd
Jacobian of the whole MERA, dtype following, and a config round trip."""
import pytest
import torch
import torch.nn.functional as F

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.coupling import PARTITIONS
from neuralrg.flows.context import (ContextPlaquetteBijector, ContextPlaquetteCoupling, ContextSplinePlaquetteBijector,
                                    ContextSplinePlaquetteCoupling)
from neuralrg.physics.ising import IsingTarget
from helpers import assert_mera_exact_in_float64
from test_flows import randomise

DT = torch.float64
CONTEXT = "neuralrg.flows.context:ContextPlaquetteBijector"
CONTEXT_SPLINE = "neuralrg.flows.context:ContextSplinePlaquetteBijector"


def grid(B=3, m=4, seed=1):
    return torch.randn(B, m, m, 4, dtype=DT, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", [ContextPlaquetteBijector, ContextSplinePlaquetteBijector])
def test_identity_at_initialisation_on_every_grid_size(cls):
    for m in (1, 2, 4):  # m = 1: the top level's single plaquette (circular padding wraps onto itself)
        y = grid(m=m)
        b = cls(3, [8, 8], activation="silu").to(DT)
        out, ld = b(y)
        assert ld.shape == (3, m, m)
        assert (out - y).abs().max() <= 1e-12 and ld.abs().max() <= 1e-12


@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_first_layer_is_a_circular_3x3_convolution_of_the_conditioning_channels(m):
    """The gathered first layer against conv2d with circular padding (weights (channel, di, dj))."""
    y = grid(B=2, m=m, seed=m)
    for p in range(6):
        c = randomise(ContextPlaquetteCoupling(p, [8], activation="silu").to(DT), 0.5, p)
        cond = list(PARTITIONS[p][1])
        w = c.first.weight.detach().unflatten(1, (4, 3, 3))[:, cond]  # (width, 2, 3, 3)
        x = y[..., cond].permute(0, 3, 1, 2)  # (B, 2, m, m)
        ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w, c.first.bias.detach()).permute(0, 2, 3, 1)
        assert (c._first(y) - ref).abs().max() <= 1e-12


@pytest.mark.parametrize("cls", [ContextPlaquetteCoupling, ContextSplinePlaquetteCoupling])
def test_coupling_is_triangular_and_sees_its_neighbours(cls):
    y = grid(m=4)
    for p in range(6):
        c = randomise(cls(p, [8], activation="silu").to(DT), 0.3, p)
        out, ld = c(y)
        upd, cond = (list(ch) for ch in PARTITIONS[p])
        assert torch.equal(out[..., cond], y[..., cond])
        assert (out[..., upd] - y[..., upd]).abs().max() > 1e-2
        # change the conditioning channels of plaquette (0, 1) only: plaquette (0, 0), its
        # neighbour, changes; plaquette (2, 2), two plaquettes away, does not
        y2 = y.clone()
        y2[:, 0, 1, cond] += 1.0
        out2, _ = c(y2)
        assert (out2[:, 0, 0] - out[:, 0, 0]).abs().max() > 1e-3
        assert torch.equal(out2[:, 2, 2], out[:, 2, 2])
        back, ld_back = c.inverse(out)
        # (a spline's inverse is a quadratic root: 1e-10, as in test_spline_flows; the affine case is exact to 1e-15)
        assert (back - y).abs().max() <= 1e-10 and (ld + ld_back).abs().max() <= 1e-10


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("block,coupling", [(CONTEXT, ContextPlaquetteCoupling),
                                            (CONTEXT_SPLINE, ContextSplinePlaquetteCoupling)])
def test_mera_of_context_blocks_is_exact_in_float64(L, block, coupling):
    f = build_mera(IsingTarget(L, 0.44), block=block, n_couplings=2, hidden=8, activation="silu",
                   precondition=True, skeleton="haar").to(DT)
    assert sum(isinstance(m, coupling) for m in f.modules()) > 0
    assert_mera_exact_in_float64(randomise(f, 0.1, 3), L)


def test_context_blocks_follow_the_dtype_and_rebuild_from_their_config():
    t = IsingTarget(8, 0.44)
    torch.manual_seed(0)
    f = build_mera(t, block=CONTEXT, n_couplings=2, hidden=8, activation="silu", precondition=True,
                   skeleton="haar", decimator_block="neuralrg.flows.coupling:PlaquetteBijector")
    randomise(f, 0.05, 1)
    x32, lq32 = f.sample(4)
    assert x32.dtype == lq32.dtype == torch.float32
    g = build_flow(t, **f.config)
    g.load_state_dict(f.state_dict())
    z = torch.randn(2, 8, 8)
    assert torch.equal(g.forward_and_log_det(z)[0], f.forward_and_log_det(z)[0])
    assert f.to(DT).sample(2)[0].dtype == DT


@pytest.mark.parametrize("m", [1, 3, 6])
def test_radius_two_is_a_circular_5x5_convolution_and_sees_two_plaquettes_away(m):
    """radius=2: the first layer against conv2d with circular padding 2; a change two plaquettes away
    moves a plaquette (it does not with radius 1), three away does not."""
    y = grid(B=2, m=m, seed=m)
    for p in range(6):
        c = randomise(ContextPlaquetteCoupling(p, [8], activation="silu", radius=2).to(DT), 0.5, p)
        cond = list(PARTITIONS[p][1])
        w = c.first.weight.detach().unflatten(1, (4, 5, 5))[:, cond]
        x = y[..., cond].permute(0, 3, 1, 2)
        s0 = 2 * m - 2  # circular padding by 2 on any m >= 1: tile the torus 5×5 and crop
        xt = x.repeat(1, 1, 5, 5)[..., s0:s0 + m + 4, s0:s0 + m + 4]
        ref = F.conv2d(xt, w, c.first.bias.detach()).permute(0, 2, 3, 1)
        assert (c._first(y) - ref).abs().max() <= 1e-12
    if m == 6:
        c = randomise(ContextPlaquetteCoupling(0, [8], activation="silu", radius=2).to(DT), 0.3, 0)
        cond = list(PARTITIONS[0][1])
        out = c(y)[0]
        y2 = y.clone()
        y2[:, 0, 2, cond] += 1.0
        out2 = c(y2)[0]
        assert (out2[:, 0, 0] - out[:, 0, 0]).abs().max() > 1e-3 and torch.equal(out2[:, 0, 5], out[:, 0, 5])
        assert torch.equal(out2[:, 3, 3], out[:, 3, 3])


def test_radius_in_the_model_spec_round_trip_and_bad_values():
    wide = {"class": CONTEXT, "kwargs": {"radius": 2}}
    f = build_mera(IsingTarget(8, 0.44), block=wide, n_couplings=2, hidden=8, activation="silu",
                   precondition=True, skeleton="haar").to(DT)
    assert f.config["block"]["kwargs"]["radius"] == 2
    assert all(c.radius == 2 for c in f.modules() if isinstance(c, ContextPlaquetteCoupling))
    g = build_flow(IsingTarget(8, 0.44), **f.config).to(DT)  # rebuilt from the stored config, as a checkpoint is
    g.load_state_dict(f.state_dict())
    randomise(f, 0.1, 1)
    g.load_state_dict(f.state_dict())
    z = torch.randn(2, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(0))
    x, ld = f.forward_and_log_det(z)
    assert torch.equal(g.forward_and_log_det(z)[0], x)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10
    with pytest.raises(ValueError, match="radius"):
        build_mera(IsingTarget(8, 0.44), block={"class": CONTEXT, "kwargs": {"radius": 0}})
    with pytest.raises(ValueError, match="radius"):  # the affine block takes no radius
        build_mera(IsingTarget(8, 0.44), block={"class": "neuralrg.flows.PlaquetteBijector", "kwargs": {"radius": 2}})


def test_context_spline_first_layer_is_the_context_layer_and_its_spline_bends():
    """Same gathered first layer as the affine context coupling (same weights, same output); the spline
    part is active inside [-B, B] (a non-affine map of the updated channels at fixed conditioning)."""
    y = grid(B=2, m=3, seed=4)
    for p in range(6):
        cs = randomise(ContextSplinePlaquetteCoupling(p, [8], activation="silu", radius=2).to(DT), 0.5, p)
        ca = ContextPlaquetteCoupling(p, [8], activation="silu", radius=2).to(DT)
        ca.first.load_state_dict(cs.first.state_dict())
        assert (cs._first(y) - ca._first(y)).abs().max() <= 1e-12
    c = randomise(ContextSplinePlaquetteCoupling(0, [8], activation="silu").to(DT), 1.0, 0)
    upd = list(PARTITIONS[0][0])
    ts = torch.linspace(-2, 2, 5, dtype=DT)
    ys = grid(B=1, m=2, seed=5).repeat(5, 1, 1, 1)
    ys[:, 0, 0, upd[0]] = ts
    out = c(ys)[0][:, 0, 0, upd[0]]
    second = out[2:] - 2 * out[1:-1] + out[:-2]  # second differences of an affine map vanish
    assert second.abs().max() > 1e-3


def test_context_spline_block_in_the_model_spec_and_bad_values():
    f = build_mera(IsingTarget(8, 0.44), block={"class": CONTEXT_SPLINE, "kwargs": {"n_bins": 6, "radius": 2}},
                   n_couplings=2, hidden=8)
    g = build_flow(f.target, **f.config)
    assert f.config == g.config
    kw = f.config["block"]["kwargs"]
    assert (kw["n_bins"], kw["radius"]) == (6, 2)
    with pytest.raises(ValueError, match="n_bins"):
        ContextSplinePlaquetteBijector(2, [8], n_bins=1)
    with pytest.raises(ValueError, match="radius"):
        ContextSplinePlaquetteBijector(2, [8], radius=0)
