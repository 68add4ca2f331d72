"""Samplers: batched HMC (physical or latent space, optionally blocked)."""
from .hmc import (DualAveraging, HMCResult, hmc_step, kinetic_energy, leapfrog, make_potential_and_grad,
                  run_hmc)

__all__ = ["DualAveraging", "HMCResult", "hmc_step", "kinetic_energy", "leapfrog", "make_potential_and_grad",
           "run_hmc"]
