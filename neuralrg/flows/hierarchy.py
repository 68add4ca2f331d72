"""The MERA-like hierarchy of NeuralRG: disentangler and decimator layers on an L×L torus.

Level k = 0 … depth−1 works on the sites whose coordinates are both ≡ 0 mod d, d = 2^k,
viewed as an (L/d)×(L/d) grid. In the inference direction x → z a level applies

* a *disentangler*: one block on every plaquette of spacing d that straddles the boundaries
  of the decimator plaquettes (grid offset (1, 1));
* a *decimator*: one block on every plaquette of spacing d and stride 2d (grid offset (0, 0));
  its (0,0) site — both coordinates ≡ 0 mod 2d — continues to level k+1, the other three are
  level k's latent variables.

With ``skeleton="haar"`` every decimator first maps its plaquette to orthonormal Haar
coefficients (block average on the (0,0) site; ``wavelet.HaarDecimator``), so the untrained
hierarchy is a 2D Haar wavelet transform. The generative direction z → x runs the same layers in reverse, top level first. Latents
stay at the site where they were decimated, so z is shaped (B, L, L) like x and
``latent_levels(L, depth)`` says which RG level every site of z belongs to; the
(L/2^depth)² sites that survive every decimator form the top level, ``depth``.
"""
from __future__ import annotations

import re

import normflows as nf
import torch

from typing import Callable

from torch import nn

from .wavelet import HaarDecimator, check_skeleton


def latent_levels(L: int, depth: int) -> torch.Tensor:
    """RG level of every latent site, LongTensor (L, L): min(v₂(i), v₂(j), depth).

    v₂ is the 2-adic valuation (v₂(0) = ∞). Level k < depth holds 3·(L/2^{k+1})² sites,
    the top level ``depth`` holds (L/2^depth)².
    """
    idx = torch.arange(L)
    v2 = torch.full((L,), depth, dtype=torch.long)
    for k in range(depth - 1, -1, -1):
        v2[idx % (2 ** (k + 1)) != 0] = k
    return torch.minimum(v2[:, None], v2[None, :])


class PlaquetteLayer(nf.flows.Flow):
    """Applies one shared ``PlaquetteBijector`` to all 2×2 plaquettes of one RG level.

    Acts on (B, L, L) tensors. ``spacing`` d: the layer sees the sites with both coordinates
    ≡ 0 mod d; ``offset`` 0 gives decimator plaquettes, 1 disentangler plaquettes (in units
    of d). ``forward`` is generative (z → x side), ``inverse`` inference; log_det (B,) is the
    sum over plaquettes. All plaquettes are processed in one batched call: as (B·P, 4) rows, or
    as the (B, L/2d, L/2d, 4) grid of plaquettes for a block with ``grid = True``
    (``context.ContextPlaquetteBijector``, whose couplings also see neighbouring plaquettes).
    """

    def __init__(self, block: nn.Module, spacing: int, offset: int, kind: str) -> None:
        super().__init__()
        self.block = block
        self.spacing = int(spacing)
        self.offset = int(offset)
        self.kind = kind

    def extra_repr(self) -> str:
        return f"kind={self.kind}, spacing={self.spacing}, offset={self.offset}"

    def _transform(self, x: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        B, L, _ = x.shape
        d, o = self.spacing, self.offset
        sub = x if d == 1 else x[:, ::d, ::d]
        M = sub.shape[-1]
        if o:
            sub = torch.roll(sub, shifts=(-o, -o), dims=(1, 2))
        plaq = sub.reshape(B, M // 2, 2, M // 2, 2).permute(0, 1, 3, 2, 4)
        # rows (B·P, 4), or the grid (B, M/2, M/2, 4) for blocks that see neighbouring plaquettes
        plaq = plaq.reshape(B, M // 2, M // 2, 4) if getattr(self.block, "grid", False) else plaq.reshape(-1, 4)
        out, log_det = (self.block.inverse if inverse else self.block)(plaq)
        sub = out.reshape(B, M // 2, M // 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(B, M, M)
        if o:
            sub = torch.roll(sub, shifts=(o, o), dims=(1, 2))
        if d == 1:
            x = sub
        else:
            x = x.clone()
            x[:, ::d, ::d] = sub
        return x, log_det.reshape(B, -1).sum(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(z, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(x, inverse=True)


def _per_site(factory: Callable[..., nn.Module]) -> bool:
    """Does ``factory`` (a block class or a functools.partial of one) build per-site blocks?"""
    return bool(getattr(getattr(factory, "func", factory), "per_site", False))


def _build(factory: Callable[..., nn.Module], grid_size: int) -> nn.Module:
    """A fresh block; per-site block classes are told the layer's grid size."""
    return factory(grid_size=grid_size) if _per_site(factory) else factory()


def mera_layers(L: int, depth: int, new_block: Callable[[], nn.Module], *,
                disentangler_repeats: int = 1, share_levels: bool = False,
                skeleton: str = "none", new_decimator: Callable[[], nn.Module] | None = None,
                coarse_from: int | None = None, new_coarse_block: Callable[[], nn.Module] | None = None,
                new_coarse_decimator: Callable[[], nn.Module] | None = None) -> list[PlaquetteLayer]:
    """The hierarchy's layers in generative order (top level first), as normflows expects.

    With ``share_levels`` one set of blocks (per layer role) serves every level, so the
    parameter count is independent of depth; otherwise every level has its own blocks.
    Either way it is independent of L. ``new_block()`` builds one fresh plaquette block (a
    bijection of (P, 4) rows with the normflows ``forward``/``inverse`` contract).
    ``skeleton="haar"`` wraps every decimator block in ``HaarDecimator`` (fixed Haar mixing
    before the learned block, inference direction); a shared decimator block stays shared.
    ``new_decimator`` builds the decimators' blocks instead of ``new_block`` where given.
    Block classes with ``per_site = True`` (``site``) are built with ``grid_size`` = the layer's
    m = L/2^(k+1) plaquettes per side, and cannot be shared across levels.
    Levels k ≥ ``coarse_from`` build their disentanglers with ``new_coarse_block`` and their
    decimators with ``new_coarse_decimator`` (other widths for the few coarse plaquettes; per-level
    blocks only).
    """
    haar = check_skeleton(skeleton) == "haar"
    new_decimator = new_decimator or new_block
    if coarse_from is not None and share_levels:
        raise ValueError("coarse blocks (model.coarse) need one set of blocks per level: share_levels=true "
                         "shares one set across all levels")
    if share_levels and (_per_site(new_block) or _per_site(new_decimator)):
        raise ValueError("share_levels=true needs translation-invariant blocks: per-site blocks "
                         "(neuralrg.flows.site) have parameters per plaquette, so levels cannot share them")
    shared_dis = [new_block() for _ in range(disentangler_repeats)] if share_levels else None
    shared_dec = new_decimator() if share_levels else None
    inference: list[PlaquetteLayer] = []  # x → z order
    for k in range(depth):
        d = 2 ** k
        m = L // (2 * d)  # the layer's grid of plaquettes is m × m
        coarse = coarse_from is not None and k >= coarse_from
        dis_factory = new_coarse_block if coarse else new_block
        dec_factory = new_coarse_decimator if coarse else new_decimator
        for r in range(disentangler_repeats):
            blk = shared_dis[r] if share_levels else _build(dis_factory, m)
            inference.append(PlaquetteLayer(blk, d, 1, f"disentangler{k}.{r}"))
        blk = shared_dec if share_levels else _build(dec_factory, m)
        if haar:
            blk = HaarDecimator(blk)
        inference.append(PlaquetteLayer(blk, d, 0, f"decimator{k}"))
    return inference[::-1]


def _level_map(k: int, n_src: int, n_dst: int) -> int:
    """Which source level initialises destination level k (see ``transfer_mera_weights``)."""
    if n_src == 1:
        return 0
    if k == n_dst - 1:
        return n_src - 1  # top → top
    return min(k, n_src - 2)  # fine levels one to one; extra middle levels copy the last non-top one


def transfer_mera_weights(src: torch.nn.Module, dst: torch.nn.Module) -> int:
    """Warm-start ``dst`` (e.g. L = 16) from a trained ``src`` MERA (e.g. L = 8), in place.

    The plaquette blocks are translation invariant, so a level's block does not care about L:
    level k of ``dst`` takes level k of ``src`` for the fine levels, the top level takes the
    top level, and any extra middle level copies ``src``'s last non-top level. Both models
    must have the same block architecture and skeleton. Returns the number of blocks copied.
    """
    def blocks(flow):
        out = {}
        for layer in flow.flows:
            if not hasattr(layer, "kind"):  # parameter-free layers (the Gaussian preconditioner)
                continue
            m = re.fullmatch(r"(disentangler|decimator)(\d+)(?:\.(\d+))?", layer.kind)
            out[(m.group(1), int(m.group(2)), int(m.group(3) or 0))] = layer.block
        return out

    defaults = {"skeleton": "none"}  # configs older than the option
    for key in ("kind", "block", "decimator_block", "disentangler_repeats", "share_levels", "precondition",
                "skeleton"):
        a, b = src.config.get(key, defaults.get(key)), dst.config.get(key, defaults.get(key))
        if a != b:
            raise ValueError(f"cannot warm-start: {key} differs ({a!r} vs {b!r})")
    per_site = any(getattr(mod, "per_site", False) for f in (src, dst) for mod in f.flows.modules())
    L_src, L_dst = getattr(src, "L", None), getattr(dst, "L", None)
    if per_site and L_src != L_dst:
        raise ValueError(f"per-site blocks (neuralrg.flows.site) hold parameters per plaquette of one lattice "
                         f"size: an L = {L_src} flow cannot warm-start an L = {L_dst} one")
    sb, db = blocks(src), blocks(dst)
    n_src = 1 + max(k for _, k, _ in sb)
    n_dst = 1 + max(k for _, k, _ in db)
    for (role, k, r), blk in db.items():
        blk.load_state_dict(sb[(role, _level_map(k, n_src, n_dst), r)].state_dict())
    return len(db)
