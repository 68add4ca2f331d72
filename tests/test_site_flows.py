"""Per-site plaquette blocks (``neuralrg.flows.site``, affine and spline) for disordered targets: identity start,
plaquettes with different parameters map the same input differently, float64 round trip and
log-det against the autograd Jacobian of the whole MERA on a ±J glass, the grid size each layer
gets, config round trip, and clear errors (shared levels, another lattice size)."""
import pytest
import torch

from neuralrg.flows import build_flow, build_mera
from neuralrg.flows.site import (SitePlaquetteBijector, SitePlaquetteCoupling, SiteSplinePlaquetteBijector,
                                 SiteSplinePlaquetteCoupling)
from neuralrg.physics.ising import IsingTarget
from test_flows import _jacobian_logdet, randomise

DT = torch.float64
SITE = "neuralrg.flows.site:SitePlaquetteBijector"
SITE_SPLINE = "neuralrg.flows.site:SiteSplinePlaquetteBijector"


def glass(L=8, K=1.0, seed=0):
    return IsingTarget(L, K, disorder="pm_j", seed=seed)


@pytest.mark.parametrize("bij, coup", [(SitePlaquetteBijector, SitePlaquetteCoupling),
                                       (SiteSplinePlaquetteBijector, SiteSplinePlaquetteCoupling)])
def test_identity_start_and_per_site_parameters(bij, coup):
    y = torch.randn(3, 4, 4, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    b = bij(2, [8], activation="silu", grid_size=4).to(DT)
    out, ld = b(y)
    assert ld.shape == (3, 4, 4) and (out - y).abs().max() <= 1e-12 and ld.abs().max() <= 1e-12
    c = randomise(coup(0, [8], activation="silu", grid_size=4).to(DT), 0.3, 2)
    assert c.site_bias.shape == (4, 4, 8)
    same = y[:1, :1, :1].expand(1, 4, 4, 4).contiguous()  # the same plaquette everywhere
    out, _ = c(same)
    assert (out[0, 0, 0] - out[0, 2, 3]).abs().max() > 1e-3  # different sites, different maps
    back, _ = c.inverse(out)
    assert (back - same).abs().max() <= 1e-12
    with pytest.raises(ValueError, match="4×4 grid of plaquettes"):
        c(torch.randn(1, 2, 2, 4, dtype=DT))
    with pytest.raises(ValueError, match="grid_size"):
        bij(2, [8], grid_size=0)


@pytest.mark.parametrize("block, dec", [(SITE, None), (SITE_SPLINE, SITE)])
def test_mera_of_site_blocks_is_exact_in_float64_on_a_glass(block, dec):
    t = glass(8)
    f = build_mera(t, block=block, n_couplings=2, hidden=8, activation="silu", precondition=True,
                   skeleton="haar", decimator_block=dec).to(DT)
    couplings = [m for m in f.modules() if isinstance(m, (SitePlaquetteCoupling, SiteSplinePlaquetteCoupling))]
    assert sorted({m.grid_size for m in couplings}) == [1, 2, 4]  # L = 8: levels 0, 1, 2 have 4×4, 2×2, 1×1 plaquettes
    if dec is not None:  # spline disentanglers, affine decimators, every one per site
        assert {type(m) for m in couplings} == {SitePlaquetteCoupling, SiteSplinePlaquetteCoupling}
    randomise(f, 0.1, 3)
    z = torch.randn(2, 8, 8, dtype=DT, generator=torch.Generator().manual_seed(0))
    x, ld = f.forward_and_log_det(z)
    z_back, ld_inv = f.inverse_and_log_det(x)
    assert (z_back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10
    assert abs(_jacobian_logdet(f, z[0]).item() - ld[0].item()) <= 1e-9
    g = build_flow(t, **f.config).to(DT)
    g.load_state_dict(f.state_dict())
    assert torch.equal(g.forward_and_log_det(z)[0], x)


def test_site_blocks_refuse_shared_levels():
    with pytest.raises(ValueError, match="share_levels"):
        build_mera(IsingTarget(8, 0.44), block=SITE, n_couplings=2, hidden=8, share_levels=True)


def test_site_blocks_do_not_transfer_across_lattice_sizes():
    from neuralrg.flows.hierarchy import transfer_mera_weights
    kw = dict(block=SITE, n_couplings=1, hidden=4, precondition=True, skeleton="haar")
    with pytest.raises(ValueError, match="per-site blocks"):
        transfer_mera_weights(build_mera(glass(4), **kw), build_mera(glass(8), **kw))
    assert transfer_mera_weights(build_mera(glass(8), **kw), build_mera(glass(8, seed=1), **kw)) > 0  # same L: fine
