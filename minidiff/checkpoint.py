"""Checkpoints that rebuild their model: ``save_model(model, path)`` … ``load_model(path)`` in a fresh process.

Every minidiff net is decorated with :func:`record_config`, so it remembers the keyword arguments that
built it. A checkpoint is a **folder** laid out like a diffusers ``save_pretrained`` folder::

    path/config.json          {"format": "minidiff-checkpoint", "version": 1,
                               "class": "minidiff.nets.mlp.MLPDenoiser", "config": {"width": 64, ...},
                               "meta": {...}, "ema": {"decay": 0.999, "warmup": true, "num_updates": 500} | null}
    path/model.safetensors    the model's ``state_dict()``
    path/ema.safetensors      the EMA weights of the trainable parameters (only when saved with an EMA)

``load_model(path)`` imports the class (only ``minidiff.*`` classes that record their config are
rebuilt: a checkpoint never names code to run), builds it from the config and loads the weights;
``load_model(path, ema=True)`` puts the EMA weights in. Any module, minidiff's or not, can be saved and
loaded into a model you built yourself with :func:`save_checkpoint` / :func:`load_checkpoint`.

Config values must be JSON-able; tuples, dtypes, small tensors, :class:`~minidiff.NoiseSchedule` objects
and nested recorded modules (e.g. the net inside :class:`~minidiff.ContinuousTime`) are encoded as tagged
objects (``{"__tuple__": [...]}``) so they come back as the same types.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .schedules import NoiseSchedule

__all__ = ["record_config", "model_config", "build_model", "save_model", "load_model", "save_checkpoint",
           "load_checkpoint", "load_weights", "read_config", "FORMAT"]

FORMAT = "minidiff-checkpoint"
_CONFIG, _WEIGHTS, _EMA = "config.json", "model.safetensors", "ema.safetensors"
_ATTR = "_minidiff_config"       # (class, {argument: value}) set on every instance of a decorated class
_MARK = "_minidiff_records_config"


# --------------------------------------------------------------------------- recording the config
def record_config(cls: type) -> type:
    """Class decorator: instances remember ``(cls, {argument: value})`` of the call that built them.

    Only the outermost decorated ``__init__`` records (a decorated subclass calling ``super().__init__``
    keeps its own arguments). ``**kwargs`` are flattened into the mapping, so ``cls(**config)`` rebuilds.
    """
    init = cls.__init__
    signature = inspect.signature(init)
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        raise TypeError(f"record_config cannot rebuild {cls.__name__}: its __init__ takes *args")

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        outer = _ATTR not in self.__dict__
        if outer:
            object.__setattr__(self, _ATTR, None)   # claims the record before nested inits run
        init(self, *args, **kwargs)
        if outer:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            config: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                config.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
            object.__setattr__(self, _ATTR, (cls, config))

    cls.__init__ = __init__
    setattr(cls, _MARK, cls)
    return cls


def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def model_config(model: nn.Module) -> dict[str, Any]:
    """``{"class": import path, "config": JSON-able arguments}`` of a net built by a recorded class."""
    record = model.__dict__.get(_ATTR)
    if record is None:
        raise TypeError(f"{type(model).__name__} does not record the config that built it, so it cannot be "
                        "rebuilt: decorate the class with @minidiff.checkpoint.record_config (minidiff nets are), "
                        "or save its weights with save_checkpoint and load them into a model you build")
    cls, config = record
    if type(model) is not cls:
        raise TypeError(f"{_class_path(type(model))} subclasses {_class_path(cls)} without recording its own "
                        "config: decorate it with @record_config")
    where = f"{type(model).__name__}"
    return {"class": _class_path(cls), "config": {k: _encode(v, f"{where}({k}=...)") for k, v in config.items()}}


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild ``model_config(model)``'s output: import the ``minidiff.*`` class and call it with the config."""
    path = spec.get("class") if isinstance(spec, Mapping) else None
    if not isinstance(path, str) or not path.startswith("minidiff."):
        raise ValueError(f"only minidiff classes are rebuilt from a checkpoint, got class {path!r}")
    module_name, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot find {path} (saved by another minidiff version?): {err}") from None
    if getattr(cls, _MARK, None) is not cls:
        raise ValueError(f"{path} does not record its config, so a checkpoint cannot rebuild it")
    config = {k: _decode(v) for k, v in dict(spec.get("config") or {}).items()}
    return cls(**config)


def _encode(value: Any, where: str) -> Any:
    """A JSON-able form of a constructor argument (tagged objects for the non-JSON types we support)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_encode(v, where) for v in value]
        return items if isinstance(value, list) else {"__tuple__": items}
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str) or k.startswith("__")]
        if bad:
            raise TypeError(f"{where}: mapping keys must be str not starting with '__', got {bad}")
        return {k: _encode(v, where) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, NoiseSchedule):
        return {"__schedule__": {"betas": value.betas.tolist(), "name": value.name}}
    if isinstance(value, Tensor):
        return {"__tensor__": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, nn.Module):
        return {"__module__": model_config(value)}
    raise TypeError(f"{where} is a {type(value).__name__}, which a checkpoint config cannot hold "
                    "(JSON values, tuples, dtypes, tensors, NoiseSchedule and recorded minidiff modules can)")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__dtype__" in value:
        return getattr(torch, value["__dtype__"])
    if "__device__" in value:
        return torch.device(value["__device__"])
    if "__schedule__" in value:
        return NoiseSchedule(value["__schedule__"]["betas"], name=value["__schedule__"]["name"])
    if "__tensor__" in value:
        return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
    if "__module__" in value:
        return build_model(value["__module__"])
    return {k: _decode(v) for k, v in value.items()}


# --------------------------------------------------------------------------- weights
def _cpu_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Contiguous CPU tensors with no shared storage (safetensors refuses tied tensors)."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "the checkpoint") -> nn.Module:
    """``model.load_state_dict(state)`` with an error that names the mismatching keys and both shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        lines = [f"{k!r} has shape {a} in {source} but {b} in the model" for k, a, b in wrong[:4]]
        lines += [f"missing from {source}: {missing[:4]}" + (" …" if len(missing) > 4 else "")] if missing else []
        lines += [f"not in the model: {unexpected[:4]}" + (" …" if len(unexpected) > 4 else "")] if unexpected else []
        raise ValueError(f"{source} does not fit this {type(model).__name__} (another architecture or config): "
                         + "; ".join(lines) + ". Build the model with the config it was saved from "
                         "(load_model(path) does this for you).")
    model.load_state_dict(state)
    return model


def _read_weights(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{file} is not a readable safetensors file ({err}); save the checkpoint again") from None


# --------------------------------------------------------------------------- save / load
def save_model(model: nn.Module, path: str | Path, *, ema: Any = None, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (and ``ema``'s weights) to the checkpoint folder ``path``; return it.

    Models that do not record their config (not minidiff nets) are saved with ``"class": null``: load
    them with :func:`load_checkpoint` into a model you build. ``meta``: any JSON-able notes.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__} (the order is save_model(model, path))")
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a str or Path, got {type(path).__name__}")
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{path} is a file; a checkpoint is a folder (pick another path or delete the file)")
    spec = model_config(model) if model.__dict__.get(_ATTR) is not None else {"class": None, "config": None}
    try:
        meta = json.loads(json.dumps(dict(meta or {})))
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must be JSON-serialisable: {err}") from None
    header = {"format": FORMAT, "version": 1, **spec, "meta": meta,
              "ema": None if ema is None else {"decay": ema.decay, "warmup": ema.warmup, "num_updates": ema.num_updates}}
    path.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_state(model.state_dict()), str(path / _WEIGHTS))
    if ema is not None:
        save_file(_cpu_state(ema.state_dict()), str(path / _EMA))
    elif (path / _EMA).exists():
        (path / _EMA).unlink()          # never pair new weights with a stale EMA
    (path / _CONFIG).write_text(json.dumps(header, indent=2))
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder, with errors that say what is wrong."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: train the model and save it with "
                                f"minidiff.save_model(model, {str(path)!r}) (or check the path)")
    if not path.is_dir() or not (path / _CONFIG).is_file():
        raise ValueError(f"{path} is not a minidiff checkpoint: expected a folder holding {_CONFIG} and "
                         f"{_WEIGHTS}, as written by minidiff.save_model")
    try:
        header = json.loads((path / _CONFIG).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path / _CONFIG} is not valid JSON ({err}); not a minidiff checkpoint") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path / _CONFIG} is not a minidiff checkpoint config (no \"format\": \"{FORMAT}\")")
    return header


def load_model(path: str | Path, *, ema: bool = False, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild the model saved at ``path`` and load its weights (``ema=True``: the EMA weights); eval mode."""
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be True or False, got {ema!r}")
    header = read_config(path)
    if header.get("class") is None:
        raise ValueError(f"{path} was saved from a model that does not record its config; build it yourself "
                         "and call load_checkpoint(path, model)")
    model = build_model(header)
    load_weights(model, _read_weights(Path(path) / _WEIGHTS), f"{Path(path) / _WEIGHTS}")
    if ema:
        _load_ema_into(model, Path(path), header)
    return model.to(device or "cpu").eval()


def _load_ema_into(model: nn.Module, path: Path, header: dict) -> None:
    if header.get("ema") is None or not (path / _EMA).is_file():
        raise ValueError(f"{path} holds no EMA weights (it was saved without ema=); use ema=False")
    state = _read_weights(path / _EMA)
    params = dict(model.named_parameters())
    bad = [k for k in state if k not in params or params[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{path / _EMA} does not fit this {type(model).__name__}: parameters {bad[:4]} are "
                         "missing or have another shape")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def save_checkpoint(path: str | Path, model: nn.Module, ema: Any = None, meta: Mapping[str, Any] | None = None) -> Path:
    """The older spelling of :func:`save_model` (path first)."""
    return save_model(model, path, ema=ema, meta=meta)


def load_checkpoint(path: str | Path, model: nn.Module, ema: Any = None) -> dict[str, Any]:
    """Load the weights at ``path`` into ``model`` you built (and ``ema``); return the saved ``meta``."""
    header = read_config(path)
    path = Path(path)
    load_weights(model, _read_weights(path / _WEIGHTS), f"{path / _WEIGHTS}")
    if ema is not None:
        if header.get("ema") is None or not (path / _EMA).is_file():
            raise ValueError(f"{path} holds no EMA weights (it was saved without ema=)")
        ema.load_state_dict(_read_weights(path / _EMA), num_updates=header["ema"].get("num_updates", 0))
    return header.get("meta") or {}
