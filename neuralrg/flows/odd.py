"""Z2-equivariant (odd) plaquette couplings: g(−y) = −g(y) for the whole bijector.

Drop-in replacements for ``PlaquetteCoupling`` / ``PlaquetteBijector`` (same constructor
arguments, same (P, 4) contract: ``forward`` is the generative direction, ``inverse`` the
inference one, both return ``(out, log_det)`` with log_det = log|det ∂out/∂in| (natural log)
per row, shape (P,), in the input's dtype). The affine coupling

    y_u ← y_u·exp(s(y_c)) + t(y_c),   y_c unchanged,

is odd when s is even and t is odd in the conditioning channels y_c. With the coupling's own
network f (log-scale) and h (shift) we take

    s(y_c) = ½[f(y_c) + f(−y_c)],   t(y_c) = ½[h(y_c) − h(−y_c)],

evaluating the one fused network once on the stacked batch [y; −y] (2P, 4). Then log_det = Σ s
is even, ld(−y) = ld(y). The bound |s| ≤ a of ``PlaquetteCoupling`` still holds (an average of
bounded terms), and a zero last layer still gives the identity at initialisation.

A MERA built from odd blocks (``PlaquetteLayer(OddPlaquetteBijector(...), ...)``, or
``build_mera(target, block="neuralrg.flows.odd:OddPlaquetteBijector")``) is an odd map of the
field, so q(−x) = q(x) exactly for a symmetric prior: no z2 symmetrisation is needed.
"""
from __future__ import annotations

import torch

from .coupling import PlaquetteBijector, PlaquetteCoupling

__all__ = ["OddPlaquetteCoupling", "OddPlaquetteBijector"]


class OddPlaquetteCoupling(PlaquetteCoupling):
    """``PlaquetteCoupling`` with an even log-scale and an odd shift, hence an odd map.

    Same arguments, masks, bounded log-scale a·tanh and identity start as the parent (whose
    masked network is reused as is); only ``_scale_shift`` is symmetrised, on (P, 4) rows.
    """

    def _scale_shift(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        P = y.shape[0]
        s, t = super()._scale_shift(torch.cat((y, -y), dim=0))  # one call on (2P, 4)
        return 0.5 * (s[:P] + s[P:]), 0.5 * (t[:P] - t[P:])


class OddPlaquetteBijector(PlaquetteBijector):
    """``PlaquetteBijector`` made of ``OddPlaquetteCoupling``s: an odd bijection of R⁴.

    ``n_couplings`` complementary couplings (partitions as in ``PlaquetteBijector``);
    ``hidden``: MLP hidden widths; ``activation``: a key of ``coupling.ACTIVATIONS``.
    Rows are plaquettes, shape (P, 4); forward/inverse are inherited unchanged.
    """

    coupling_class = OddPlaquetteCoupling
