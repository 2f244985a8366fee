"""The shapes world (chapters 5–7): procedural captioned scenes whose every property is known exactly.

A scene is an ``S×S`` RGB image (S = 32 by default) of 1–3 coloured shapes on a tinted dark
background, with a caption from a small grammar and the ground truth a caption or a condition can
be checked against: per-object shape, colour, size, centre and presence, an instance label map, its
edge map and the bounding boxes of what is visible.

**Grammar** (every caption has at most 14 words, so it fits the tokenizer's 16 slots with BOS/EOS)::

    object   := "a" SIZE COLOUR SHAPE                       e.g. "a small red circle"
    1 object := object
    2 objects:= object RELATION object                      "a small red circle above a large blue square"
    3 objects:= object "and" object "and" object            (no relation: it would not fit in 14 words)

RELATION says where the first object's centre lies relative to the second's: along the axis of the
larger displacement, "above"/"below" (image rows grow downwards) or "left of"/"right of"
(:func:`relation_of`). Objects are named in painting order: a later object occludes an earlier one,
in the image and in the label map alike.

**Placement rule** (keeps captions unambiguous). Centres lie on the pixel grid with every shape fully
inside the image, and any two centres are at least ``max(MIN_SEPARATION·(r_i + r_j), MIN_CENTRE_DISTANCE)``
apart in the max-norm (r: the shapes' half-extents; 8 px at 32²), so no shape is hidden by more than a thin
sliver, every centre pixel stays visible, and two centres never fall in the same or in adjacent 4×4-pixel
cells (what the evaluator of :mod:`minidiff.shapes_eval` relies on). In a 2-object scene the displacement
d between the centres also satisfies ``||d_x| − |d_y|| ≥ RELATION_MARGIN`` pixels (at 32²), so the
relation is clear-cut. Scenes violating a rule are redrawn (vectorised rejection sampling).

**A shape the base world never shows.** ``SHAPES`` ends with a fifth kind, the star (``NOVEL_SHAPES``): scenes
draw only the four ``BASE_SHAPES`` unless asked (``shapes=SHAPES`` or ``only_pairs=[("red", "star")]``), so a
model trained on default scenes has never seen one — chapter 6 teaches it as a new concept. The word
"star" is in the tokenizer's vocabulary from the start (no default caption uses it); new words such as
DreamBooth's rare identifier "sks" are added with :class:`minidiff.adapt.ExtendedTokenizer`. The evaluator
of :mod:`minidiff.shapes_eval` is trained on all five shapes.

Everything is vectorised over scenes (a loop runs only over the ≤ 3 object slots) and seeded by a
``torch.Generator``: the same seed gives the same scenes. Held-out colour–shape pairs
(``exclude_pairs=``) leave combinations such as "green triangle" out of a training set to test
generalisation to them (``only_pairs=``).
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..checks import check_int, check_real, check_tensor
from ..config import resolve_device
from ..text import BOS_ID, EOS_ID, PAD_ID

__all__ = ["SHAPES", "BASE_SHAPES", "NOVEL_SHAPES", "COLOURS", "SIZES", "RELATIONS", "MAX_OBJECTS", "Scenes", "make_scenes", "relation_of",
           "captions_from_attributes", "parse_captions", "colour_shape_pairs", "vocabulary", "WordTokenizer",
           "plot_scenes"]

SHAPES = ("circle", "square", "triangle", "cross", "star")
BASE_SHAPES, NOVEL_SHAPES = SHAPES[:4], SHAPES[4:]   # default scenes draw the base shapes only (module docstring)
COLOURS = {                                    # RGB in [-1, 1]: every colour has a channel ≥ 0.9,
    "red": (1.0, -0.6, -0.6),                  # so it always differs from the dark background
    "green": (-0.6, 0.9, -0.6),
    "blue": (-0.5, -0.3, 1.0),
    "yellow": (1.0, 0.9, -0.6),
    "cyan": (-0.6, 0.9, 1.0),
    "magenta": (1.0, -0.6, 1.0),
}
SIZES = {"small": 3.5, "large": 6.5}           # half-extent r in pixels at 32×32 (scaled with image_size)
RELATIONS = ("above", "below", "left of", "right of")
MAX_OBJECTS = 3
BACKGROUND = -0.85                             # background grey level before the tint
MIN_SEPARATION = 0.8                           # max-norm distance of centres ≥ 0.8 (r_i + r_j)
MIN_CENTRE_DISTANCE = 8.0                      # ... and ≥ 8 px (at 32²): objects never crowd
RELATION_MARGIN = 3.0                          # ||d_x| − |d_y|| ≥ 3 px (at 32²) in 2-object scenes
SQUARE_HALF, CROSS_ARM = 0.9, 0.35             # square half-side and cross half-arm width, in units of r
STAR_INNER = 0.45                              # a five-pointed star's inner radius, in units of its outer r
MAX_ROUNDS = 1000                              # rejection-sampling rounds before giving up
_COLOUR_NAMES, _SIZE_NAMES = tuple(COLOURS), tuple(SIZES)


# --------------------------------------------------------------------------- the scenes
@dataclass
class Scenes:
    """A batch of N scenes with K = 3 object slots (absent slots hold -1 / False).

    images: (N, 3, S, S) float in [-1, 1].  masks: (N, S, S) long, 0 = background, k + 1 = the object in
    slot k where it is visible.  edges: (N, S, S) bool, the label map's boundary pixels (an object pixel
    with a 4-neighbour of another label).  boxes: (N, K, 4) long, (x0, y0, x1, y1) inclusive pixel extents
    of each object's visible mask.  shapes / colours / sizes: (N, K) long indices into SHAPES, COLOURS,
    SIZES.  centres: (N, K, 2) float (x, y) in pixels (column, row).  present: (N, K) bool.
    relation: (N,) long index into RELATIONS for 2-object scenes, else -1.  background: (N, 3) RGB.
    captions: N strings.
    """

    images: Tensor
    masks: Tensor
    edges: Tensor
    boxes: Tensor
    shapes: Tensor
    colours: Tensor
    sizes: Tensor
    centres: Tensor
    present: Tensor
    relation: Tensor
    background: Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> "Scenes":
        """The scenes at ``index`` (an int keeps the batch dimension: ``scenes[0]`` has N = 1)."""
        if isinstance(index, int) and not isinstance(index, bool):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"scene index {index} is out of range for {n} scenes")
            index = slice(index % n, index % n + 1)
        if isinstance(index, slice):
            rows = torch.arange(len(self))[index]
        else:
            rows = torch.as_tensor(index)
            if rows.dtype == torch.bool:
                rows = rows.nonzero().flatten()
            if rows.dtype not in (torch.int32, torch.int64) or rows.ndim != 1:
                raise TypeError(f"index must be an int, a slice, or a 1-D sequence of ints or bools, got {index!r}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        picked = {k: v[rows.to(v.device)] for k, v in values.items() if isinstance(v, Tensor)}
        return Scenes(**picked, captions=[self.captions[i] for i in rows.tolist()])

    def to(self, device: str | torch.device) -> "Scenes":
        device = resolve_device(device)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Scenes(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in values.items()})

    @property
    def count(self) -> Tensor:
        """(N,) long: the number of objects in each scene."""
        return self.present.sum(1)

    @property
    def class_masks(self) -> Tensor:
        """(N, S, S) long semantic map: 0 = background, 1 + SHAPES index of the visible object."""
        table = torch.cat([torch.zeros_like(self.shapes[:, :1]), self.shapes.clamp_min(0) + 1], dim=1)
        return table.gather(1, self.masks.flatten(1)).view_as(self.masks)


def make_scenes(n: int, *, seed: int = 0, generator: torch.Generator | None = None, min_objects: int = 1,
                max_objects: int = MAX_OBJECTS, image_size: int = 32, tint: float = 0.1,
                exclude_pairs: Sequence[tuple[str, str]] = (), only_pairs: Sequence[tuple[str, str]] | None = None,
                shapes: Sequence[str] = BASE_SHAPES, device: str | torch.device | None = None) -> Scenes:
    """Draw ``n`` scenes of ``min_objects``…``max_objects`` shapes (uniform count, uniform allowed
    colour–shape pair, uniform size) on a background ``BACKGROUND + tint·U(-1, 1)`` per channel.

    generator: a CPU ``torch.Generator`` (drawn from; it overrides ``seed``). image_size: 16…128; the
    geometry scales with it. exclude_pairs: (colour, shape) pairs never drawn; only_pairs: draw only these
    (any shape of ``SHAPES``); shapes: the kinds drawn when ``only_pairs`` is not given (default the four
    ``BASE_SHAPES``; ``SHAPES`` adds the star).
    Returns a :class:`Scenes` on ``device``.
    """
    n = check_int(n, "n", 1, hint=" (the number of scenes)")
    max_objects = check_int(max_objects, "max_objects", 1, MAX_OBJECTS)
    min_objects = check_int(min_objects, "min_objects", 1, max_objects, hint=" (at most max_objects)")
    size = check_int(image_size, "image_size", 16, 128, hint=" (the side of the square image in pixels)")
    tint = check_real(tint, "tint", 0.0, 0.1, hint=" (background tint per channel; 0 for plain grey)")
    g = _generator(seed, generator)
    pairs = colour_shape_pairs(exclude_pairs, only_pairs, shapes)
    count = torch.randint(min_objects, max_objects + 1, (n,), generator=g)
    present = torch.arange(MAX_OBJECTS) < count[:, None]
    pair = pairs[torch.randint(len(pairs), (n, MAX_OBJECTS), generator=g)]
    colours, shapes = pair[..., 0], pair[..., 1]
    sizes = torch.randint(len(SIZES), (n, MAX_OBJECTS), generator=g)
    radius = torch.tensor(list(SIZES.values()))[sizes] * (size / 32)
    centres = _place(radius, present, size, g)
    background = BACKGROUND + tint * (2 * torch.rand(n, 3, generator=g) - 1)
    images, masks = _render(shapes, colours, radius, centres, present, background, size)
    relation = torch.where(count == 2, relation_of(centres[:, 0], centres[:, 1]), -1)
    absent = ~present
    shapes, colours, sizes = (v.masked_fill(absent, -1) for v in (shapes, colours, sizes))
    scenes = Scenes(images=images, masks=masks, edges=label_edges(masks), boxes=mask_boxes(masks, MAX_OBJECTS),
                    shapes=shapes, colours=colours, sizes=sizes, centres=centres.masked_fill(absent[..., None], -1.0),
                    present=present, relation=relation, background=background,
                    captions=captions_from_attributes(shapes, colours, sizes, relation))
    return scenes.to(device) if device is not None else scenes


def _generator(seed: int, generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(check_int(seed, "seed", 0, 2**63 - 1))
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
    return generator


def colour_shape_pairs(exclude_pairs: Sequence[tuple[str, str]] = (),
                       only_pairs: Sequence[tuple[str, str]] | None = None,
                       shapes: Sequence[str] = BASE_SHAPES) -> Tensor:
    """(P, 2) long (colour index, shape index into SHAPES) of the pairs a generator may draw, in a fixed order:
    ``only_pairs`` if given, else every colour with every kind in ``shapes``; minus ``exclude_pairs``."""
    excluded = set(_pair_ids(exclude_pairs, "exclude_pairs"))
    allowed = _pair_ids(only_pairs, "only_pairs") if only_pairs is not None else [
        (c, s) for c in range(len(COLOURS)) for s in _shape_ids(shapes)]
    kept = sorted(set(allowed) - excluded)
    if not kept:
        raise ValueError("exclude_pairs / only_pairs leave no colour–shape pair to draw; keep at least one")
    return torch.tensor(kept, dtype=torch.long)


def _pair_ids(pairs: Sequence[tuple[str, str]], name: str) -> list[tuple[int, int]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, (list, tuple)):
        raise TypeError(f"{name} must be a list of (colour, shape) pairs such as [('green', 'triangle')], "
                        f"got {pairs!r}")
    ids = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise TypeError(f"{name} must hold (colour, shape) pairs such as ('green', 'triangle'), got {pair!r}")
        colour, shape = pair
        if colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"{name} has the unknown pair {pair!r}: colours are {_COLOUR_NAMES}, shapes {SHAPES}")
        ids.append((_COLOUR_NAMES.index(colour), SHAPES.index(shape)))
    return ids


def _shape_ids(shapes: Sequence[str]) -> list[int]:
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, (list, tuple)) or not shapes:
        raise TypeError(f"shapes must be a non-empty list of shape names from {SHAPES}, got {shapes!r}")
    unknown = [k for k in shapes if k not in SHAPES]
    if unknown:
        raise ValueError(f"shapes has unknown kinds {unknown}: the shapes are {SHAPES}")
    return sorted({SHAPES.index(k) for k in shapes})


# --------------------------------------------------------------------------- placement and rasterising
def _place(radius: Tensor, present: Tensor, size: int, g: torch.Generator) -> Tensor:
    """Integer centres (N, K, 2) obeying the placement rule, by redrawing the scenes that break it."""
    reach = radius.floor()                                       # farthest pixel offset of any shape of radius r
    centres = torch.empty(*radius.shape, 2)
    todo = torch.arange(len(radius))
    for _ in range(MAX_ROUNDS):
        span = (size - 2 * reach[todo])[..., None]               # number of admissible integer positions
        c = reach[todo][..., None] + (torch.rand(len(todo), MAX_OBJECTS, 2, generator=g) * span).floor()
        centres[todo] = c
        todo = todo[~_valid(c, radius[todo], present[todo], size)]
        if len(todo) == 0:
            return centres
    raise RuntimeError(f"could not place the shapes of {len(todo)} scenes in {MAX_ROUNDS} rounds")


def _valid(c: Tensor, radius: Tensor, present: Tensor, size: int) -> Tensor:
    """(N,) bool: the placement rule (module docstring) holds for centres c (N, K, 2)."""
    d = (c[:, :, None] - c[:, None, :]).abs()                    # (N, K, K, 2)
    reach = torch.maximum(MIN_SEPARATION * (radius[:, :, None] + radius[:, None, :]),
                          torch.tensor(MIN_CENTRE_DISTANCE * size / 32))
    apart = d.amax(-1) >= reach
    both = present[:, :, None] & present[:, None, :] & ~torch.eye(MAX_OBJECTS, dtype=torch.bool)
    ok = (apart | ~both).flatten(1).all(1)
    dx, dy = d[:, 0, 1, 0], d[:, 0, 1, 1]
    clear = (dx - dy).abs() >= RELATION_MARGIN * size / 32
    return ok & (clear | (present.sum(1) != 2))


def shape_masks(shapes: Tensor, radius: Tensor, centres: Tensor, size: int) -> Tensor:
    """(N, S, S) bool: pixels inside one shape per scene. shapes, radius: (N,), centres: (N, 2) (x, y).

    With offsets (dx, dy) of a pixel from the centre and half-extent r: circle dx² + dy² ≤ r²; square
    max(|dx|, |dy|) ≤ 0.9 r; triangle (apex up) |dy| ≤ r and |dx| ≤ (dy + r)/2; cross: a bar of half-length r
    and half-width 0.35 r in each direction; star: the five-pointed star (point up) with outer radius r and
    inner radius 0.45 r. Each kind is rasterised only for the scenes that have it.
    """
    axis = torch.arange(size, dtype=torch.float32)
    dx = axis[None, None, :] - centres[:, 0, None, None]            # (N, 1, S)
    dy = axis[None, :, None] - centres[:, 1, None, None]            # (N, S, 1)
    r = radius[:, None, None]
    inside = torch.zeros(len(shapes), size, size, dtype=torch.bool)
    for kind, test in enumerate((_circle, _square, _triangle, _cross, _star)):
        rows = (shapes == kind).nonzero().flatten()
        if len(rows):
            inside[rows] = test(dx[rows], dy[rows], r[rows])
    return inside


def _circle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return dx**2 + dy**2 <= r**2


def _square(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return torch.maximum(dx.abs(), dy.abs()) <= SQUARE_HALF * r


def _triangle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return (dy.abs() <= r) & (dx.abs() <= (dy + r) / 2)


def _cross(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    ax, ay, w = dx.abs(), dy.abs(), CROSS_ARM * r
    return ((ax <= r) & (ay <= w)) | ((ay <= r) & (ax <= w))


def _star(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Inside the star polygon whose outer vertices lie at radius r, angles 0°, 72°, … from "up", and inner
    vertices at radius ρ = 0.45 r half-way between. On a ray at angle ψ ∈ [0°, 36°] from the nearest outer
    vertex, the edge from (r, 0°) to (ρ, 36°) is at distance r ρ sin 36° / (ρ sin(36° − ψ) + r sin ψ)."""
    half = math.pi / 5                                                   # 36°
    theta = torch.atan2(dx, -dy).remainder(2 * half)                     # angle from "up", modulo 72°
    psi = torch.minimum(theta, 2 * half - theta)                         # to the nearest outer vertex
    rho = STAR_INNER * r
    edge = r * rho * math.sin(half) / (rho * torch.sin(half - psi) + r * torch.sin(psi))
    return dx**2 + dy**2 <= edge**2


def _render(shapes: Tensor, colours: Tensor, radius: Tensor, centres: Tensor, present: Tensor, background: Tensor,
            size: int) -> tuple[Tensor, Tensor]:
    """Paint the slots in order (later ones on top) into the label map (N, S, S), then colour it:
    images (N, 3, S, S) are a lookup of each pixel's label in (background, colour of slot 1…K)."""
    masks = torch.zeros(len(shapes), size, size, dtype=torch.long)
    for k in range(MAX_OBJECTS):
        inside = shape_masks(shapes[:, k], radius[:, k], centres[:, k], size) & present[:, k, None, None]
        masks.masked_fill_(inside, k + 1)
    palette = torch.tensor(list(COLOURS.values()))
    table = torch.cat([background[:, None], palette[colours]], dim=1)              # (N, K + 1, 3)
    pixels = table.gather(1, masks.flatten(1)[..., None].expand(-1, -1, 3))         # (N, S·S, 3)
    return rearrange(pixels, "n (h w) c -> n c h w", h=size), masks


def label_edges(masks: Tensor) -> Tensor:
    """(N, S, S) bool: object pixels (label > 0) with a 4-neighbour of a different label.

    The image border is not an edge (replicate padding), and where two objects touch both sides are edges.
    """
    padded = F.pad(masks[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    centre = padded[:, 1:-1, 1:-1]
    differs = torch.zeros_like(masks, dtype=torch.bool)
    for shifted in (padded[:, :-2, 1:-1], padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]):
        differs |= shifted != centre
    return differs & (masks > 0)


def mask_boxes(masks: Tensor, k: int = MAX_OBJECTS) -> Tensor:
    """(N, k, 4) long (x0, y0, x1, y1): inclusive extents of labels 1…k in ``masks`` (N, S, S); -1 if absent."""
    size = masks.shape[-1]
    on = masks[:, None] == torch.arange(1, k + 1, device=masks.device)[None, :, None, None]   # (N, k, S, S)
    cols, rows = on.any(2), on.any(3)                                                        # (N, k, S) each

    def first(v: Tensor) -> Tensor:
        return v.int().argmax(-1)

    last = lambda v: size - 1 - first(v.flip(-1))                                           # noqa: E731
    boxes = torch.stack([first(cols), first(rows), last(cols), last(rows)], -1)
    return boxes.masked_fill(~cols.any(-1)[..., None], -1)


# --------------------------------------------------------------------------- captions
def relation_of(a: Tensor, b: Tensor) -> Tensor:
    """(B,) long index into RELATIONS: where centre ``a`` (B, 2) (x, y) lies relative to centre ``b``.

    The axis of the larger displacement decides (ties go to left/right); rows grow downwards, so
    "above" means a smaller y.
    """
    d = a - b
    vertical = d[:, 1].abs() > d[:, 0].abs()
    return torch.where(vertical, (d[:, 1] > 0).long(), 2 + (d[:, 0] > 0).long())


def captions_from_attributes(shapes: Tensor, colours: Tensor, sizes: Tensor, relation: Tensor) -> list[str]:
    """The grammar's caption of each scene from its (N, K) attribute indices (-1 = absent) and (N,) relation."""
    rows = zip(shapes.tolist(), colours.tolist(), sizes.tolist(), relation.tolist())
    return [_caption(s, c, z, rel) for s, c, z, rel in rows]


def _caption(shapes: list[int], colours: list[int], sizes: list[int], relation: int) -> str:
    objects = [f"a {_SIZE_NAMES[z]} {_COLOUR_NAMES[c]} {SHAPES[s]}"
               for s, c, z in zip(shapes, colours, sizes) if s >= 0]
    if len(objects) == 2:
        return f"{objects[0]} {RELATIONS[relation]} {objects[1]}"
    return " and ".join(objects)


def parse_captions(captions: str | Sequence[str]) -> dict[str, Tensor]:
    """Read the grammar back: ``{"shapes", "colours", "sizes": (B, K) long (-1 absent), "present": (B, K)
    bool, "relation": (B,) long (-1 if none)}``. The empty caption claims nothing (count 0).

    Raises ValueError naming the caption and what was expected where it breaks the grammar.
    """
    captions = _caption_list(captions)
    out = {k: torch.full((len(captions), MAX_OBJECTS), -1, dtype=torch.long) for k in ("shapes", "colours", "sizes")}
    relation = torch.full((len(captions),), -1, dtype=torch.long)
    for i, caption in enumerate(captions):
        objects, rel = _parse(caption)
        for k, (z, c, s) in enumerate(objects):
            out["sizes"][i, k], out["colours"][i, k], out["shapes"][i, k] = z, c, s
        relation[i] = rel
    return {**out, "present": out["shapes"] >= 0, "relation": relation}


def _parse(caption: str) -> tuple[list[tuple[int, int, int]], int]:
    words = caption.lower().split()               # case-insensitive, like the tokenizer
    objects, rel, pos = [], -1, 0
    while pos < len(words):
        phrase = words[pos:pos + 4]
        if len(phrase) < 4 or phrase[0] != "a" or phrase[1] not in SIZES or phrase[2] not in COLOURS \
                or phrase[3] not in SHAPES:
            raise ValueError(f"caption {caption!r}: expected 'a SIZE COLOUR SHAPE' at word {pos}, "
                             f"got {' '.join(phrase)!r}"
                             f" (sizes {_SIZE_NAMES}, colours {_COLOUR_NAMES}, shapes {SHAPES})")
        objects.append((_SIZE_NAMES.index(phrase[1]), _COLOUR_NAMES.index(phrase[2]), SHAPES.index(phrase[3])))
        pos += 4
        if pos == len(words):
            break
        joint = " ".join(words[pos:pos + (2 if words[pos] in ("left", "right") else 1)])
        if joint in RELATIONS and len(objects) == 1 and rel < 0:
            rel = RELATIONS.index(joint)
        elif joint != "and" or rel >= 0:
            raise ValueError(f"caption {caption!r}: expected a relation {RELATIONS} after the first object or 'and' "
                             f"between objects of a 3-object caption, got {joint!r} at word {pos}")
        pos += len(joint.split())
    if len(objects) > MAX_OBJECTS or (rel >= 0) != (len(objects) == 2):
        raise ValueError(f"caption {caption!r}: the grammar has 1 object, 2 joined by a relation, or 3 joined by 'and'")
    return objects, rel


def _caption_list(captions: str | Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        return [captions]
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise TypeError(f"captions must be a str or a list of str, got {type(captions).__name__}")
    return list(captions)


# --------------------------------------------------------------------------- the tokenizer
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


def vocabulary() -> tuple[str, ...]:
    """Every token, by id: the specials (pad 0, bos 1, eos 2), then the grammar's words from id 3."""
    relation_words = dict.fromkeys(w for r in RELATIONS for w in r.split())
    return SPECIAL_TOKENS + ("a", "and", *SIZES, *COLOURS, *SHAPES, *relation_words)


class WordTokenizer:
    """Word-level tokenizer of the caption grammar: ``encode`` gives (B, max_len) long ids
    ``[bos] words… [eos] pad…``; the empty caption is ``[bos, eos, pad…]`` (the CFG null condition)."""

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID         # one home: minidiff.text, the encoder's contract

    def __init__(self, max_len: int = 16) -> None:
        self.max_len = check_int(max_len, "max_len", 2, hint=" (tokens per caption, counting BOS and EOS)")
        self.words = vocabulary()
        self.ids = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, captions: str | Sequence[str]) -> Tensor:
        """(B, max_len) long token ids; ValueError listing unknown words or naming a caption that is too long."""
        captions = _caption_list(captions)
        split = [c.lower().split() for c in captions]
        unknown = sorted({w for words in split for w in words if w not in self.ids or w in SPECIAL_TOKENS})
        if unknown:
            raise ValueError(f"unknown words {unknown}: the vocabulary is {list(self.words[3:])}")
        tokens = torch.full((len(captions), self.max_len), self.pad_id, dtype=torch.long)
        for i, words in enumerate(split):
            if len(words) + 2 > self.max_len:
                raise ValueError(f"caption {captions[i]!r} has {len(words)} words but max_len={self.max_len} leaves "
                                 f"room for {self.max_len - 2}; raise max_len")
            ids = [self.bos_id, *(self.ids[w] for w in words), self.eos_id]
            tokens[i, :len(ids)] = torch.tensor(ids)
        return tokens

    def decode(self, tokens: Tensor) -> list[str]:
        """Captions of (B, L) token ids: the words between BOS and the first EOS (pads skipped)."""
        check_tensor(tokens, "tokens")
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens must be a (B, L) integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), "
                             f"got [{int(tokens.min())}, {int(tokens.max())}]")
        out = []
        for row in tokens.tolist():
            words = row[:row.index(self.eos_id)] if self.eos_id in row else row
            out.append(" ".join(self.words[i] for i in words if i > self.eos_id))
        return out


# --------------------------------------------------------------------------- a figure of examples
def plot_scenes(scenes: Scenes, n: int = 8, panels: Sequence[str] = ("image", "mask", "edges"), boxes: bool = True):
    """A figure with one column per scene (its caption on top) and one row per panel: the image (with its
    boxes), the label map and the edge map. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Rectangle

    if not isinstance(scenes, Scenes):
        raise TypeError(f"scenes must be a Scenes (from make_scenes), got {type(scenes).__name__}")
    n = min(check_int(n, "n", 1, hint=" (scenes to show)"), len(scenes))
    allowed = ("image", "mask", "edges")
    if isinstance(panels, str) or not panels or any(p not in allowed for p in panels):
        raise ValueError(f"panels must be a non-empty list drawn from {allowed}, got {panels!r}")
    labels = ListedColormap(["black", "tab:orange", "tab:green", "tab:purple"][:MAX_OBJECTS + 1])
    fig, axes = plt.subplots(len(panels), n, figsize=(1.6 * n, 1.6 * len(panels) + 0.7), squeeze=False)
    for j in range(n):
        shown = {"image": ((scenes.images[j].cpu().permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy(),
                 "mask": scenes.masks[j].cpu().numpy(), "edges": scenes.edges[j].cpu().numpy()}
        for i, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(shown[panel], cmap=labels if panel == "mask" else "gray", vmin=0,
                      vmax=MAX_OBJECTS if panel == "mask" else 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if panel == "image" and boxes:
                for x0, y0, x1, y1 in scenes.boxes[j][scenes.present[j]].tolist():
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, lw=0.8, ec="w"))
        axes[0, j].set_title(textwrap.fill(scenes.captions[j], 22), fontsize=6)
    for i, panel in enumerate(panels):
        axes[i, 0].set_ylabel(panel, fontsize=8)
    fig.tight_layout()
    return fig

