"""The C^∞ element-wise map (``transform="smooth"``, ``neuralrg.flows.smooth``): identity start, a monotone
bijection with its derivative's derivative continuous (where the rational-quadratic spline's jumps), float64
round trips, log-det against the autograd Jacobian for the map, the spline blocks and a MERA, implicit
gradients of the inverse against finite differences, specs, and clear errors."""
import pytest
import torch

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.build import block_spec
from neuralrg.flows.context import ContextSplinePlaquetteBijector
from neuralrg.flows.smooth import smooth_monotone
from neuralrg.flows.spline import SplinePlaquetteBijector, SplinePlaquetteCoupling, rational_quadratic
from neuralrg.physics.ising import IsingTarget
from test_flows import randomise
from test_spline_flows import check_mera_is_exact

DT = torch.float64
CONTEXT_SPLINE = "neuralrg.flows.context:ContextSplinePlaquetteBijector"


def raw_params(n, K=6, scale=1.5, seed=0):
    return scale * torch.randn(n, 3 * K, dtype=DT, generator=torch.Generator().manual_seed(seed))


def test_zero_parameters_give_the_identity():
    v = torch.linspace(-8, 8, 101, dtype=DT)
    out, ld = smooth_monotone(v, torch.zeros(101, 18, dtype=DT), 5.0)
    assert torch.equal(out, v) and torch.equal(ld, torch.zeros_like(v))
    y = 2.0 * torch.randn(32, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    for m in (SplinePlaquetteCoupling(2, [8], transform="smooth").to(DT),
              SplinePlaquetteBijector(4, [8, 8], n_bins=5, transform="smooth").to(DT)):
        out, ld = m(y)
        assert (out - y).abs().max() <= 1e-12 and ld.abs().max() <= 1e-12
        back, ld_inv = m.inverse(y)
        assert (back - y).abs().max() <= 1e-12 and ld_inv.abs().max() <= 1e-12


def test_map_is_monotone_inverts_to_rounding_and_its_log_slope_is_the_derivative():
    n = 4001
    v = torch.linspace(-9.0, 9.0, n, dtype=DT)
    raw = raw_params(1).expand(n, -1)
    out, ld = smooth_monotone(v, raw, 4.0)
    assert (out.diff() > 0).all(), "monotone"
    assert ld.max() - ld.min() > 1.0, "a map far from the identity"
    vg = v.clone().requires_grad_(True)
    slope, = torch.autograd.grad(smooth_monotone(vg, raw, 4.0)[0].sum(), vg)
    assert (slope.log() - ld).abs().max() <= 1e-12
    back, ld_inv = smooth_monotone(out, raw, 4.0, inverse=True)
    assert (back - v).abs().max() <= 1e-11 and (ld + ld_inv).abs().max() <= 1e-11
    # random parameters per element, a quarter of the values far outside the centres' range
    v = 6.0 * torch.randn(5000, dtype=DT, generator=torch.Generator().manual_seed(2))
    raw = raw_params(5000, K=8, scale=2.0, seed=3)
    out, ld = smooth_monotone(v, raw, 4.0)
    back, ld_inv = smooth_monotone(out, raw, 4.0, inverse=True)
    assert (smooth_monotone(back, raw, 4.0)[0] - out).abs().max() <= 1e-11
    assert (back - v).abs().max() <= 1e-8 and (ld + ld_inv).abs().max() <= 1e-8


def _force_jump(log_slope_fn, v):
    """max |Δ(d ln f'/dv)| between neighbouring points of the grid v (the jump of latent HMC's force)."""
    vg = v.clone().requires_grad_(True)
    d, = torch.autograd.grad(log_slope_fn(vg).sum(), vg)
    return d.diff().abs().max().item()


def test_the_force_term_is_continuous_for_the_smooth_map_and_jumps_for_the_spline():
    """d ln f'/dv enters latent HMC's force. On a grid of spacing h its steps are O(h) for the C^∞ map
    and O(1) at the spline's knots: the check that tells the two apart."""
    for h in (1e-3, 1e-4):
        v = torch.arange(-3.0, 3.0, h, dtype=DT)
        n = v.shape[0]
        smooth = _force_jump(lambda t: smooth_monotone(t, raw_params(1).expand(n, -1), 4.0)[1], v)
        g = torch.Generator().manual_seed(4)
        w, hg, d = (0.7 * torch.randn(1, k, dtype=DT, generator=g) for k in (6, 6, 5))
        spline = _force_jump(lambda t: rational_quadratic(t, w.expand(n, -1), hg.expand(n, -1), d.expand(n, -1),
                                                          4.0)[1], v)
        assert smooth <= 200 * h, smooth
        assert spline >= 0.05, spline


def test_inverse_gradients_follow_the_implicit_function_theorem():
    v = torch.tensor([-2.3, 0.4, 1.7, 5.5], dtype=DT)
    raw = raw_params(4, K=4, seed=5)
    y = smooth_monotone(v, raw, 3.0)[0]
    yg, rg = y.clone().requires_grad_(True), raw.clone().requires_grad_(True)
    u, ld = smooth_monotone(yg, rg, 3.0, inverse=True)
    gy, gr = torch.autograd.grad((u + 0.3 * ld).sum(), (yg, rg))
    h = 1e-6
    for i, j in ((0, 0), (1, 5), (2, 9), (3, 11)):
        e = torch.zeros_like(raw)
        e[i, j] = h
        fd = ((lambda r: (lambda o: (o[0] + 0.3 * o[1]).sum())(smooth_monotone(y, r, 3.0, inverse=True)))(raw + e)
              - (lambda r: (lambda o: (o[0] + 0.3 * o[1]).sum())(smooth_monotone(y, r, 3.0, inverse=True)))(raw - e))
        assert abs(gr[i, j].item() - fd.item() / (2 * h)) <= 1e-6
    e = h * torch.eye(4, dtype=DT)
    for i in range(4):
        plus, minus = (smooth_monotone(y + s * e[i], raw, 3.0, inverse=True) for s in (1, -1))
        fd = ((plus[0] + 0.3 * plus[1]) - (minus[0] + 0.3 * minus[1])).sum() / (2 * h)
        assert abs(gy[i].item() - fd.item()) <= 1e-6


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_smooth_block_round_trip_and_log_det_against_autograd(direction):
    m = randomise(SplinePlaquetteBijector(6, [16, 16], 2.0, "silu", 6, 2.0, transform="smooth").to(DT), 0.15, 0)
    f, g = (m, m.inverse) if direction == "forward" else (m.inverse, m)
    y = 2.0 * torch.randn(64, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    out, ld = f(y)
    back, ld_back = g(out)
    assert (out - y).abs().max() > 1e-1, "the map must be away from the identity"
    assert (back - y).abs().max() <= 1e-9 and (ld + ld_back).abs().max() <= 1e-9
    assert ld.std() > 1e-2, "the map must not be volume preserving"
    for i in range(8):
        J = torch.autograd.functional.jacobian(lambda v: f(v.reshape(1, 4))[0].reshape(4), y[i])
        assert abs(torch.linalg.slogdet(J)[1].item() - ld[i].item()) <= 1e-10


def test_mera_of_smooth_context_blocks_is_exact_in_float64_and_rebuilds_from_its_spec():
    t = IsingTarget(4, 0.44)
    f = build_mera(t, block={"class": CONTEXT_SPLINE, "kwargs": {"n_couplings": 2, "hidden": [8], "activation": "silu",
                                                                 "transform": "smooth"}},
                   decimator_block="neuralrg.flows.context:ContextPlaquetteBijector",
                   precondition=True, skeleton="haar").to(DT)
    assert f.config["block"]["kwargs"]["transform"] == "smooth"
    assert {c.transform for c in f.modules() if isinstance(c, SplinePlaquetteCoupling)} == {"smooth"}
    z, x = check_mera_is_exact(f)
    g = build_flow(t, **f.config).to(DT)
    g.load_state_dict(f.state_dict())
    assert torch.equal(g.forward_and_log_det(z)[0], x)


def test_transform_follows_dtype_and_bad_names_give_clear_errors():
    m = ContextSplinePlaquetteBijector(2, [8], transform="smooth")
    for dt in (torch.float32, torch.float64):
        y = torch.randn(3, 2, 2, 4).to(dt)
        out, ld = m.to(dt)(y)
        assert out.dtype == dt and ld.dtype == dt
    with pytest.raises(ValueError, match="transform must be one of"):
        SplinePlaquetteBijector(2, [8], transform="cubic")
    with pytest.raises(ValueError, match="transform must be one of"):
        block_spec(CONTEXT_SPLINE, transform="cubic")
    with pytest.raises(ValueError, match="takes no argument"):
        block_spec("neuralrg.flows.coupling:PlaquetteBijector", transform="smooth")
    # the spline's spec and parameters are unchanged where the option is not given
    assert "transform" not in block_spec(CONTEXT_SPLINE)["kwargs"]
    assert SplinePlaquetteCoupling(0, [8], n_bins=8).last.out_features == 2 * (3 * 8 + 1)


def test_warm_starts_refuse_a_flow_with_the_other_element_wise_map():
    from neuralrg.flows.transfer import warm_start_flow

    t = IsingTarget(4, 0.44)
    kw = {"n_couplings": 2, "hidden": [8], "activation": "silu"}
    spline = build_mera(t, block={"class": CONTEXT_SPLINE, "kwargs": kw})  # a config from before the option
    smooth = build_mera(t, block={"class": CONTEXT_SPLINE, "kwargs": {**kw, "transform": "smooth"}})
    with pytest.raises(ValueError, match="differs in transform"):
        warm_start_flow(smooth, spline)
    explicit = build_mera(t, block={"class": CONTEXT_SPLINE, "kwargs": {**kw, "transform": "rational_quadratic"}})
    assert not warm_start_flow(explicit, spline).new  # the spline's old and new configs agree
