"""Rational-quadratic spline plaquette couplings: identity start, float64 round trip, log-det
against the autograd Jacobian (inside and outside the spline interval), the MERA built from them,
and clear errors for bad arguments."""
import pytest
import torch

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.build import block_spec
from neuralrg.flows.coupling import PlaquetteBijector
from neuralrg.flows.spline import SplinePlaquetteBijector, SplinePlaquetteCoupling
from neuralrg.physics.ising import IsingTarget
from test_flows import randomise

DT = torch.float64
SPLINE = "neuralrg.flows.spline:SplinePlaquetteBijector"


def bijector(seed=0, tail_bound=2.0):
    # perturbation 0.15 moves rows by up to ~10 yet keeps the bins moderate: much steeper random
    # splines are ill-conditioned (round trips of 1e-9 from the map itself, in normflows' too)
    return randomise(SplinePlaquetteBijector(6, [16, 16], 2.0, "silu", 6, tail_bound).to(DT), 0.15, seed)


def rows(n=64, scale=2.0, seed=1):
    # scale 2 with tail bound 2: about a third of the values lie in the linear tails
    return scale * torch.randn(n, 4, dtype=DT, generator=torch.Generator().manual_seed(seed))


def test_identity_at_initialisation():
    y = rows()
    for m in (SplinePlaquetteCoupling(2, [8]).to(DT), SplinePlaquetteBijector(4, [8, 8], n_bins=5).to(DT)):
        out, ld = m(y)
        assert (out - y).abs().max() <= 1e-12 and ld.abs().max() <= 1e-12
        back, ld_inv = m.inverse(y)
        assert (back - y).abs().max() <= 1e-12 and ld_inv.abs().max() <= 1e-12


def test_conditioning_channels_pass_through_bit_exactly():
    y = rows()
    for p in range(6):
        c = randomise(SplinePlaquetteCoupling(p, [8], n_bins=4, tail_bound=2.0).to(DT), 0.3, p)
        out, _ = c(y)
        assert torch.equal(out[:, c.cond], y[:, c.cond])
        assert (out[:, c.upd] - y[:, c.upd]).abs().max() > 1e-2


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_round_trip_and_log_det_against_autograd(direction):
    m = bijector()
    f, g = (m, m.inverse) if direction == "forward" else (m.inverse, m)
    y = rows()
    out, ld = f(y)
    back, ld_back = g(out)
    assert (out - y).abs().max() > 1e-1, "the map must be away from the identity"
    assert (back - y).abs().max() <= 1e-9
    assert (ld + ld_back).abs().max() <= 1e-9
    assert ld.std() > 1e-2, "the map must not be volume preserving"
    for i in range(8):
        J = torch.autograd.functional.jacobian(lambda v: f(v.reshape(1, 4))[0].reshape(4), y[i])
        assert abs(torch.linalg.slogdet(J)[1].item() - ld[i].item()) <= 1e-10


def check_mera_is_exact(f) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomise the float64 L = 4 MERA f, then check its log-det against the autograd Jacobian and ln q(x) by
    the inverse pass against the prior density and the forward log-det; returns (z, x)."""
    randomise(f, 0.15, 3)
    z = torch.randn(2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(0))
    x, ld = f.forward_and_log_det(z)
    assert (x - z).abs().max() > 1e-1
    J = torch.autograd.functional.jacobian(lambda v: f.forward_and_log_det(v.reshape(1, 4, 4))[0].reshape(-1),
                                           z[:1].reshape(-1))
    assert abs(torch.linalg.slogdet(J)[1].item() - ld[0].item()) <= 1e-9
    lq = f.log_prob_unsymmetrised(x)
    prior = -0.5 * (z ** 2).sum(dim=(1, 2)) - 0.5 * 16 * torch.log(torch.tensor(2 * torch.pi, dtype=DT))
    assert (lq - (prior - ld)).abs().max() <= 1e-9
    return z, x


def test_mera_of_spline_blocks_is_exact_in_float64():
    f = build_mera(IsingTarget(4, 0.44), block=SPLINE, n_couplings=2, hidden=8, activation="silu",
                   precondition=True, skeleton="haar").to(DT)
    assert sum(isinstance(m, SplinePlaquetteCoupling) for m in f.modules()) == 4 * 2
    check_mera_is_exact(f)


def test_spec_round_trip_rebuilds_the_same_flow():
    torch.manual_seed(0)
    spec = {"class": SPLINE, "kwargs": {"n_couplings": 2, "hidden": [8], "n_bins": 5, "tail_bound": 3}}
    f = build_mera(IsingTarget(4, 0.44), block=spec)
    assert f.config["block"]["kwargs"]["n_bins"] == 5 and f.config["block"]["kwargs"]["tail_bound"] == 3.0
    g = build_flow(IsingTarget(4, 0.44), **f.config)
    g.load_state_dict(f.state_dict())
    assert [c.n_bins for c in g.modules() if isinstance(c, SplinePlaquetteCoupling)] == [5] * 8


def test_bad_spline_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="n_bins"):
        SplinePlaquetteBijector(2, [8], n_bins=1)
    with pytest.raises(ValueError, match="tail_bound"):
        block_spec(SPLINE, tail_bound=-1.0)
    with pytest.raises(ValueError, match="takes no argument"):
        block_spec("neuralrg.flows.coupling:PlaquetteBijector", n_bins=8)
    assert "n_bins" not in block_spec(None)["kwargs"]  # the affine block's spec is unchanged
    assert isinstance(SplinePlaquetteBijector(2, [8]), PlaquetteBijector)


def test_spline_block_follows_dtype_and_has_no_float32_constants():
    m = SplinePlaquetteBijector(2, [8], n_bins=4, tail_bound=2.0)
    for dt in (torch.float32, torch.float64):
        y = rows().to(dt)
        out, ld = m.to(dt)(y)
        assert out.dtype == dt and ld.dtype == dt


def test_rational_quadratic_is_monotone_c1_and_inverts_to_rounding():
    from neuralrg.flows.spline import rational_quadratic

    g = torch.Generator().manual_seed(4)
    K, B = 7, 3.0
    w, h = (0.7 * torch.randn(1, K, dtype=DT, generator=g) for _ in range(2))
    d = 0.7 * torch.randn(1, K - 1, dtype=DT, generator=g)
    v = torch.linspace(-4.0, 4.0, 4001, dtype=DT)
    args = [t.expand(v.shape[0], -1) for t in (w, h, d)]
    out, ld = rational_quadratic(v, *args, B)
    assert (out.diff() > 0).all(), "monotone"
    assert torch.equal(out[v.abs() >= B], v[v.abs() >= B]), "identity outside [-B, B]"
    vg = v.clone().requires_grad_(True)
    slope, = torch.autograd.grad(rational_quadratic(vg, *args, B)[0].sum(), vg)
    assert (slope.log() - ld).abs().max() <= 1e-12   # log-det = log slope
    assert ld.exp().max() > 1.5 and ld.exp().min() < 0.6, "a map far from the identity"
    ends = torch.tensor([-B - 1e-8, -B + 1e-8, B - 1e-8, B + 1e-8], dtype=DT)
    ld_ends = rational_quadratic(ends, *[t.expand(4, -1) for t in (w, h, d)], B)[1]
    assert ld_ends.abs().max() <= 1e-5, "slope 1 on both sides of ±B: C1 into the tails"
    back, ld_inv = rational_quadratic(out, *args, B, inverse=True)
    assert (back - v).abs().max() <= 1e-12 and (ld + ld_inv).abs().max() <= 1e-12


HYBRID_BLOCK = {"class": SPLINE, "kwargs": {"n_couplings": 2, "hidden": [8], "activation": "silu", "n_bins": 5,
                                            "tail_bound": 3.0}}


def test_decimator_block_option_builds_a_hybrid_mera_that_is_exact_and_rebuilds():
    from neuralrg.flows.coupling import PlaquetteCoupling

    t = IsingTarget(4, 0.44)
    f = build_mera(t, block=HYBRID_BLOCK, decimator_block="neuralrg.flows.coupling:PlaquetteBijector",
                   precondition=True, skeleton="haar").to(DT)
    kinds = {layer.kind: type(next(m for m in layer.modules() if isinstance(m, PlaquetteCoupling)))
             for layer in f.flows if hasattr(layer, "kind")}
    assert all((k.startswith("decimator")) == (c is PlaquetteCoupling) for k, c in kinds.items()), kinds
    # a class path takes the main block's common arguments, not the spline-only ones
    assert f.config["decimator_block"]["kwargs"] == {"n_couplings": 2, "hidden": [8], "scale_bound": 2.0,
                                                     "activation": "silu"}
    randomise(f, 0.15, 5)
    z = torch.randn(2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(2))
    x, ld = f.forward_and_log_det(z)
    J = torch.autograd.functional.jacobian(lambda v: f.forward_and_log_det(v.reshape(1, 4, 4))[0].reshape(-1),
                                           z[:1].reshape(-1))
    assert abs(torch.linalg.slogdet(J)[1].item() - ld[0].item()) <= 1e-9
    g = build_flow(t, **f.config).to(DT)
    g.load_state_dict(f.state_dict())
    assert torch.equal(g.forward_and_log_det(z)[0], x)
    # without the option the config has no key: older configs rebuild unchanged
    assert "decimator_block" not in build_mera(t, block=HYBRID_BLOCK).config


def test_block_specs_accept_config_mappings_and_warm_starts_refuse_another_decimator_block():
    from types import MappingProxyType

    from neuralrg.flows.transfer import warm_start_flow

    spec = block_spec(MappingProxyType({"class": SPLINE, "kwargs": MappingProxyType({"hidden": (8, 4)})}))
    assert spec["kwargs"]["hidden"] == [8, 4] and type(spec["kwargs"]["hidden"]) is list
    t = IsingTarget(4, 0.44)
    hybrid = build_mera(t, block=HYBRID_BLOCK, decimator_block="neuralrg.flows.coupling:PlaquetteBijector")
    with pytest.raises(ValueError, match="decimator block class"):
        warm_start_flow(hybrid, build_mera(t, block=HYBRID_BLOCK))


def test_rational_quadratic_agrees_with_the_normflows_reference():
    """Same function as normflows' unconstrained spline with linear tails (our end slopes are exactly 1)."""
    from normflows.utils.splines import unconstrained_rational_quadratic_spline as reference

    from neuralrg.flows.spline import _IDENTITY_DERIVATIVE, rational_quadratic

    g = torch.Generator().manual_seed(7)
    n, K, B = 2000, 6, 2.5
    w, h = (torch.randn(n, K, dtype=DT, generator=g) for _ in range(2))
    d = torch.randn(n, K - 1, dtype=DT, generator=g) + _IDENTITY_DERIVATIVE
    v = 3.0 * torch.randn(n, dtype=DT, generator=g)  # a third of them in the tails
    for inverse in (False, True):
        out, ld = rational_quadratic(v, w, h, d, B, inverse=inverse)
        ref, ld_ref = reference(v, w, h, d, inverse=inverse, tail_bound=B)
        assert (out - ref).abs().max() <= 1e-11 and (ld - ld_ref).abs().max() <= 1e-10
