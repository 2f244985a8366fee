"""Figures the chapters share: schedules, forward trajectories, 2-D clouds, image grids, losses.

Every function draws on a given ``ax`` (or makes its own figure) and returns the figure, so
notebooks can compose panels. Nothing here computes results: it only shows them.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .schedules import NoiseSchedule

__all__ = ["plot_schedules", "image_grid", "show_images", "plot_forward_images", "scatter_2d",
           "plot_trajectories_2d", "plot_losses"]


def _axes(ax, ncols: int = 1, size: tuple[float, float] = (4.0, 3.2)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=True)
    return fig, ax


def plot_schedules(schedules: Mapping[str, NoiseSchedule], axes=None) -> Figure:
    """Three panels per schedule: β_t, ᾱ_t and log SNR against t/T."""
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
    """Tile images (B, C, H, W) in [-1, 1] into one (rows·H, nrow·W[, C]) array in [0, 1]."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    B, C, H, W = x.shape
    rows = int(np.ceil(B / nrow))
    grid = np.ones((C, rows * (H + pad) + pad, nrow * (W + pad) + pad), dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[:, pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i]
    return grid[0] if C == 1 else grid.transpose(1, 2, 0)


def show_images(images: Tensor, nrow: int = 8, title: str | None = None, ax=None) -> Figure:
    """Show a grid of images (B, C, H, W) in [-1, 1]."""
    fig, ax = _axes(ax, size=(0.45 * nrow + 1, 0.45 * np.ceil(len(images) / nrow) + 0.6))
    ax.imshow(image_grid(images, nrow), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_forward_images(frames: Sequence[Tensor], labels: Sequence[str], nrow_images: int = 4) -> Figure:
    """One column per noise level: frames[k] is (B, C, H, W) at the k-th chosen t."""
    fig, axes = plt.subplots(1, len(frames), figsize=(1.4 * len(frames), 1.4 * nrow_images + 0.4))
    for ax, frame, label in zip(np.atleast_1d(axes), frames, labels):
        ax.imshow(image_grid(frame[:nrow_images], nrow=1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def scatter_2d(clouds: Mapping[str, Tensor], axes=None, lim: float = 3.0, s: float = 2.0) -> Figure:
    """One panel per named point cloud (N, 2), on shared limits."""
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
    if trajectory.ndim != 3 or trajectory.shape[-1] != 2:
        raise ValueError(f"trajectory must be (S, B, 2), got {tuple(trajectory.shape)}")
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
    """Training curves (moving average over ``smooth`` steps), one line per run."""
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
