"""The shapes evaluator: targets, the caption-accuracy arithmetic (against an oracle), a short training, bad input."""
import math

import pytest
import torch

from minidiff.data.shapes import MAX_OBJECTS, RELATIONS, Scenes, make_scenes, parse_captions
from minidiff.shapes_eval import (GRID, ShapesEvaluator, caption_accuracy, evaluator_loss, evaluator_targets,
                                  shapes_evaluator, shapes_frechet)

SHORT_STEPS = 150


class Oracle(ShapesEvaluator):
    """Detects exactly what the scenes hold (read from their training targets): caption_accuracy must be 1."""

    def __init__(self, scenes: Scenes) -> None:
        super().__init__(width=8)
        self.target = evaluator_targets(scenes)

    def detect(self, images, threshold=0.5):
        t, flat = self.target, lambda v: v.flatten(1)
        gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        centres = 4 * (torch.stack([gx, gy]) + t["offset"]) - 0.5
        found = flat(t["object"]) > 0
        return {"found": found, "score": found.float(), "colours": flat(t["colour"]), "shapes": flat(t["shape"]),
                "sizes": flat(t["size"]), "centres": centres.flatten(2).transpose(1, 2)}


@pytest.fixture(scope="module")
def scenes() -> Scenes:
    return make_scenes(300, seed=11)


@pytest.fixture(scope="module")
def trained() -> ShapesEvaluator:
    return shapes_evaluator(steps=SHORT_STEPS, use_cache=False)


def test_targets_mark_one_cell_per_object_and_decode_to_the_centres(scenes):
    t = evaluator_targets(scenes)
    assert torch.equal(t["object"].sum((1, 2)), scenes.count.float())
    det = Oracle(scenes).detect(scenes.images)
    b, k = scenes.present.nonzero(as_tuple=True)
    cells = ((scenes.centres[b, k] + 0.5) / 4).long()
    idx = cells[:, 1] * GRID + cells[:, 0]
    assert det["found"][b, idx].all()
    assert torch.allclose(det["centres"][b, idx], scenes.centres[b, k], atol=1e-5)
    for name, attr in (("colours", scenes.colours), ("shapes", scenes.shapes), ("sizes", scenes.sizes)):
        assert torch.equal(det[name][b, idx], attr[b, k])
    # the 3×3 neighbours of a centre cell carry its attributes too; cells far from every centre are ignored
    assert (t["colour"] >= 0).sum() > t["object"].sum() and (t["colour"] == -100).any()


def test_oracle_reads_every_true_caption(scenes):
    acc = caption_accuracy(Oracle(scenes), scenes.images, scenes)
    assert acc == {"colour": 1.0, "shape": 1.0, "object": 1.0, "object_size": 1.0, "count": 1.0, "relation": 1.0,
                   "exact": 1.0}


def test_caption_accuracy_arithmetic_on_edited_captions():
    one = make_scenes(200, seed=2, min_objects=2, max_objects=2)
    i = int((one.colours[:, 0] != one.colours[:, 1]).nonzero()[0])      # a scene with two different colours
    scene = one[i]
    oracle = Oracle(scene)
    words = scene.captions[0].split()
    rel = RELATIONS[int(scene.relation[0])]
    opposite = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}[rel]
    flipped = scene.captions[0].replace(f" {rel} ", f" {opposite} ")
    acc = caption_accuracy(oracle, scene.images, [flipped])
    assert acc["object_size"] == 1.0 and acc["relation"] == 0.0 and acc["exact"] == 0.0 and acc["count"] == 1.0
    recoloured = " ".join(words[:2] + ["cyan" if words[2] != "cyan" else "red"] + words[3:])
    acc = caption_accuracy(oracle, scene.images, [recoloured])
    # one of two claimed colours is wrong: half the colours, half the objects; the shapes are all there
    assert acc["colour"] == 0.5 and acc["object"] == 0.5 and acc["shape"] == 1.0 and acc["exact"] == 0.0
    first = " ".join(words[:4])
    acc = caption_accuracy(oracle, scene.images, [first])                   # claims one of the two objects
    assert acc["object_size"] == 1.0 and acc["count"] == 0.0 and acc["exact"] == 0.0 and math.isnan(acc["relation"])
    acc = caption_accuracy(oracle, scene.images, [""])                      # claims nothing
    assert math.isnan(acc["colour"]) and acc["count"] == 0.0


def test_repeated_object_relation_counts_either_order():
    pair = make_scenes(400, seed=5, min_objects=2, max_objects=2, only_pairs=[("red", "circle")])
    same = pair[(pair.sizes[:, 0] == pair.sizes[:, 1]).nonzero().flatten()[:20]]
    assert len(same) > 5
    oracle = Oracle(same)
    assert caption_accuracy(oracle, same.images, same)["relation"] == 1.0
    claims = parse_captions(same.captions)
    flipped = [c.replace(" above ", " below ") if r == 0 else c for c, r in zip(same.captions, claims["relation"])]
    vertical = claims["relation"] <= 1
    acc = caption_accuracy(oracle, same.images, flipped)
    assert acc["relation"] == 1.0                               # "X above X" and "X below X" say the same thing
    horizontal_to_vertical = [c.replace(" left of ", " above ").replace(" right of ", " below ") for c in same.captions]
    acc = caption_accuracy(oracle, same.images, horizontal_to_vertical)
    assert acc["relation"] == pytest.approx(float(vertical.float().mean()))


def test_short_training_reads_clean_scenes(trained, scenes):
    acc = caption_accuracy(trained, scenes.images, scenes)
    # measured with 150 steps: colour 0.98, shape 0.93, count 0.97, exact 0.85 (800 steps: all ≥ 0.99)
    assert acc["colour"] > 0.9 and acc["shape"] > 0.8 and acc["count"] > 0.85 and acc["exact"] > 0.7, acc
    single = scenes[scenes.count == 1][:20]
    assert sum(a == b for a, b in zip(trained.describe(single.images), single.captions)) >= 15
    # what it reads, judged by the oracle of the true scenes (objects may be named in another order)
    read = caption_accuracy(Oracle(scenes), scenes.images, trained.describe(scenes.images))
    assert read["object_size"] > 0.8 and read["relation"] > 0.7, read


def test_features_and_frechet(trained, scenes):
    f = trained.features(scenes.images)
    assert f.shape == (len(scenes), trained.feature_dim)
    other = make_scenes(300, seed=12).images
    same = shapes_frechet(trained, scenes.images, other)
    noisy = shapes_frechet(trained, scenes.images, (other + 0.6 * torch.randn(other.shape,
                                                                             generator=torch.Generator().manual_seed(0))))
    assert 0 <= same < noisy


def test_loss_terms_and_cache_round_trip(tmp_path, monkeypatch, scenes):
    model = ShapesEvaluator(width=8)
    loss, terms = evaluator_loss(model, (scenes.images[:16], {k: v[:16] for k, v in evaluator_targets(scenes).items()}),
                                 torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and set(terms) == {"object", "colour", "shape", "size", "offset"}
    assert torch.isclose(loss, sum(terms.values()))
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    a = shapes_evaluator(steps=2)
    b = shapes_evaluator(steps=2)                              # loaded from the cache: the same weights
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(p.requires_grad for p in a.parameters()) and not a.training


def test_bad_input(scenes):
    model = ShapesEvaluator(width=8).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model.detect(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        model.features(torch.full((2, 3, 32, 32), float("nan")))
    with pytest.raises(TypeError, match="floating"):
        model.detect(torch.zeros(2, 3, 32, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="threshold"):
        model.detect(scenes.images[:2], threshold=1.0)
    with pytest.raises(ValueError, match="2 images but 3 captions"):
        caption_accuracy(model, scenes.images[:2], scenes.captions[:3])
    with pytest.raises(ValueError, match="unknown|expected"):
        caption_accuracy(model, scenes.images[:1], ["a small purple circle"])
    with pytest.raises(TypeError, match="ShapesEvaluator"):
        caption_accuracy(torch.nn.Identity(), scenes.images[:1], scenes.captions[:1])
    with pytest.raises(TypeError, match="ShapesEvaluator"):
        shapes_frechet(None, scenes.images, scenes.images)
    with pytest.raises(ValueError, match="steps"):
        shapes_evaluator(steps=0)
    with pytest.raises(TypeError, match="use_cache"):
        shapes_evaluator(use_cache="yes")
    with pytest.raises(ValueError, match="width"):
        ShapesEvaluator(width=2)
    with pytest.raises(ValueError, match="32"):
        evaluator_targets(make_scenes(2, image_size=64))
    assert MAX_OBJECTS == 3
