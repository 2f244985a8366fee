"""Data the course can rely on offline: seeded 2-D toys, scikit-learn's 8×8 digits, the shapes world and ECGs
(:mod:`minidiff.data.ecg`: PTB-XL / ICBEB loaders for users who have them, an offline default)."""
from . import ecg
from .digits import DIGITS_BIN_WIDTH, digits
from .shapes import Scenes, WordTokenizer, make_scenes, plot_scenes
from .toys import TOYS, GaussianMixture, rings, swiss_roll, toy_data, two_moons

__all__ = ["DIGITS_BIN_WIDTH", "digits", "TOYS", "GaussianMixture", "rings", "swiss_roll", "toy_data", "two_moons",
           "Scenes", "WordTokenizer", "make_scenes", "plot_scenes", "ecg"]
