"""Samplers for trained flows and lattice targets: batched HMC (physical or latent space,
optionally blocked by RG level), flow-proposal independence Metropolis, importance sampling
(plain, and annealed through latent-HMC stages: ``annealed``), and the registry through which every entry point runs them (``registry.run_sampler``).

One sampler is one module in ``samplers/`` defining ``SAMPLER``; see ``registry``.
"""
from .annealed import annealed_importance, annealed_summary
from .chains import ChainRun, summarize_run
from .hmc import DualAveraging, HMCResult, hmc_step, kinetic_energy, leapfrog, make_potential_and_grad, run_hmc
from .importance import draw_log_weights, evaluate_flow, variational_summary
from .latent import latent_potential, latent_to_physical, physical_potential_and_grad
from .metropolis import independence_metropolis, metropolis_acceptance
from .registry import Sampler, available, get_sampler, resolve_settings, run_sampler
from .samplers.flow_metropolis import run_flow_metropolis
from .samplers.latent_hmc import run_latent_hmc
from .samplers.physical_hmc import run_physical_hmc

__all__ = ["annealed_importance", "annealed_summary", "ChainRun", "summarize_run", "DualAveraging", "HMCResult", "hmc_step", "kinetic_energy", "leapfrog",
           "make_potential_and_grad", "run_hmc", "draw_log_weights", "evaluate_flow", "variational_summary",
           "latent_potential", "latent_to_physical", "physical_potential_and_grad", "independence_metropolis",
           "metropolis_acceptance", "Sampler", "available", "get_sampler", "resolve_settings", "run_sampler",
           "run_flow_metropolis", "run_latent_hmc", "run_physical_hmc"]
