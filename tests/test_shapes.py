"""The shapes world: determinism, pixels ↔ masks ↔ edges ↔ boxes, captions ↔ attributes, tokenizer, bad input."""
import math
import time

import numpy as np
import pytest
import torch

from minidiff.data.shapes import (BASE_SHAPES, COLOURS, MAX_OBJECTS, NOVEL_SHAPES, RELATION_MARGIN, RELATIONS,
                                  SHAPES, SIZES, Scenes,
                                  WordTokenizer, colour_shape_pairs, make_scenes, parse_captions, plot_scenes,
                                  relation_of, shape_masks, vocabulary)


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return make_scenes(600, seed=3)


def test_same_seed_same_scenes_and_generator_is_used():
    a, b, c = make_scenes(50, seed=7), make_scenes(50, seed=7), make_scenes(50, seed=8)
    for name in ("images", "masks", "edges", "boxes", "shapes", "colours", "sizes", "centres", "present", "relation"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.captions == b.captions and not torch.equal(a.images, c.images)
    g = torch.Generator().manual_seed(7)
    first, second = make_scenes(50, generator=g), make_scenes(50, generator=g)
    assert torch.equal(first.images, a.images) and not torch.equal(second.images, a.images)   # the generator advances
    state = torch.random.get_rng_state()
    make_scenes(10, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())                                   # no global RNG use


def test_types_ranges_and_counts(scenes):
    n, s = len(scenes), 32
    assert scenes.images.shape == (n, 3, s, s) and scenes.images.dtype == torch.float32
    assert scenes.images.min() >= -1 and scenes.images.max() <= 1
    assert scenes.masks.shape == (n, s, s) and scenes.masks.dtype == torch.long
    assert scenes.boxes.shape == (n, MAX_OBJECTS, 4) and scenes.centres.shape == (n, MAX_OBJECTS, 2)
    counts = scenes.count.bincount(minlength=4)
    assert counts[0] == 0 and (counts[1:] > 100).all()                    # 1, 2 and 3 objects all occur
    # slots fill from the front; absent slots hold -1
    assert torch.equal(scenes.present, torch.arange(MAX_OBJECTS) < scenes.count[:, None])
    for name in ("shapes", "colours", "sizes"):
        v = getattr(scenes, name)
        assert (v[~scenes.present] == -1).all() and (v[scenes.present] >= 0).all()
    assert set(scenes.shapes[scenes.present].tolist()) == set(range(len(BASE_SHAPES)))   # no star by default
    assert set(scenes.colours[scenes.present].tolist()) == set(range(len(COLOURS)))


def test_image_is_background_exactly_off_the_mask_and_the_colour_of_the_top_object_on_it(scenes):
    differs = (scenes.images != scenes.background[:, :, None, None]).any(1)
    assert torch.equal(differs, scenes.masks > 0)
    palette = torch.tensor(list(COLOURS.values()))
    for k in range(MAX_OBJECTS):
        on = scenes.masks == k + 1
        expect = palette[scenes.colours[:, k].clamp_min(0)][:, :, None, None].expand_as(scenes.images)
        assert torch.equal(scenes.images.permute(0, 2, 3, 1)[on], expect.permute(0, 2, 3, 1)[on])


def test_occlusion_later_objects_on_top_and_centres_visible(scenes):
    """The label map equals painting each full shape in slot order; every centre pixel stays its own."""
    radius = torch.tensor(list(SIZES.values()))[scenes.sizes.clamp_min(0)]
    painted = torch.zeros_like(scenes.masks)
    for k in range(MAX_OBJECTS):
        full = shape_masks(scenes.shapes[:, k].clamp_min(0), radius[:, k], scenes.centres[:, k].clamp_min(0), 32)
        painted[full & scenes.present[:, k, None, None]] = k + 1
    assert torch.equal(painted, scenes.masks)
    b, k = scenes.present.nonzero(as_tuple=True)
    cx, cy = scenes.centres[b, k].long().unbind(-1)
    assert torch.equal(scenes.masks[b, cy, cx], k + 1)


def test_shapes_are_the_documented_sets():
    """One shape of each kind against the formulas written out pixel by pixel."""
    r, c = 6.5, (15.0, 12.0)
    masks = shape_masks(torch.arange(4), torch.full((4,), r), torch.tensor([c] * 4), 32)
    for kind in range(4):
        for y in range(32):
            for x in range(32):
                dx, dy = x - c[0], y - c[1]
                inside = [dx * dx + dy * dy <= r * r, max(abs(dx), abs(dy)) <= 0.9 * r,
                          abs(dy) <= r and abs(dx) <= (dy + r) / 2,
                          (abs(dx) <= r and abs(dy) <= 0.35 * r) or (abs(dy) <= r and abs(dx) <= 0.35 * r)][kind]
                assert bool(masks[kind, y, x]) == inside, (SHAPES[kind], x, y)
    areas = masks.sum((1, 2)).tolist()
    assert areas[1] == 11 * 11 and areas[2] == sum(2 * int((d + r) / 2) + 1 for d in range(-6, 7))


def test_edges_are_the_mask_boundary(scenes):
    m = scenes.masks[:40].numpy()
    expect = np.zeros_like(m, dtype=bool)
    for i, y, x in zip(*np.nonzero(m)):                  # a direct loop: a label pixel with a differing 4-neighbour
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < 32 and 0 <= nx < 32 and m[i, ny, nx] != m[i, y, x]:
                expect[i, y, x] = True
    assert np.array_equal(scenes.edges[:40].numpy(), expect)
    assert scenes.edges.sum() > 0 and not (scenes.edges & (scenes.masks == 0)).any()


def test_boxes_are_the_mask_extents(scenes):
    for i in range(60):
        for k in range(MAX_OBJECTS):
            ys, xs = np.nonzero(scenes.masks[i].numpy() == k + 1)
            box = scenes.boxes[i, k].tolist()
            if scenes.present[i, k]:
                assert box == [xs.min(), ys.min(), xs.max(), ys.max()]
            else:
                assert len(xs) == 0 and box == [-1, -1, -1, -1]


def test_placement_rule(scenes):
    radius = torch.tensor(list(SIZES.values()))[scenes.sizes.clamp_min(0)]
    for i in range(len(scenes)):
        ks = scenes.present[i].nonzero().flatten().tolist()
        for a in ks:
            for b in ks:
                if a < b:
                    d = (scenes.centres[i, a] - scenes.centres[i, b]).abs().max()
                    assert d >= max(0.8 * (radius[i, a] + radius[i, b]), 8.0)
        cx, cy = scenes.centres[i, ks].T
        r = radius[i, ks].floor()
        assert (cx - r >= 0).all() and (cx + r <= 31).all() and (cy - r >= 0).all() and (cy + r <= 31).all()


def test_captions_state_the_attributes_and_true_relations(scenes):
    names = {"shapes": SHAPES, "colours": tuple(COLOURS), "sizes": tuple(SIZES)}
    for i in range(len(scenes)):
        caption, count = scenes.captions[i], int(scenes.count[i])
        for k in range(count):
            phrase = " ".join(["a", names["sizes"][scenes.sizes[i, k]], names["colours"][scenes.colours[i, k]],
                               names["shapes"][scenes.shapes[i, k]]])
            assert phrase in caption
        if count == 2:
            (x0, y0), (x1, y1) = scenes.centres[i, :2].tolist()
            dx, dy = x0 - x1, y0 - y1
            assert abs(abs(dx) - abs(dy)) >= RELATION_MARGIN
            truth = ("above" if dy < 0 else "below") if abs(dy) > abs(dx) else ("left of" if dx < 0 else "right of")
            assert f" {truth} a " in caption and RELATIONS[scenes.relation[i]] == truth
        else:
            assert scenes.relation[i] == -1 and caption.count(" and ") == count - 1
        assert len(caption.split()) <= 14
    parsed = parse_captions(scenes.captions)
    for name in ("shapes", "colours", "sizes", "present", "relation"):
        assert torch.equal(parsed[name], getattr(scenes, name)), name


def test_relation_of_examples():
    b = torch.tensor([[10.0, 10.0]] * 4)
    a = torch.tensor([[11.0, 2.0], [9.0, 20.0], [1.0, 12.0], [20.0, 13.0]])
    assert [RELATIONS[i] for i in relation_of(a, b)] == ["above", "below", "left of", "right of"]


def test_held_out_pairs():
    train = make_scenes(400, seed=0, exclude_pairs=[("green", "triangle"), ("red", "circle")])
    pairs = set(zip(train.colours[train.present].tolist(), train.shapes[train.present].tolist()))
    green, triangle, red, circle = (list(COLOURS).index("green"), SHAPES.index("triangle"),
                                    list(COLOURS).index("red"), SHAPES.index("circle"))
    assert (green, triangle) not in pairs and (red, circle) not in pairs and len(pairs) == 22
    assert not any("green triangle" in c or "red circle" in c for c in train.captions)
    test = make_scenes(30, seed=0, max_objects=1, only_pairs=[("green", "triangle")])
    assert {c.split(" ", 2)[2] for c in test.captions} == {"green triangle"}
    assert len(colour_shape_pairs()) == len(COLOURS) * len(BASE_SHAPES)
    assert len(colour_shape_pairs(shapes=SHAPES)) == len(COLOURS) * len(SHAPES)


def test_subset_device_class_masks_and_image_size(scenes):
    sub = scenes[torch.tensor([5, 2])]
    assert len(sub) == 2 and sub.captions == [scenes.captions[5], scenes.captions[2]]
    assert torch.equal(sub.images, scenes.images[[5, 2]]) and torch.equal(scenes[3].masks, scenes.masks[3:4])
    assert torch.equal(scenes[scenes.count == 1].count, scenes.count[scenes.count == 1])
    assert scenes.to("cpu").images.device.type == "cpu"
    cm = scenes.class_masks
    on = scenes.masks > 0
    top = scenes.shapes.gather(1, (scenes.masks - 1).clamp_min(0).flatten(1)).view_as(cm)
    assert torch.equal(cm[on], top[on] + 1) and (cm[~on] == 0).all()
    big = make_scenes(20, seed=1, image_size=64)
    assert big.images.shape == (20, 3, 64, 64) and torch.equal((big.images != big.background[..., None, None]).any(1),
                                                                big.masks > 0)


def test_ten_thousand_scenes_are_quick():
    start = time.process_time()                        # CPU time: a busy shared machine does not make it fail
    make_scenes(10_000, seed=0)
    assert time.process_time() - start < 10.0          # vectorised: ~1 s on a laptop core (a loose bound)


def test_tokenizer_round_trip_and_specials(scenes):
    tok = WordTokenizer()
    ids = tok.encode(scenes.captions)
    assert ids.shape == (len(scenes), 16) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.bos_id).all() and tok.decode(ids) == scenes.captions
    lengths = torch.tensor([len(c.split()) for c in scenes.captions])
    assert torch.equal(ids[torch.arange(len(ids)), lengths + 1], torch.full_like(lengths, tok.eos_id))
    assert (tok.encode("")[0].tolist() == [1, 2] + [0] * 14)
    assert tok.encode("A small RED circle").tolist() == tok.encode("a small red circle").tolist()
    assert tok.words == vocabulary() and tok.words[:3] == ("<pad>", "<bos>", "<eos>")
    assert len(set(tok.words)) == len(tok)
    every = {w for c in scenes.captions for w in c.split()}
    assert every <= set(tok.words[3:]) and len(tok) == 3 + 2 + len(SIZES) + len(COLOURS) + len(SHAPES) + 5


@pytest.mark.parametrize("caption, match", [
    ("a small purple circle", r"unknown words \['purple'\]"),
    ("a big red blob", r"unknown words \['big', 'blob'\]"),
    ("a small red <eos>", r"unknown words \['<eos>'\]"),
])
def test_tokenizer_unknown_words(caption, match):
    with pytest.raises(ValueError, match=match):
        WordTokenizer().encode(["a small red circle", caption])


def test_tokenizer_bad_input():
    tok = WordTokenizer(max_len=6)
    with pytest.raises(ValueError, match="max_len=6"):
        tok.encode("a small red circle above a large blue square")
    with pytest.raises(ValueError, match="max_len"):
        WordTokenizer(max_len=1)
    with pytest.raises(TypeError, match="max_len"):
        WordTokenizer(max_len=16.0)
    with pytest.raises(TypeError, match="captions"):
        tok.encode(5)
    with pytest.raises(ValueError, match="token ids"):
        tok.decode(torch.tensor([[1, 99, 2]]))
    with pytest.raises(ValueError, match="tokens"):
        tok.decode(torch.tensor([1, 3, 2]))


@pytest.mark.parametrize("caption, match", [
    ("a small red", "expected 'a SIZE COLOUR SHAPE'"),
    ("a red small circle", "expected 'a SIZE COLOUR SHAPE'"),
    ("a small red circle and a large blue square", "the grammar has"),
    ("a small red circle above a large blue square above a small red circle", "expected a relation"),
    ("a small red circle near a large blue square", "expected a relation"),
])
def test_parse_rejects_ungrammatical_captions(caption, match):
    with pytest.raises(ValueError, match=match):
        parse_captions([caption])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n=0), ValueError, "n must be"),
    (dict(n=-3), ValueError, "n must be"),
    (dict(n=2.5), TypeError, "n must be"),
    (dict(n=10, max_objects=4), ValueError, "max_objects"),
    (dict(n=10, max_objects=0), ValueError, "max_objects"),
    (dict(n=10, min_objects=3, max_objects=2), ValueError, "min_objects"),
    (dict(n=10, image_size=8), ValueError, "image_size"),
    (dict(n=10, image_size=256), ValueError, "image_size"),
    (dict(n=10, image_size=32.0), TypeError, "image_size"),
    (dict(n=10, tint=float("nan")), ValueError, "tint"),
    (dict(n=10, tint=-0.1), ValueError, "tint"),
    (dict(n=10, seed=-1), ValueError, "seed"),
    (dict(n=10, generator=0), TypeError, "generator"),
    (dict(n=10, exclude_pairs=[("purple", "circle")]), ValueError, r"unknown pair \('purple', 'circle'\)"),
    (dict(n=10, only_pairs=[("red", "hexagon")]), ValueError, "unknown pair"),
    (dict(n=10, exclude_pairs=("red", "circle")), TypeError, "exclude_pairs"),
    (dict(n=10, exclude_pairs="red circle"), TypeError, "exclude_pairs"),
    (dict(n=10, only_pairs=[("red", "circle")], exclude_pairs=[("red", "circle")]), ValueError, "no colour"),
])
def test_make_scenes_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_scenes(**kwargs)


def test_plot_scenes(scenes):
    import matplotlib.pyplot as plt
    fig = plot_scenes(scenes, n=3, panels=("image", "edges"))
    assert len(fig.axes) == 6 and fig.axes[0].get_title().replace("\n", " ") == scenes.captions[0]
    plt.close(fig)
    with pytest.raises(ValueError, match="panels"):
        plot_scenes(scenes, panels=("depth",))
    with pytest.raises(TypeError, match="Scenes"):
        plot_scenes(scenes.images)


def test_star_is_the_five_pointed_star_polygon():
    """The star's mask against matplotlib's point-in-polygon test on its 10 vertices (outer r, inner 0.45 r)."""
    from matplotlib.path import Path
    r, c = 6.5, (15.0, 14.0)
    star = SHAPES.index("star")
    mask = shape_masks(torch.tensor([star]), torch.tensor([r]), torch.tensor([c]), 32)[0]
    angles = torch.arange(10) * math.pi / 5                                   # from "up", clockwise on screen
    radii = torch.where(torch.arange(10) % 2 == 0, torch.tensor(r), torch.tensor(0.45 * r))
    polygon = Path(torch.stack([c[0] + radii * angles.sin(), c[1] - radii * angles.cos()], 1).tolist())
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    inside = torch.tensor(polygon.contains_points(torch.stack([xs.flatten(), ys.flatten()], 1).tolist()))
    differ = (inside.view(32, 32) != mask).sum().item()
    assert differ <= 2, differ                                               # only pixels exactly on an edge may differ
    assert mask.sum() > 30 and mask[int(c[1]) - 6, int(c[0])] and not mask[int(c[1]) + 6, int(c[0])]   # a point up, none down


def test_the_star_is_drawn_only_when_asked():
    assert NOVEL_SHAPES == ("star",) and SHAPES[:4] == BASE_SHAPES
    plain = make_scenes(400, seed=3)
    assert "star" not in " ".join(plain.captions)
    every = make_scenes(400, seed=3, shapes=SHAPES)
    assert set(every.shapes[every.present].tolist()) == set(range(len(SHAPES)))
    only = make_scenes(20, seed=3, max_objects=1, only_pairs=[("red", "star")])
    assert set(only.captions) <= {"a small red star", "a large red star"}
    assert parse_captions("a small red star")["shapes"][0, 0].item() == SHAPES.index("star")
    with pytest.raises(ValueError, match=r"unknown kinds \['hexagon'\]"):
        make_scenes(4, shapes=["circle", "hexagon"])
    with pytest.raises(TypeError, match="non-empty list of shape names"):
        make_scenes(4, shapes="star")
