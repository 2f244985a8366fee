"""Plotting helpers draw exactly the data they are given (read back from the Agg figures) and reject bad input."""
import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minidiff import NoiseSchedule  # noqa: E402
from minidiff import plotting as P  # noqa: E402

NAN = float("nan")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def brute_grid(images, nrow, pad):
    """The layout written out with loops: image i at row i // nrow, column i % nrow, white borders."""
    x = ((images.clamp(-1, 1) + 1) / 2).numpy()
    B, C, H, W = x.shape
    rows = -(-B // nrow)
    grid = np.ones((C, rows * (H + pad) + pad, nrow * (W + pad) + pad), dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return grid[0] if C == 1 else grid.transpose(1, 2, 0)


def test_image_grid_layout():
    imgs = torch.linspace(-1, 1, 5 * 4 * 4).reshape(5, 1, 4, 4)
    grid = P.image_grid(imgs, nrow=3, pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1)
    assert grid[1:5, 1:5].tolist() == ((imgs[0, 0] + 1) / 2).tolist()
    assert grid[6:10, 6:10].tolist() == ((imgs[4, 0] + 1) / 2).tolist()     # image 4: row 1, column 1
    assert (grid[6:10, 11:15] == 1).all()                                  # the empty sixth cell is white
    assert (grid[0] == 1).all() and (grid[:, 5] == 1).all()                # borders


@pytest.mark.parametrize("shape, nrow, pad", [((7, 1, 3, 2), 3, 1), ((4, 3, 5, 5), 2, 0), ((1, 4, 2, 2), 5, 2),
                                              ((6, 1, 2, 2), 1, 3)])
def test_image_grid_matches_the_loop(shape, nrow, pad, generator):
    imgs = torch.randn(shape, generator=generator) * 1.5                      # some values clip at ±1
    assert np.array_equal(P.image_grid(imgs, nrow=nrow, pad=pad), brute_grid(imgs, nrow, pad))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(images=torch.zeros(4, 4)), ValueError, r"\(B, C, H, W\)"),
    (dict(images=torch.zeros(2, 2, 4, 4)), ValueError, r"C in \(1, 3, 4\)"),
    (dict(images=torch.zeros(0, 1, 4, 4)), ValueError, "empty batch"),
    (dict(images=torch.full((1, 1, 2, 2), NAN)), ValueError, "NaN"),
    (dict(images=np.zeros((1, 1, 2, 2))), TypeError, "images must be a torch.Tensor"),
    (dict(nrow=0), ValueError, "nrow"),
    (dict(nrow=-2), ValueError, "nrow"),
    (dict(nrow=2.0), TypeError, "nrow"),
    (dict(nrow=True), TypeError, "nrow"),
    (dict(pad=-1), ValueError, "pad"),
    (dict(pad=0.5), TypeError, "pad"),
])
def test_image_grid_rejects(kwargs, error, match):
    kwargs = {"images": torch.zeros(3, 1, 4, 4), **kwargs}
    with pytest.raises(error, match=match):
        P.image_grid(**kwargs)


def test_plot_schedules_draws_the_schedule_values():
    lin, cos = NoiseSchedule.linear(100), NoiseSchedule.cosine(50)
    fig = P.plot_schedules({"linear": lin, "cosine": cos})
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [r"$\beta_t$", r"$\bar\alpha_t$", r"$\log\,\mathrm{SNR}(t)$"]
    assert all(ax.get_xlabel() == "t / T" for ax in axes) and axes[0].get_yscale() == "log"
    for ax, values in zip(axes, ("betas", "alpha_bar", "log_snr")):
        assert [line.get_label() for line in ax.lines] == ["linear", "cosine"]
        for line, s in zip(ax.lines, (lin, cos)):
            assert np.allclose(line.get_xdata(), np.arange(1, s.T + 1) / s.T)
            assert np.array_equal(line.get_ydata(), getattr(s, values).numpy())
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["linear", "cosine"]


def test_plot_schedules_rejects():
    with pytest.raises(ValueError, match="schedules is empty"):
        P.plot_schedules({})
    with pytest.raises(TypeError, match="mapping"):
        P.plot_schedules([NoiseSchedule.linear(10)])
    with pytest.raises(TypeError, match=r"schedules\['a'\] must be a NoiseSchedule"):
        P.plot_schedules({"a": torch.linspace(0.1, 0.2, 10)})
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="3 panels"):
        P.plot_schedules({"a": NoiseSchedule.linear(10)}, axes=ax)


def test_show_images_and_forward_images_show_the_grid(generator):
    imgs = torch.rand(10, 1, 8, 8, generator=generator) * 2 - 1
    fig = P.show_images(imgs, nrow=5, title="digits")
    ax = fig.axes[0]
    assert ax.get_title() == "digits" and not ax.axison
    assert np.array_equal(ax.images[0].get_array(), P.image_grid(imgs, 5))
    assert ax.images[0].get_clim() == (0, 1)                              # no per-figure contrast stretch
    frames = [imgs, imgs * 0.5, -imgs]
    fig = P.plot_forward_images(frames, ["t=0", "t=10", "t=99"], nrow_images=3)
    assert [a.get_title() for a in fig.axes] == ["t=0", "t=10", "t=99"]
    for a, frame in zip(fig.axes, frames):
        assert np.array_equal(a.images[0].get_array(), P.image_grid(frame[:3], nrow=1))
    with pytest.raises(ValueError, match="equal length"):
        P.plot_forward_images(frames, ["a", "b"])                         # zip would drop a frame silently
    with pytest.raises(ValueError, match="non-empty"):
        P.plot_forward_images([], [])
    for n, error in [(0, ValueError), (2.0, TypeError)]:
        with pytest.raises(error, match="nrow_images"):
            P.plot_forward_images(frames, ["a", "b", "c"], nrow_images=n)
    with pytest.raises(TypeError, match="title"):
        P.show_images(imgs, title=3)
    with pytest.raises(ValueError, match="nrow"):
        P.show_images(imgs, nrow=0)


def test_scatter_2d_plots_the_points(generator):
    a, b = torch.randn(50, 2, generator=generator), torch.randn(30, 2, generator=generator)
    fig = P.scatter_2d({"a": a, "b": b}, lim=2.5)
    assert [ax.get_title() for ax in fig.axes] == ["a", "b"]
    for ax, pts in zip(fig.axes, (a, b)):
        assert np.allclose(ax.collections[0].get_offsets(), pts.numpy())
        assert ax.get_xlim() == (-2.5, 2.5) and ax.get_ylim() == (-2.5, 2.5)
    for kwargs, error, match in [(dict(lim=0), ValueError, "lim"), (dict(lim=NAN), ValueError, "lim"),
                                 (dict(s=-1.0), ValueError, "s "), (dict(lim=True), TypeError, "lim")]:
        with pytest.raises(error, match=match):
            P.scatter_2d({"a": a}, **kwargs)
    with pytest.raises(ValueError, match=r"clouds\['a'\] must be points \(N, 2\)"):
        P.scatter_2d({"a": torch.zeros(5, 3)})
    with pytest.raises(ValueError, match="clouds is empty"):
        P.scatter_2d({})
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="one panel per cloud"):
        P.scatter_2d({"a": a, "b": b}, axes=ax)


def test_plot_trajectories_2d_draws_each_path(generator):
    traj = torch.randn(6, 20, 2, generator=generator)
    fig = P.plot_trajectories_2d(traj, n_paths=4, title="DDPM")
    ax = fig.axes[0]
    assert ax.get_title() == "DDPM"
    assert np.allclose(ax.collections[0].get_offsets(), traj[-1].numpy())  # every end point
    paths = ax.lines[0::2]                                                 # each path, then its end marker
    assert len(paths) == 4
    for i, line in enumerate(paths):
        assert np.allclose(line.get_xydata(), traj[:, i].numpy())
    for kwargs, error, match in [(dict(n_paths=-1), ValueError, "n_paths"), (dict(n_paths=2.5), TypeError, "n_paths"),
                                 (dict(lim=-3.0), ValueError, "lim")]:
        with pytest.raises(error, match=match):
            P.plot_trajectories_2d(traj, **kwargs)
    for bad in (torch.zeros(10, 2), torch.zeros(0, 5, 2), torch.zeros(3, 5, 3)):
        with pytest.raises(ValueError, match=r"\(S, B, 2\)"):
            P.plot_trajectories_2d(bad)


def test_plot_losses_draws_the_moving_average():
    values = [1.0 / (i + 1) for i in range(200)]
    fig = P.plot_losses({"run": values, "short": [2.0, 1.0, 0.5]}, smooth=10)
    ax = fig.axes[0]
    run, short = ax.lines
    expected = np.convolve(values, np.ones(10) / 10, mode="valid")
    assert np.allclose(run.get_ydata(), expected) and np.array_equal(run.get_xdata(), np.arange(10, 201))
    assert np.allclose(short.get_ydata(), [3.5 / 3]) and list(short.get_xdata()) == [3]   # window shrinks to 3
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == ("step", "loss", "log")
    for smooth, error in [(0, ValueError), (-5, ValueError), (2.5, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="smooth"):
            P.plot_losses({"run": values}, smooth=smooth)
    with pytest.raises(ValueError, match="at least one value"):
        P.plot_losses({"run": []})
    with pytest.raises(TypeError, match="mapping"):
        P.plot_losses(values)
