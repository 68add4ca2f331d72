"""The sign gauge of the MERA (``neuralrg.flows.gauge``): on an unfrustrated antiferromagnet the flow
with the gauge is the ferromagnet's flow composed with x → g·x, exactly (float64: samples, log q and
the energy); round trip and log-det against autograd; "auto" resolves per target; stored configs."""
import pytest
import torch

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.gauge import SignGauge
from neuralrg.physics.couplings import sublattice_gauge
from neuralrg.physics.ising import IsingTarget
from neuralrg.physics.lattice import K_C
from test_flows import _jacobian_logdet, randomise

DT = torch.float64
KW = dict(n_couplings=2, hidden=8, activation="silu", precondition=True, skeleton="haar")


def _has_gauge(flow):
    return any(isinstance(m, SignGauge) for m in flow.flows)


@pytest.mark.parametrize("K_y", [None, 0.3])
def test_gauged_antiferromagnet_is_the_ferromagnet_in_the_sublattice_gauge(K_y):
    L = 8
    fm = IsingTarget(L, K_C, K_y=None if K_y is None else abs(K_y))
    afm = IsingTarget(L, -K_C, K_y=None if K_y is None else -K_y)
    g = torch.as_tensor(sublattice_gauge(L, True, True), dtype=DT)
    f_fm = randomise(build_mera(fm, **KW).to(DT), 0.1, 1)
    f_afm = build_mera(afm, gauge="auto", **KW).to(DT)
    assert _has_gauge(f_afm) and not _has_gauge(f_fm) and f_afm.config["gauge"] is True
    f_afm.load_state_dict(f_fm.state_dict())  # the same learned weights
    z = torch.randn(4, L, L, dtype=DT, generator=torch.Generator().manual_seed(0))
    x_fm, ld_fm = f_fm.forward_and_log_det(z)
    x_afm, ld_afm = f_afm.forward_and_log_det(z)
    assert (x_afm - g * x_fm).abs().max() <= 1e-12 and (ld_afm - ld_fm).abs().max() <= 1e-12
    assert (afm.energy(x_afm) - fm.energy(x_fm)).abs().max() <= 1e-10  # p_AFM(g x) = p_FM(x)
    assert abs(afm.logdet_A - fm.logdet_A) <= 1e-9
    assert (f_afm.log_prob(x_afm) - f_fm.log_prob(x_fm)).abs().max() <= 1e-10


def test_gauged_flow_round_trip_and_log_det_against_autograd():
    t = IsingTarget(4, -K_C)
    f = randomise(build_mera(t, gauge=True, **KW).to(DT), 0.1, 2)
    z = torch.randn(2, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    x, ld = f.forward_and_log_det(z)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10
    assert abs(_jacobian_logdet(f, z[0]).item() - ld[0].item()) <= 1e-9


def test_gauge_resolution_config_and_errors():
    fm, afm = IsingTarget(8, K_C), IsingTarget(8, -K_C)
    assert not _has_gauge(build_mera(fm, gauge="auto", **KW)) and "gauge" not in build_mera(fm, **KW).config
    assert not _has_gauge(build_mera(afm, **KW))  # the builder's default: none (configs older than the option)
    assert not _has_gauge(build_mera(IsingTarget(8, 1.0, disorder="pm_j", seed=0), gauge="auto", **KW))
    f = build_mera(afm, gauge="auto", **KW)
    assert _has_gauge(build_flow(afm, **f.config))
    with pytest.raises(ValueError, match="gauge=true needs"):
        build_mera(fm, gauge=True, **KW)
    with pytest.raises(ValueError, match="gauge"):
        build_mera(afm, gauge="yes", **KW)
    with pytest.raises(ValueError, match="no order gauge"):
        SignGauge(fm)


def test_analysis_sees_the_mera_output_without_the_fixed_layers():
    """``hierarchy_layers`` drops the gauge and the preconditioner; ``hierarchy_output`` inverts them:
    g·A^{−1/2}x, the MERA's output, on which the responses and the y images of analyze.py are taken."""
    from neuralrg.analysis.response import has_preconditioner, hierarchy_forward, hierarchy_layers, hierarchy_output
    t = IsingTarget(4, -K_C)
    f = randomise(build_mera(t, gauge=True, **KW).to(DT), 0.1, 4)
    assert len(hierarchy_layers(f)) == len(list(f.flows)) - 2 and has_preconditioner(f)
    z = torch.randn(3, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(5))
    x = f.forward_and_log_det(z)[0]
    g = torch.as_tensor(sublattice_gauge(4, True, True), dtype=DT)
    y = hierarchy_output(f, x)
    assert (y - g * t.apply_coupling_power(x, -0.5)).abs().max() <= 1e-10
    assert (y - hierarchy_forward(f, z)).abs().max() <= 1e-10


def test_antiferromagnet_rg_figures_use_the_staggered_magnetisation():
    """The order parameter of the RG figures (``observables.order_parameter``) is the staggered m: with the
    gauge, the untrained Haar MERA's top latents already carry it (R² ≥ 0.8 from exact Wolff samples, as for the
    ferromagnet's m); without the gauge they carry the uniform m, which in an antiferromagnet is not the order."""
    from neuralrg.analysis.quick import quick_rg_figures
    t = IsingTarget(8, -K_C)
    r2 = {}
    for gauge in (True, False):
        f = build_mera(t, gauge=gauge, **KW).to(DT)
        r2[gauge] = quick_rg_figures(f, n_samples=512, seed=0)["r2_m_top1"]
    assert r2[True] >= 0.8 and r2[False] <= 0.2, r2
