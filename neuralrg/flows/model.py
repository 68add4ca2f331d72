"""The NeuralRG flow model: a normflows ``NormalizingFlow`` over (B, L, L) fields.

Direction: z (latent, N(0, I)) → x (physical) is ``forward``; x → z is ``inverse``.
``sample(n)`` returns ``(x, log q(x))``; ``log_prob(x)`` runs the inverse. Log-dets are
accumulated in the model's dtype (normflows' own accumulator is float32). All densities are
totals over the lattice, natural log.

With ``z2=True`` the density is symmetrised, log q_sym(x) = logaddexp(log q(x), log q(−x)) − ln 2,
and sampling flips the global sign at random.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import normflows as nf
import torch

from ..physics.target import LatticeTarget, check_field_shape

_LN2 = math.log(2.0)


def random_sign(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, L, L) with each sample's global sign flipped with probability ½."""
    u = torch.rand(x.shape[0], dtype=x.dtype, device=x.device, generator=generator)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.where(u < 0.5, -one, one)[:, None, None] * x


class StandardNormal(nf.distributions.BaseDistribution):
    """N(0, I) over tensors shaped (B, *shape); dtype and device follow the module."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def forward(self, num_samples: int = 1, generator: torch.Generator | None = None):
        z = torch.randn((num_samples, *self.shape), dtype=self._ref.dtype,
                        device=self._ref.device, generator=generator)
        return z, self.log_prob(z)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * z.pow(2).flatten(1).sum(dim=1) - 0.5 * self.dim * math.log(2 * math.pi)


class NeuralRGFlow(nf.NormalizingFlow):
    """Flow model for a lattice target (any ``LatticeTarget``), prior N(0, I) on z (B, L, L).

    ``latent_levels`` (L, L) gives the RG level of every latent site (0 = finest); the flat
    baseline puts every site on level 0. ``config`` holds what rebuilds the model
    (see ``neuralrg.flows.build_flow``). ``sign_fold_weight``: the weight of the sign fold the
    flow was trained against (``loss.sign_fold``; set by ``load_flow``, None otherwise), a plain
    attribute outside the state dict.
    """

    sign_fold_weight: torch.Tensor | None = None

    def __init__(self, flows: list[nf.flows.Flow], target: LatticeTarget, *, z2: bool,
                 levels: torch.Tensor, config: dict[str, Any]) -> None:
        super().__init__(StandardNormal((target.L, target.L)), flows, target)
        self.L = target.L
        self.n_sites = target.n_sites
        self.z2 = bool(z2)
        self.config = dict(config)
        self.register_buffer("latent_levels", levels.to(torch.long), persistent=False)
        self.n_levels = int(levels.max().item()) + 1

    @property
    def target(self) -> LatticeTarget:
        return self.p

    @property
    def dtype(self) -> torch.dtype:
        return self.q0._ref.dtype

    @property
    def device(self) -> torch.device:
        return self.q0._ref.device

    def level_mask(self, level: int) -> torch.Tensor:
        """Bool (L, L): the latent sites of RG level ``level``."""
        return self.latent_levels == level

    # -- bijection -----------------------------------------------------------------
    def forward_and_log_det(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z → x and log|det ∂x/∂z|, shape (B,), in z's dtype."""
        check_field_shape(z, self.L, "z")
        log_det = z.new_zeros(z.shape[0])
        for flow in self.flows:
            z, ld = flow(z)
            log_det = log_det + ld
        return z, log_det

    def inverse_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x → z and log|det ∂z/∂x|, shape (B,), in x's dtype."""
        check_field_shape(x, self.L, "x")
        log_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flows):
            x, ld = flow.inverse(x)
            log_det = log_det + ld
        return x, log_det

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_and_log_det(z)[0]

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return self.inverse_and_log_det(x)[0]

    # -- densities -----------------------------------------------------------------
    def log_prob_unsymmetrised(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) of the plain (not Z2-symmetrised) flow, shape (B,)."""
        z, log_det = self.inverse_and_log_det(x)
        return self.q0.log_prob(z) + log_det

    def latent_and_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z = g⁻¹(x), log q(x)) with log q_sym when ``z2``; shapes (B, L, L), (B,)."""
        z, log_det = self.inverse_and_log_det(x)
        log_q = self.q0.log_prob(z) + log_det
        return z, (self.symmetrised_log_prob(x, log_q) if self.z2 else log_q)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log q(x) (log q_sym(x) when ``z2``), shape (B,)."""
        return self.latent_and_log_prob(x)[1]

    def symmetrised_log_prob(self, x: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """log q_sym(x) given the already known plain log q(x)."""
        return torch.logaddexp(log_q, self.log_prob_unsymmetrised(-x)) - _LN2

    def forward_densities(self, z: torch.Tensor, x: torch.Tensor, log_det: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """(plain log q(x), log q(x) as sampled: q_sym with ``z2``) of x = g(z), from the forward
        pass' log|det ∂x/∂z|; each (B,). The one place where the Z2 correction is applied to a
        density known from z."""
        log_q = self.q0.log_prob(z) - log_det
        return log_q, (self.symmetrised_log_prob(x, log_q) if self.z2 else log_q)

    def log_prob_from_forward(self, z: torch.Tensor, x: torch.Tensor, log_det: torch.Tensor) -> torch.Tensor:
        """log q(x) (q_sym with ``z2``) of x = g(z), shape (B,) (see ``forward_densities``)."""
        return self.forward_densities(z, x, log_det)[1]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block the trainable parameters have ``requires_grad`` off (gradients flow
        to the inputs only: latent HMC, path gradients); restored afterwards."""
        params = [p for p in self.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def sample_with_latent(self, num_samples: int = 1, generator: torch.Generator | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw (z, x, log q(x)); with ``z2``, x carries a random global sign and log q is q_sym."""
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        z, _ = self.q0(int(num_samples), generator=generator)
        x, log_det = self.forward_and_log_det(z)
        log_q = self.log_prob_from_forward(z, x, log_det)
        if self.z2:
            x = random_sign(x, generator)
        return z, x, log_q

    def sample(self, num_samples: int = 1, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (x, log q(x)), x shaped (num_samples, L, L)."""
        _, x, log_q = self.sample_with_latent(num_samples, generator)
        return x, log_q

    def reverse_kld(self, num_samples: int = 1, beta: float = 1.0, score_fn: bool = True
                    ) -> torch.Tensor:
        """Variational free energy estimate mean[log q(x) − β log p(x)] (total, not per site).

        ``score_fn=False`` gives the path-wise "sticking the landing" gradient: log q is
        re-evaluated at x with the parameters detached (costs one extra inverse pass).
        """
        z, x, log_q = self.sample_with_latent(num_samples)
        if not score_fn:
            with self.frozen():
                log_q = self.log_prob(x)
        return torch.mean(log_q) - beta * torch.mean(self.p.log_prob(x))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
