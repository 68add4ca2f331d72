"""Analysis of trained flows: collective-variable statistics and mutual information."""
from .mutual_information import (
    gaussian_copula_mi,
    gaussian_mi,
    ksg_mi,
    mutual_information,
    neighbour_pairs,
)

__all__ = ["gaussian_copula_mi", "gaussian_mi", "ksg_mi", "mutual_information", "neighbour_pairs"]
