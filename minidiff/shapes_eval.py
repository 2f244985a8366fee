"""An exact judge for the shapes world (chapters 5–7): does an image show what its caption says?

A small fully convolutional detector, trained on fresh procedural scenes (:mod:`minidiff.data.shapes`),
reads an image (B, 3, 32, 32) on a G×G = 8×8 grid of 4-pixel cells, in the spirit of CenterNet
(Zhou et al. 2019): each cell predicts whether an object's centre lies in it, and that object's colour,
shape, size and sub-cell centre offset. The placement rule of the shapes world keeps any two centres
more than one cell apart, so one cell never holds two objects, and a detection is a cell whose
objectness is above 0.5 and is the largest in its 3×3 neighbourhood.

:func:`caption_accuracy` compares the detections with the objects a caption claims (parsed by
:func:`minidiff.data.shapes.parse_captions`) and turns "does the image show the caption" into numbers:
per-attribute recall (colour, shape, colour–shape object, object with size), object count, the
relation of a 2-object caption, and the exact match of everything. ``features`` gives pooled trunk
activations for a Fréchet distance (:func:`shapes_frechet`, FID in miniature, Heusel et al. 2017, eq. 6).
It is a *metric*: never guide a sampler with it.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .cache import load_or_train
from .checkpoint import record_config
from .checks import check_int, check_real, check_tensor
from .config import resolve_device
from .data.shapes import (COLOURS, MAX_OBJECTS, SHAPES, SIZES, Scenes, captions_from_attributes, make_scenes,
                          parse_captions, relation_of)
from .metrics import _global_rng_untouched, frechet_distance
from .train import fit

__all__ = ["ShapesEvaluator", "shapes_evaluator", "caption_accuracy", "shapes_frechet", "evaluator_targets",
           "evaluator_loss", "EVALUATOR_CONFIG"]

GRID = 8                                        # detection cells per side: 4 px each at 32²
IMAGE_SIZE = 32
N_COLOURS, N_SHAPES, N_SIZES = len(COLOURS), len(SHAPES), len(SIZES)
_HEADS = {"object": 1, "colour": N_COLOURS, "shape": N_SHAPES, "size": N_SIZES, "offset": 2}


@record_config
class ShapesEvaluator(nn.Module):
    """images (B, 3, 32, 32) in [-1, 1] -> per-cell predictions on an 8×8 grid (see :meth:`forward`).

    Trunk: five 3×3 convolutions, two of stride 2 (32² → 16² → 8²), each with BatchNorm and SiLU; head: a 1×1
    convolution.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = check_int(width, "width", 4, hint=" (channels of the widest layers)")

        def block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()]

        self.trunk = nn.Sequential(
            *block(3, w // 2),                      # 32²: colour and edges
            *block(w // 2, w, stride=2),            # 16²
            *block(w, w, stride=2),                 # 8²: one cell per 4×4 pixels
            *block(w, w), *block(w, w))             # receptive field 25 px: a whole large shape
        self.head = nn.Conv2d(w, sum(_HEADS.values()), 1)
        self.feature_dim = w

    def _trunk(self, images: Tensor) -> Tensor:
        check_tensor(images, "images", floating=True, nonempty=True)
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be RGB scenes (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) in [-1, 1], "
                             f"got {tuple(images.shape)}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf (a diverged sampler?); check the samples first")
        return self.trunk(images.clamp(-1, 1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits ``object`` (B, G, G), ``colour`` (B, 6, G, G), ``shape`` (B, 4, G, G), ``size`` (B, 2, G, G)
        and ``offset`` (B, 2, G, G) (the centre's (x, y) position inside its cell, through a sigmoid)."""
        out = self.head(self._trunk(images)).split(list(_HEADS.values()), dim=1)
        maps = dict(zip(_HEADS, out))
        maps["object"] = maps["object"][:, 0]
        return maps

    def features(self, images: Tensor) -> Tensor:
        """(B, width) trunk activations averaged over the 8×8 grid, for the Fréchet distance."""
        return self._trunk(images).mean(dim=(2, 3))

    @torch.no_grad()
    def detect(self, images: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
        """Detections per cell, cells flattened row-major (B, G·G): ``found`` bool (objectness > threshold
        and a 3×3 local maximum), ``score`` (objectness probability), ``colours`` / ``shapes`` / ``sizes``
        long (argmax), ``centres`` (B, G·G, 2) float (x, y) in pixels (pixel index units)."""
        threshold = check_real(threshold, "threshold", 0, 1, low_open=True, high_open=True)
        maps = self(images)
        score = maps["object"].sigmoid()
        peak = score == F.max_pool2d(score[:, None], 3, stride=1, padding=1)[:, 0]
        cell = IMAGE_SIZE / GRID
        gy, gx = torch.meshgrid(torch.arange(GRID, device=score.device), torch.arange(GRID, device=score.device),
                                indexing="ij")
        # centre pixel = cell · (index + offset) − ½ (pixel i covers [i, i + 1) in continuous coordinates)
        centres = cell * (torch.stack([gx, gy]) + maps["offset"].sigmoid()) - 0.5             # (B, 2, G, G)
        flat = lambda t: rearrange(t, "b g h -> b (g h)")                                     # noqa: E731
        return {"found": flat((score > threshold) & peak), "score": flat(score),
                "colours": flat(maps["colour"].argmax(1)), "shapes": flat(maps["shape"].argmax(1)),
                "sizes": flat(maps["size"].argmax(1)), "centres": rearrange(centres, "b c g h -> b (g h) c")}

    @torch.no_grad()
    def describe(self, images: Tensor) -> list[str]:
        """Captions, in the shapes grammar, of what the evaluator reads in each image (its ≤ 3 most
        confident detections, most confident first; "" when it finds nothing)."""
        det = self.detect(images)
        score, idx = (det["score"] * det["found"]).topk(MAX_OBJECTS, dim=1)
        pick = {k: det[k].gather(1, idx) for k in ("shapes", "colours", "sizes")}
        keep = score > 0
        centres = det["centres"].gather(1, idx[..., None].expand(-1, -1, 2))
        relation = torch.where(keep.sum(1) == 2, relation_of(centres[:, 0], centres[:, 1]), -1)
        shapes, colours, sizes = (pick[k].masked_fill(~keep, -1).cpu() for k in ("shapes", "colours", "sizes"))
        return captions_from_attributes(shapes, colours, sizes, relation.cpu())


# --------------------------------------------------------------------------- training
def evaluator_targets(scenes: Scenes) -> dict[str, Tensor]:
    """Per-cell training targets from scenes at 32²: ``object`` (B, G, G) float 0/1, ``colour`` / ``shape`` /
    ``size`` (B, G, G) long on the 3×3 cells around each centre cell (-100 = ignore elsewhere) and ``offset``
    (B, 2, G, G) in (0, 1), the centre's position inside its cell."""
    if not isinstance(scenes, Scenes):
        raise TypeError(f"scenes must be a Scenes from make_scenes, got {type(scenes).__name__}")
    if scenes.images.shape[-1] != IMAGE_SIZE:
        raise ValueError(f"the evaluator reads {IMAGE_SIZE}² scenes, got {scenes.images.shape[-1]}²; "
                         f"make_scenes(..., image_size={IMAGE_SIZE})")
    cell = IMAGE_SIZE / GRID
    b, k = scenes.present.nonzero(as_tuple=True)
    pos = (scenes.centres[b, k] + 0.5) / cell                       # continuous centre in cell units
    gx, gy = pos.long().unbind(-1)
    B, dev = len(scenes), scenes.images.device
    target = {"object": torch.zeros(B, GRID, GRID, device=dev), "offset": torch.zeros(B, 2, GRID, GRID, device=dev)}
    target["object"][b, gy, gx] = 1.0
    target["offset"][b, :, gy, gx] = pos - pos.floor()
    for name, values in (("colour", scenes.colours), ("shape", scenes.shapes), ("size", scenes.sizes)):
        target[name] = torch.full((B, GRID, GRID), -100, dtype=torch.long, device=dev)
        for sy, sx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1), (0, 0)):
            # the 3×3 cells around a centre also learn its attributes, so a detection one cell off still reads
            # them; the centre cell is written last and wins where neighbourhoods touch
            target[name][b, (gy + sy).clamp(0, GRID - 1), (gx + sx).clamp(0, GRID - 1)] = values[b, k]
    return target


def evaluator_loss(model: ShapesEvaluator, batch: tuple[Tensor, dict[str, Tensor]],
                   generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
    """BCE on objectness + cross-entropies on colour, shape, size + L1 on the offset at centre cells.

    The images are augmented (Gaussian noise of std ~ U(0, 0.1), a random mix with a 3×3 box blur) so the
    judge tolerates the slightly noisy, soft images a small diffusion model produces.
    """
    images, target = batch
    images = _augment(images, generator)
    maps = model(images)
    centre = target["object"] > 0
    pos_weight = maps["object"].new_tensor(POS_WEIGHT)
    terms = {"object": F.binary_cross_entropy_with_logits(maps["object"], target["object"], pos_weight=pos_weight),
             **{k: F.cross_entropy(maps[k], target[k]) for k in ("colour", "shape", "size")},
             "offset": (maps["offset"].sigmoid() - target["offset"]).abs().sum(1)[centre].mean()}
    return sum(terms.values()), {k: v.detach() for k, v in terms.items()}


POS_WEIGHT = 4.0              # ≈ 2 centre cells among 64: weigh the rare positives up


def _augment(images: Tensor, generator: torch.Generator) -> Tensor:
    B = len(images)
    mix = 0.5 * torch.rand(B, 1, 1, 1, generator=generator).to(images.device)
    std = 0.1 * torch.rand(B, 1, 1, 1, generator=generator).to(images.device)
    noise = torch.randn(images.shape, generator=generator).to(images.device)
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.lerp(images, blurred, mix) + std * noise


def scene_batches(batch_size: int, seed: int, chunk: int = 1024) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """An endless stream of fresh (images, targets) batches of procedural scenes, seeded; scenes are drawn
    ``chunk`` at a time (the generator is fastest in bulk)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        scenes = make_scenes(chunk, generator=g, shapes=SHAPES)          # all five kinds, the star included
        targets = evaluator_targets(scenes)
        for start in range(0, chunk - batch_size + 1, batch_size):
            rows = slice(start, start + batch_size)
            yield scenes.images[rows], {k: v[rows] for k, v in targets.items()}


EVALUATOR_CONFIG = {"arch": "ShapesEvaluator", "width": 32, "steps": 800, "batch": 64, "lr": 3e-3, "seed": 0,
                    "data": "make_scenes(min_objects=1, max_objects=3, shapes=SHAPES) v2"}


def shapes_evaluator(steps: int | None = None, use_cache: bool = True,
                     device: str | torch.device | None = None) -> ShapesEvaluator:
    """The course's shapes evaluator, trained once on fresh procedural scenes and cached on disk (frozen).

    steps: training steps (default ``EVALUATOR_CONFIG["steps"]``; fewer for a quick test). Deterministic
    for a given config, without touching the global RNGs.
    """
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False, got {type(use_cache).__name__}")
    cfg = dict(EVALUATOR_CONFIG, steps=EVALUATOR_CONFIG["steps"] if steps is None else check_int(steps, "steps", 1))
    device = resolve_device(device)

    def train_fn(m: nn.Module) -> None:
        fit(m, evaluator_loss, scene_batches(cfg["batch"], cfg["seed"]), steps=cfg["steps"], lr=cfg["lr"],
            warmup=50, seed=cfg["seed"], device=device, desc="shapes evaluator")

    with _global_rng_untouched():
        torch.manual_seed(cfg["seed"])          # layers initialise from the global RNG
        model = load_or_train("shapes_evaluator", cfg, ShapesEvaluator(cfg["width"]), train_fn, use_cache=use_cache)
    return model.to(device).requires_grad_(False)


# --------------------------------------------------------------------------- the numbers
@torch.no_grad()
def caption_accuracy(evaluator: ShapesEvaluator, images: Tensor, captions: Scenes | Sequence[str]) -> dict[str, float]:
    """How well images (B, 3, 32, 32) show their captions (B strings, or the Scenes they came from).

    With c the multiset of objects a caption claims and d the multiset detected in the image,
    an attribute's score is Σ_b |c_b ∩ d_b| / Σ_b |c_b| over that attribute's values — ``colour``,
    ``shape``, ``object`` (colour–shape pair) and ``object_size`` (pair and size): the share of claimed
    objects the image shows. ``count``: share of images with as many objects as claimed. ``relation``:
    share of 2-object captions whose two objects are found and placed as stated (NaN if none).
    ``exact``: share of images whose detected objects (with sizes) equal the claimed ones and, for
    2 objects, whose relation holds.
    """
    if not isinstance(evaluator, ShapesEvaluator):
        raise TypeError(f"evaluator must be a ShapesEvaluator (shapes_evaluator()), got {type(evaluator).__name__}")
    claims = parse_captions(captions.captions if isinstance(captions, Scenes) else captions)
    if len(claims["relation"]) != len(images):
        raise ValueError(f"got {len(images)} images but {len(claims['relation'])} captions; pass one caption per image")
    det = evaluator.detect(images)
    claims = {k: v.to(det["found"].device) for k, v in claims.items()}
    keys = {"colour": ((N_COLOURS,), ("colours",)), "shape": ((N_SHAPES,), ("shapes",)),
            "object": ((N_COLOURS, N_SHAPES), ("colours", "shapes")),
            "object_size": ((N_COLOURS, N_SHAPES, N_SIZES), ("colours", "shapes", "sizes"))}
    out, hists = {}, {}
    for name, (dims, attrs) in keys.items():
        hists[name] = claimed, seen = (_histogram(claims, attrs, dims, claims["present"]),
                                       _histogram(det, attrs, dims, det["found"]))
        out[name] = float(torch.minimum(claimed, seen).sum() / claimed.sum()) if claimed.sum() else math.nan
    out["count"] = float((det["found"].sum(1) == claims["present"].sum(1)).float().mean())
    related = claims["relation"] >= 0
    holds = _relation_holds(det, claims)
    out["relation"] = float(holds[related].float().mean()) if related.any() else math.nan
    claimed, seen = hists["object_size"]
    out["exact"] = float(((claimed == seen).all(1) & (holds | ~related)).float().mean())
    return out


def _histogram(source: dict[str, Tensor], attrs: tuple[str, ...], dims: tuple[int, ...], keep: Tensor) -> Tensor:
    """(B, Π dims) counts of the attribute combinations of the kept entries of (B, M) attribute tensors."""
    index = torch.zeros_like(source[attrs[0]])
    for attr, n in zip(attrs, dims):
        index = index * n + source[attr].clamp_min(0)
    counts = torch.zeros(len(index), math.prod(dims), device=index.device)
    return counts.scatter_add_(1, index, keep.float())


def _relation_holds(det: dict[str, Tensor], claims: dict[str, Tensor]) -> Tensor:
    """(B,) bool: both objects of a 2-object claim are detected (the most confident detection of the
    claimed colour and shape, a different one for the second) and their centres stand in the claimed
    relation. "a red circle above a red circle" needs two red circles, one above the other: for a
    repeated object either order counts."""
    rows = torch.arange(len(claims["relation"]), device=det["found"].device)
    taken = torch.zeros_like(det["found"])
    centres, found = [], []
    for k in (0, 1):
        match = det["found"] & ~taken & (det["colours"] == claims["colours"][:, k:k + 1]) \
            & (det["shapes"] == claims["shapes"][:, k:k + 1])
        best = (det["score"] * match).argmax(1)
        taken[rows, best] = match.any(1)
        centres.append(det["centres"][rows, best])
        found.append(match.any(1))
    stated = relation_of(centres[0], centres[1]) == claims["relation"]
    repeated = (claims["colours"][:, 0] == claims["colours"][:, 1]) & (claims["shapes"][:, 0] == claims["shapes"][:, 1])
    swapped = relation_of(centres[1], centres[0]) == claims["relation"]
    return found[0] & found[1] & (stated | (repeated & swapped))


@torch.no_grad()
def shapes_frechet(evaluator: ShapesEvaluator, images_a: Tensor, images_b: Tensor) -> float:
    """Fréchet distance between the evaluator's features of two image sets (each (N ≥ 2, 3, 32, 32))."""
    if not isinstance(evaluator, ShapesEvaluator):
        raise TypeError(f"evaluator must be a ShapesEvaluator (shapes_evaluator()), got {type(evaluator).__name__}")
    return frechet_distance(evaluator.features(images_a), evaluator.features(images_b))
