"""Normalizing flows for NeuralRG: plaquette bijectors, the MERA hierarchy, a flat baseline, and
moving trained flows between lattice sizes (``transfer``)."""
from .build import build_flat, build_flow, build_mera
from .coupling import PlaquetteBijector, PlaquetteCoupling
from .flat import CheckerboardCoupling
from .hierarchy import PlaquetteLayer, latent_levels, transfer_mera_weights
from .model import NeuralRGFlow, StandardNormal
from .odd import OddPlaquetteBijector
from .precondition import GaussianPreconditioner
from .transfer import WarmStartReport, canonical_parameters, transfer_flow, warm_start_flow
from .wavelet import HaarDecimator, HaarPlaquette

__all__ = ["build_flow", "build_mera", "build_flat", "NeuralRGFlow", "StandardNormal",
           "PlaquetteBijector", "OddPlaquetteBijector", "PlaquetteCoupling", "PlaquetteLayer", "CheckerboardCoupling",
           "latent_levels", "transfer_mera_weights", "GaussianPreconditioner",
           "HaarDecimator", "HaarPlaquette", "transfer_flow", "warm_start_flow", "WarmStartReport",
           "canonical_parameters"]
