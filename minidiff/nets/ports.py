r"""Ports: named places in a denoiser's forward pass where a side network reads or adds features.

Power steering (chapter 7), ControlNet- and T2I-Adapter-style side networks and feature probes all do
one of two things to a frozen denoiser: *read* an intermediate feature, or *add* a residual to it. The
Stable Diffusion U-Net of diffusers cannot be edited, only hooked (``register_forward_hook``), so
minidiff's own nets use the same mechanism: every port is a module — a :class:`Port`, an identity with a
name — and a forward hook on it reads or changes its output. One code path serves both worlds:

    with add_residuals(unet, {"mid": r_mid, "skip.1": r_skip}):   # r: (B, c, h, w), see unet.port_shape
        eps = unet(x_t, t, cond)
    # the hooks are gone here: the model is exactly as before

    with capture(unet) as feats:                                   # {port name: feature}
        unet(x_t, t, cond)

A *target* is a port name of a minidiff net (``"down.0.1"``, ``"mid"``, ``"skip.0"``, …; see
:func:`find_ports`) or, for any other ``nn.Module`` (e.g. a diffusers U-Net), the dotted name of a
submodule (``"mid_block"``, ``"down_blocks.1"``). A residual is a tensor added to the module's output, or
a callable ``f(output) -> new output`` for outputs that are not a single tensor (diffusers' down blocks
return tuples).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from torch import Tensor, nn

__all__ = ["Port", "find_ports", "resolve_target", "PortHooks", "add_residuals", "capture"]

Residual = Tensor | Callable[[Any], Any]


class Port(nn.Identity):
    """An identity module that marks a named feature of a network: hooks on it read or change the feature.

    name: the port's public name, e.g. ``"down.0.1"``; channels and scale (the downsampling factor of
    its feature map relative to the input along each spatial axis, 1 for MLP features) describe the
    feature it carries.
    """

    def __init__(self, name: str, channels: int, scale: int = 1) -> None:
        super().__init__()
        self.port_name, self.channels, self.scale = name, int(channels), int(scale)

    def extra_repr(self) -> str:
        return f"{self.port_name!r}, channels={self.channels}, scale={self.scale}"


def find_ports(model: nn.Module) -> dict[str, Port]:
    """Every :class:`Port` inside ``model``, by port name, in forward (registration) order."""
    found: dict[str, Port] = {}
    for module in model.modules():
        if isinstance(module, Port):
            if module.port_name in found:
                raise ValueError(f"two ports share the name {module.port_name!r}")
            found[module.port_name] = module
    return found


def resolve_target(model: nn.Module, target: str, ports: Mapping[str, Port] | None = None) -> nn.Module:
    """The module a target names: a port of a minidiff net, else a dotted submodule name.

    ``ports``: ``find_ports(model)`` if already computed (saves a walk over the modules per target).
    """
    if not isinstance(target, str):
        raise TypeError(f"a port target must be a str (port or submodule name), got {type(target).__name__}")
    ports = find_ports(model) if ports is None else ports
    if target in ports:
        return ports[target]
    try:
        return model.get_submodule(target)
    except AttributeError:
        names = list(ports) or [n for n, _ in model.named_children()]
        raise KeyError(f"unknown port {target!r}; this model has {'ports' if ports else 'submodules'} {names}") from None


def _adder(target: str, residual: Residual) -> Callable[[nn.Module, Any, Any], Any]:
    if callable(residual) and not isinstance(residual, Tensor):
        return lambda module, inputs, output: residual(output)
    if not isinstance(residual, Tensor):
        raise TypeError(f"the residual for {target!r} must be a tensor or a callable, got {type(residual).__name__}")

    def hook(module: nn.Module, inputs: Any, output: Any) -> Tensor:
        if not isinstance(output, Tensor):
            raise TypeError(f"port {target!r} outputs {type(output).__name__}, not a tensor: pass a callable "
                            "f(output) -> output as its residual")
        if residual.shape[1:] != output.shape[1:] or residual.shape[0] not in (1, output.shape[0]):
            raise ValueError(f"the residual for port {target!r} must have shape (B, {', '.join(map(str, output.shape[1:]))})"
                             f" = {tuple(output.shape)}, got {tuple(residual.shape)}")
        return output + residual.to(dtype=output.dtype, device=output.device)
    return hook


class PortHooks:
    """Forward hooks attached to targets of one model; ``remove()`` (or leaving the ``with``) detaches them all."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.handles = model, []
        self._ports: dict[str, Port] | None = None

    def add(self, target: str, hook: Callable[[nn.Module, Any, Any], Any]) -> "PortHooks":
        if self._ports is None:
            self._ports = find_ports(self.model)
        self.handles.append(resolve_target(self.model, target, self._ports).register_forward_hook(hook))
        return self

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __enter__(self) -> "PortHooks":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def add_residuals(model: nn.Module, residuals: Mapping[str, Residual]) -> PortHooks:
    """Add ``residuals[target]`` to each target's output on every forward call until removed.

    Returns a :class:`PortHooks`; use it as a context manager or call ``.remove()``. Targets are checked
    now (unknown names raise KeyError); residual shapes are checked on the forward call.
    """
    if not isinstance(residuals, Mapping):
        raise TypeError(f"residuals must be a mapping {{port: tensor}}, got {type(residuals).__name__}")
    hooks = PortHooks(model)
    try:
        for target, residual in residuals.items():
            hooks.add(target, _adder(target, residual))
    except Exception:
        hooks.remove()
        raise
    return hooks


@contextmanager
def capture(model: nn.Module, targets: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Record the output of each target (default: every port) during forward calls inside the block.

    Yields a dict filled as the model runs: ``{target: output}`` (the last call's output wins).
    """
    targets = list(find_ports(model)) if targets is None else list(targets)
    feats: dict[str, Any] = {}
    hooks = PortHooks(model)
    try:
        for target in targets:
            hooks.add(target, lambda module, inputs, output, name=target: feats.__setitem__(name, output))
        yield feats
    finally:
        hooks.remove()
