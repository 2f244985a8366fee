"""Figures the chapters share: schedules, forward trajectories, 2-D clouds, image grids, losses.

Every function draws on a given ``ax`` (or makes its own figure) and returns the figure, so
notebooks can compose panels. Nothing here computes results: it only shows them. Bad arguments
(an ``nrow`` of 0, a label list shorter than the frames) raise instead of drawing a wrong figure.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from matplotlib.figure import Figure
from torch import Tensor

from .checks import check_int, check_real, check_tensor
from .schedules import NoiseSchedule

__all__ = ["plot_schedules", "image_grid", "show_images", "plot_forward_images", "scatter_2d",
           "plot_trajectories_2d", "plot_losses"]


def _axes(ax, ncols: int = 1, size: tuple[float, float] = (4.0, 3.2)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=True)
    return fig, ax


def plot_schedules(schedules: Mapping[str, NoiseSchedule], axes=None) -> Figure:
    """Three panels per schedule: β_t, ᾱ_t and log SNR against t/T (index t plotted at (t+1)/T)."""
    _check_mapping(schedules, "schedules")
    for name, s in schedules.items():
        if not isinstance(s, NoiseSchedule):
            raise TypeError(f"schedules[{name!r}] must be a NoiseSchedule, got {type(s).__name__}")
    if axes is not None and np.size(axes) != 3:
        raise ValueError(f"axes must hold 3 panels (β, ᾱ, log SNR), got {np.size(axes)}")
    fig, axes = _axes(axes, ncols=3)
    for name, s in schedules.items():
        u = np.arange(1, s.T + 1) / s.T
        axes[0].plot(u, s.betas.numpy(), label=name)
        axes[1].plot(u, s.alpha_bar.numpy(), label=name)
        axes[2].plot(u, s.log_snr.numpy(), label=name)
    for ax, title in zip(axes, [r"$\beta_t$", r"$\bar\alpha_t$", r"$\log\,\mathrm{SNR}(t)$"]):
        ax.set_title(title)
        ax.set_xlabel("t / T")
        ax.legend()
    axes[0].set_yscale("log")
    fig.tight_layout()
    return fig


def image_grid(images: Tensor, nrow: int = 8, pad: int = 1) -> np.ndarray:
    """Tile images (B, C, H, W) in [-1, 1] into one (rows·(H+pad)+pad, nrow·(W+pad)+pad[, C]) array in
    [0, 1], row-major, white (1) between images and in empty cells. C is 1 (grey) or 3/4 (RGB[A])."""
    check_tensor(images, "images")
    if images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        raise ValueError(f"images must be (B, C, H, W) with C in (1, 3, 4), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("images is an empty batch (B = 0); there is nothing to show")
    nrow, pad = check_int(nrow, "nrow (images per row)", 1), check_int(pad, "pad (pixels)", 0)
    x = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    if torch.isnan(x).any():
        raise ValueError("images contain NaN (a diverged sampler?); they would show as blank cells")
    B, C, H, W = x.shape
    rows = -(-B // nrow)
    x = torch.cat([x, torch.ones(rows * nrow - B, C, H, W)])                 # blank cells fill the last row
    x = F.pad(x, (pad, 0, pad, 0), value=1.0)                                  # a border above / left of each
    grid = rearrange(x, "(r c) ch h w -> ch (r h) (c w)", c=nrow)
    grid = F.pad(grid, (0, pad, 0, pad), value=1.0).numpy()                   # the closing border
    return grid[0] if C == 1 else grid.transpose(1, 2, 0)


def show_images(images: Tensor, nrow: int = 8, title: str | None = None, ax=None) -> Figure:
    """Show a grid of images (B, C, H, W) in [-1, 1]."""
    grid = image_grid(images, nrow)
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}")
    fig, ax = _axes(ax, size=(0.45 * nrow + 1, 0.45 * np.ceil(len(images) / nrow) + 0.6))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_forward_images(frames: Sequence[Tensor], labels: Sequence[str], nrow_images: int = 4) -> Figure:
    """One column per noise level: frames[k] is (B, C, H, W) at the k-th chosen t, titled labels[k];
    the first ``nrow_images`` images of each frame are stacked in the column."""
    nrow_images = check_int(nrow_images, "nrow_images", 1)
    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError(f"frames and labels must be non-empty and of equal length, got {len(frames)} frames "
                         f"and {len(labels)} labels")
    fig, axes = plt.subplots(1, len(frames), figsize=(1.4 * len(frames), 1.4 * nrow_images + 0.4))
    for ax, frame, label in zip(np.atleast_1d(axes), frames, labels):
        ax.imshow(image_grid(frame[:nrow_images], nrow=1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def scatter_2d(clouds: Mapping[str, Tensor], axes=None, lim: float = 3.0, s: float = 2.0) -> Figure:
    """One panel per named point cloud (N, 2), on shared limits [-lim, lim]²; marker area ``s``."""
    _check_mapping(clouds, "clouds")
    for name, pts in clouds.items():
        check_tensor(pts, f"clouds[{name!r}]")
        if pts.ndim != 2 or pts.shape[1] != 2:
            raise ValueError(f"clouds[{name!r}] must be points (N, 2), got {tuple(pts.shape)}")
    lim, s = check_real(lim, "lim", 0, low_open=True), check_real(s, "s (marker size)", 0, low_open=True)
    if axes is not None and np.size(axes) != len(clouds):
        raise ValueError(f"axes must hold one panel per cloud ({len(clouds)}), got {np.size(axes)}")
    fig, axes = _axes(axes, ncols=len(clouds), size=(3.2, 3.2))
    for ax, (name, pts) in zip(np.atleast_1d(axes), clouds.items()):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=s, alpha=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(name)
    fig.tight_layout()
    return fig


def plot_trajectories_2d(trajectory: Tensor, n_paths: int = 30, ax=None, lim: float = 3.0, title: str = "") -> Figure:
    """Paths of a few particles through a sampler: trajectory (S, B, 2) with S states."""
    check_tensor(trajectory, "trajectory")
    if trajectory.ndim != 3 or trajectory.shape[-1] != 2 or 0 in trajectory.shape:
        raise ValueError(f"trajectory must be (S, B, 2) with S, B >= 1, got {tuple(trajectory.shape)}")
    n_paths = check_int(n_paths, "n_paths", 0)
    lim = check_real(lim, "lim", 0, low_open=True)
    fig, ax = _axes(ax, size=(3.6, 3.6))
    traj = trajectory.detach().cpu().numpy()
    ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=2, alpha=0.3, color="gray")
    for i in range(min(n_paths, traj.shape[1])):
        ax.plot(traj[:, i, 0], traj[:, i, 1], lw=0.6, alpha=0.8)
        ax.plot(traj[-1, i, 0], traj[-1, i, 1], "k.", ms=3)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(title)
    return fig


def plot_losses(losses: Mapping[str, Sequence[float]], ax=None, smooth: int = 50) -> Figure:
    """Training curves (moving average over ``smooth`` steps, plotted at the window's last step), one line per run."""
    _check_mapping(losses, "losses")
    smooth = check_int(smooth, "smooth (moving-average window)", 1)
    if any(len(v) == 0 for v in losses.values()):
        raise ValueError(f"every loss curve needs at least one value, got lengths { {k: len(v) for k, v in losses.items()} }")
    fig, ax = _axes(ax, size=(5, 3.2))
    for name, values in losses.items():
        v = torch.as_tensor(list(values), dtype=torch.float64)
        k = max(1, min(smooth, len(v)))
        avg = torch.nn.functional.avg_pool1d(v[None, None], k, stride=1)[0, 0]
        ax.plot(np.arange(k, len(v) + 1), avg.numpy(), label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    return fig


def _check_mapping(value: object, name: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping {{name: value}}, got {type(value).__name__}")
    if len(value) == 0:
        raise ValueError(f"{name} is empty; pass at least one {{name: value}} entry")
