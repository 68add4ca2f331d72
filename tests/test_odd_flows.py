"""Odd (Z2-equivariant) plaquette couplings: oddness, even log-det, inversion, exact log-det."""
import pytest
import torch

from neuralrg.flows.coupling import PlaquetteBijector, PlaquetteCoupling
from neuralrg.flows.hierarchy import PlaquetteLayer
from neuralrg.flows.odd import OddPlaquetteBijector, OddPlaquetteCoupling
from test_flows import randomise as randomise_parameters

DT = torch.float64


def randomise(module, scale=0.3, seed=0):
    """Perturb every parameter (the zero-initialised last layers included): a non-trivial map."""
    return randomise_parameters(module, scale, seed)


def coupling(partition=0, activation="silu", seed=0):
    return randomise(OddPlaquetteCoupling(partition, [16, 16], 2.0, activation).to(DT), seed=seed)


def bijector(activation="silu", seed=0):
    return randomise(OddPlaquetteBijector(6, [16, 16], 2.0, activation).to(DT), seed=seed)


def blocks():
    return [coupling(p, act, seed=p) for p, act in enumerate(["silu", "tanh", "leaky_relu", "softplus",
                                                               "silu", "tanh"])] + [bijector()]


def test_identity_at_initialisation():
    y = torch.randn(50, 4, dtype=DT)
    for m in (OddPlaquetteCoupling(1, [8]).to(DT), OddPlaquetteBijector(4, [8, 8]).to(DT)):
        out, ld = m(y)
        assert torch.equal(out, y) and torch.equal(ld, torch.zeros(50, dtype=DT))


def test_same_constructor_and_types_as_plain_blocks():
    b = OddPlaquetteBijector(5, [8, 4], scale_bound=1.5, activation="tanh")
    assert isinstance(b, PlaquetteBijector) and len(b.couplings) == 5
    assert all(type(c) is OddPlaquetteCoupling for c in b.couplings)
    assert isinstance(b.couplings[0], PlaquetteCoupling)
    # same parameter shapes as the plain block: checkpoints / weight transfer line up
    plain = PlaquetteBijector(5, [8, 4], scale_bound=1.5, activation="tanh")
    assert {k: v.shape for k, v in b.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    with pytest.raises(ValueError, match="activation"):
        OddPlaquetteBijector(2, [8], activation="relu6")


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_odd_and_even_log_det(direction):
    y = 1.5 * torch.randn(200, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    for m in blocks():
        f = m if direction == "forward" else m.inverse
        out, ld = f(y)
        out_neg, ld_neg = f(-y)
        assert (out - y).abs().max() > 1e-2, "the map must be away from the identity"
        assert ld.abs().max() > 1e-2, "the map must not be volume preserving"
        assert (out_neg + out).abs().max() <= 1e-12
        assert (ld_neg - ld).abs().max() <= 1e-12


def test_plain_coupling_with_same_weights_is_not_odd():
    """Guards the oddness test: the symmetrisation, not the weights, makes the map odd."""
    odd = coupling(0)
    plain = PlaquetteCoupling(0, [16, 16], 2.0, "silu").to(DT)
    plain.load_state_dict(odd.state_dict())
    y = torch.randn(100, 4, dtype=DT)
    assert (plain(-y)[0] + plain(y)[0]).abs().max() > 1e-2


def test_conditioning_channels_pass_through_and_scale_bounded():
    m = randomise(OddPlaquetteCoupling(2, [16], 2.0, "silu").to(DT), scale=3.0)
    y = 10 * torch.randn(300, 4, dtype=DT)
    out, ld = m(y)
    assert torch.equal(out[:, [0, 1]], y[:, [0, 1]])  # partition 2 conditions on channels 0, 1
    assert ld.abs().max() <= 2 * m.scale_amp.abs().max() + 1e-12


def test_float64_round_trips():
    y = 2.0 * torch.randn(300, 4, dtype=DT)
    for m in blocks():
        out, ld = m(y)
        back, ld_inv = m.inverse(out)
        assert (back - y).abs().max() <= 1e-10
        assert (ld + ld_inv).abs().max() <= 1e-10
        fwd, _ = m(m.inverse(y)[0])
        assert (fwd - y).abs().max() <= 1e-10


def test_float32_dtype_kept():
    m = randomise(OddPlaquetteBijector(4, [8]))
    out, ld = m(torch.randn(7, 4))
    assert out.dtype == ld.dtype == torch.float32 and ld.shape == (7,)


def test_log_det_matches_autograd_jacobian():
    g = torch.Generator().manual_seed(3)
    for m in blocks():
        for _ in range(3):
            y = 1.5 * torch.randn(1, 4, dtype=DT, generator=g)
            for f in (m, m.inverse):
                J = torch.autograd.functional.jacobian(lambda v: f(v.reshape(1, 4))[0].reshape(-1), y.reshape(-1))
                sign, logabs = torch.linalg.slogdet(J)
                ld = f(y)[1].item()
                assert sign.item() > 0
                assert abs(ld - logabs.item()) <= 1e-10
                assert abs(ld) > 1e-3


def odd_mera(L=8, seed=0):
    """MERA-like stack, generative order (top level first), every block odd and random."""
    inference = []
    k = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        while 2 ** (k + 1) <= L:
            d = 2**k
            inference.append(PlaquetteLayer(OddPlaquetteBijector(4, [16], 2.0, "silu"), d, 1, f"disentangler{k}.0"))
            inference.append(PlaquetteLayer(OddPlaquetteBijector(4, [16], 2.0, "silu"), d, 0, f"decimator{k}"))
            k += 1
    layers = inference[::-1]
    for i, layer in enumerate(layers):
        randomise(layer.to(DT), scale=0.2, seed=seed + i)
    return layers


def run(layers, x, inverse=False):
    ld = x.new_zeros(x.shape[0])
    for layer in (reversed(layers) if inverse else layers):
        x, l = layer.inverse(x) if inverse else layer(x)
        ld = ld + l
    return x, ld


def test_plaquette_layer_accepts_odd_block():
    layer = PlaquetteLayer(bijector(), 2, 1, "disentangler1.0")
    z = torch.randn(3, 8, 8, dtype=DT)
    x, ld = layer(z)
    assert x.shape == z.shape and ld.shape == (3,)
    assert (layer(-z)[0] + x).abs().max() <= 1e-12
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[::2, ::2] = True
    assert torch.equal(x[:, ~mask], z[:, ~mask]) and (x - z).abs().max() > 1e-2  # only spacing-2 sites move
    back, ld_inv = layer.inverse(x)
    assert (back - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-10


def test_odd_mera_stack_on_8x8():
    layers = odd_mera(8)
    assert len(layers) == 6
    z = torch.randn(4, 8, 8, dtype=DT)
    x, ld = run(layers, z)
    x_neg, ld_neg = run(layers, -z)
    assert (x - z).abs().max() > 1e-1 and ld.abs().max() > 1e-1
    assert (x_neg + x).abs().max() <= 1e-11
    assert (ld_neg - ld).abs().max() <= 1e-10
    zb, ld_inv = run(layers, x, inverse=True)
    assert (zb - z).abs().max() <= 1e-10 and (ld + ld_inv).abs().max() <= 1e-9
    zi, _ = run(layers, -x, inverse=True)
    assert (zi + zb).abs().max() <= 1e-11
    # log-det of the whole stack against the autograd Jacobian (64 × 64)
    J = torch.autograd.functional.jacobian(lambda v: run(layers, v.reshape(1, 8, 8))[0].reshape(-1),
                                           z[:1].reshape(-1))
    assert abs(torch.linalg.slogdet(J)[1].item() - ld[0].item()) <= 1e-9


@pytest.mark.parametrize("precondition", [False, True])
def test_build_mera_with_odd_block_gives_symmetric_density(precondition):
    from neuralrg import IsingTarget, build_mera

    f = build_mera(IsingTarget(8, 0.44), block="neuralrg.flows.odd:OddPlaquetteBijector", n_couplings=4,
                   hidden=16, activation="silu", precondition=precondition).to(DT)
    assert sum(isinstance(m, OddPlaquetteCoupling) for m in f.modules()) == 6 * 4
    randomise(f, scale=0.2)
    z = torch.randn(3, 8, 8, dtype=DT)
    x, ld = f.forward_and_log_det(z)
    x_neg, ld_neg = f.forward_and_log_det(-z)
    assert (x - z).abs().max() > 1e-1
    assert (x_neg + x).abs().max() <= 1e-11 and (ld_neg - ld).abs().max() <= 1e-10
    lq = f.log_prob_unsymmetrised(x)
    assert (f.log_prob_unsymmetrised(-x) - lq).abs().max() <= 1e-9


def test_class_path_in_readme_and_model_config_imports():
    """README and conf/model/mera.yaml name the block as ``neuralrg.flows.OddPlaquetteBijector``."""
    from neuralrg.flows.odd import OddPlaquetteBijector
    from neuralrg.spec import import_object

    assert import_object("neuralrg.flows.OddPlaquetteBijector", "block class") is OddPlaquetteBijector
