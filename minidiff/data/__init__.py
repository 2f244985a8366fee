"""Data the course can rely on offline: seeded 2-D toys, scikit-learn's 8×8 digits and the shapes world."""
from .digits import DIGITS_BIN_WIDTH, digits
from .shapes import Scenes, WordTokenizer, make_scenes, plot_scenes
from .toys import TOYS, GaussianMixture, rings, swiss_roll, toy_data, two_moons

__all__ = ["DIGITS_BIN_WIDTH", "digits", "TOYS", "GaussianMixture", "rings", "swiss_roll", "toy_data", "two_moons",
           "Scenes", "WordTokenizer", "make_scenes", "plot_scenes"]
