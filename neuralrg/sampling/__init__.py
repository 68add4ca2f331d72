"""Samplers for trained flows: batched HMC (physical or latent space, optionally blocked by RG
level), flow-proposal independence Metropolis, and the runners that turn chains into physics.

The ``sample.py`` pipeline (files, figures, comparison table) lives in
``neuralrg.sampling.pipeline`` and is not imported here (it pulls in matplotlib).
"""
from .hmc import (DualAveraging, HMCResult, hmc_step, kinetic_energy, leapfrog, make_potential_and_grad,
                  run_hmc)
from .latent import latent_potential, latent_to_physical, physical_potential_and_grad, random_sign
from .metropolis import independence_metropolis, metropolis_acceptance
from .runner import (SAMPLERS, ChainRun, level_blocks, run_flow_metropolis, run_latent_hmc, run_physical_hmc,
                     summarize_run)

__all__ = ["DualAveraging", "HMCResult", "hmc_step", "kinetic_energy", "leapfrog", "make_potential_and_grad",
           "run_hmc", "latent_potential", "latent_to_physical", "physical_potential_and_grad", "random_sign",
           "independence_metropolis", "metropolis_acceptance", "SAMPLERS", "ChainRun", "level_blocks",
           "run_latent_hmc", "run_physical_hmc", "run_flow_metropolis", "summarize_run"]
