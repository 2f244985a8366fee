"""Data the course can rely on offline: seeded 2-D toys and scikit-learn's 8×8 digits."""
from .digits import DIGITS_BIN_WIDTH, digits
from .toys import TOYS, GaussianMixture, rings, swiss_roll, toy_data, two_moons

__all__ = ["DIGITS_BIN_WIDTH", "digits", "TOYS", "GaussianMixture", "rings", "swiss_roll", "toy_data", "two_moons"]
