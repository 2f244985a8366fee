"""minidiff.cond: the batch operations every wrapper applies to a condition, and their errors."""
import pytest
import torch

from minidiff import cond as C


@pytest.fixture
def mapping():
    return {"label": torch.tensor([0, 1, 2]), "context": torch.arange(3 * 2 * 4.0).reshape(3, 2, 4),
            "c_add": torch.ones(3, 1, 4, 4)}


def test_batch_size_and_check(mapping):
    assert C.batch_size(None) is None
    assert C.batch_size(torch.zeros(5)) == 5
    assert C.batch_size(mapping) == 3
    with pytest.raises(ValueError, match=r"cond\['context'\] has batch size 2, expected 3"):
        C.check_cond({"label": torch.zeros(3), "context": torch.zeros(2, 4)})
    with pytest.raises(ValueError, match="expected 4"):
        C.check_cond(torch.zeros(3), batch=4)
    with pytest.raises(ValueError, match="0-d"):
        C.check_cond(torch.tensor(1))
    with pytest.raises(TypeError, match="names \\(str\\) to tensors"):
        C.check_cond({"label": [1, 2]})
    with pytest.raises(TypeError, match="got list"):
        C.check_cond([1, 2])
    with pytest.raises(ValueError, match="empty mapping"):
        C.check_cond({})


def test_cat_repeat_index_roundtrip(mapping):
    both = C.cat([mapping, mapping])
    assert C.batch_size(both) == 6
    for k, v in mapping.items():
        assert torch.equal(both[k][3:], v)
    rep = C.repeat(mapping, 3)
    # block-major like x.repeat(k, ...): row j*B + b is row b
    assert torch.equal(rep["label"], torch.tensor([0, 1, 2] * 3))
    assert torch.equal(C.index(rep, slice(6, 9))["context"], mapping["context"])
    assert torch.equal(C.index(mapping, torch.tensor([True, False, True]))["label"], torch.tensor([0, 2]))
    assert C.cat([None, None]) is None
    assert torch.equal(C.cat([torch.tensor([1]), torch.tensor([2])]), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="different kinds"):
        C.cat([torch.zeros(1), {"label": torch.zeros(1)}])
    with pytest.raises(ValueError, match="different keys"):
        C.cat([{"label": torch.zeros(1)}, {"context": torch.zeros(1)}])
    for bad, err in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match=r"k \(number of copies\) must be an int >= 1"):
            C.repeat(mapping, bad)


def test_to_keeps_labels_integer(mapping):
    moved = C.to(mapping, "cpu", torch.float64)
    assert moved["label"].dtype == torch.long and moved["context"].dtype == torch.float64


def test_null_like_and_drop(mapping):
    empty = torch.full((2, 4), -1.0)
    null = {"label": 9, "context": empty}
    n = C.null_like(mapping, null)
    assert torch.equal(n["label"], torch.full((3,), 9))
    assert torch.equal(n["context"], empty.expand(3, 2, 4))
    assert n["c_add"] is mapping["c_add"]                     # never nulled: not in NULL_KEYS
    mask = torch.tensor([True, False, True])
    d = C.drop(mapping, mask, null)
    assert d["label"].tolist() == [9, 1, 9]
    assert torch.equal(d["context"][1], mapping["context"][1]) and torch.equal(d["context"][0], empty)
    assert torch.equal(d["c_add"], mapping["c_add"])
    # only the keys asked for
    d_label = C.drop(mapping, mask, {"label": 9}, keys=("label",))
    assert torch.equal(d_label["context"], mapping["context"])
    # a plain tensor keeps working as labels
    assert C.drop(torch.tensor([0, 1, 2]), mask, 9).tolist() == [9, 1, 9]
    # a plain spec for a mapping means the label
    assert C.null_like({"label": torch.tensor([1, 2])}, 5)["label"].tolist() == [5, 5]
    assert C.drop(None, mask, 9) is None


def test_null_errors(mapping):
    with pytest.raises(ValueError, match="no null value for cond entries \\['context'\\]"):
        C.null_like(mapping, {"label": 9})
    with pytest.raises(ValueError, match="must have shape \\(2, 4\\)"):
        C.null_like(mapping, {"label": 9, "context": torch.zeros(3, 4)})
    with pytest.raises(TypeError, match="must be an int, a float or a tensor"):
        C.null_like(torch.zeros(3), "none")
    with pytest.raises(TypeError, match="plain tensor"):
        C.null_like(torch.zeros(3), {"label": 1})
    with pytest.raises(ValueError, match="unconditional"):
        C.null_like(None, 1)
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape \\(B,\\)=\\(3,\\)"):
        C.drop(mapping, torch.tensor([1, 0, 1]), {"label": 9, "context": 0.0})
    with pytest.raises(ValueError, match="mask"):
        C.drop(mapping, torch.tensor([True]), {"label": 9, "context": 0.0})


def test_model_null():
    class M:
        null_cond = 10
    assert C.model_null(M()) == 10 and C.model_null(object()) is None
