"""Plotting helpers draw what they are given (smoke tests on the Agg backend) and reject bad shapes."""
import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minidiff import NoiseSchedule  # noqa: E402
from minidiff import plotting as P  # noqa: E402


def test_image_grid_layout():
    imgs = torch.linspace(-1, 1, 5 * 4 * 4).reshape(5, 1, 4, 4)
    grid = P.image_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert grid.min() >= 0 and grid.max() <= 1
    assert grid[1:5, 1:5].tolist() == ((imgs[0, 0] + 1) / 2).tolist()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        P.image_grid(torch.zeros(4, 4))


def test_figures_are_returned():
    figs = [
        P.plot_schedules({"linear": NoiseSchedule.linear(100), "cosine": NoiseSchedule.cosine(100)}),
        P.show_images(torch.zeros(10, 1, 8, 8), nrow=5, title="x"),
        P.plot_forward_images([torch.zeros(4, 1, 8, 8)] * 3, ["a", "b", "c"]),
        P.scatter_2d({"a": torch.randn(50, 2), "b": torch.randn(50, 2)}),
        P.plot_trajectories_2d(torch.randn(10, 20, 2)),
        P.plot_losses({"run": [1.0 / (i + 1) for i in range(200)]}),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
    assert len(figs[0].axes) == 3
    plt.close("all")
    with pytest.raises(ValueError, match=r"\(S, B, 2\)"):
        P.plot_trajectories_2d(torch.zeros(10, 2))
