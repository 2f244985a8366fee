"""minidiff.checks.check_labels: the one class-label check (guidance, exact mixtures, TGDP's oracle)."""
import pytest
import torch

from minidiff.checks import check_labels


def test_check_labels_returns_long_on_the_device_and_broadcasts_an_int():
    out = check_labels(torch.tensor([0, 2, 1], dtype=torch.int32), "labels", 3, 3)
    assert out.dtype == torch.long and out.tolist() == [0, 2, 1]
    assert check_labels(2, "cond", 4, broadcast=True).tolist() == [2, 2, 2, 2]
    assert check_labels([1, 0], "cond", 2).tolist() == [1, 0]


@pytest.mark.parametrize("value, kwargs, error, match", [
    (torch.zeros(3), {}, ValueError, "integer class labels, got dtype torch.float32"),
    (torch.ones(3, dtype=torch.bool), {}, ValueError, "got dtype torch.bool"),
    ("cat", {}, TypeError, r"integer class labels \(B,\), got str"),
    ("cat", {"broadcast": True}, TypeError, r"\(B,\) or an int, got str"),
    (torch.zeros(3, 1, dtype=torch.long), {}, ValueError, r"shape \(B,\)=\(3,\), got \(3, 1\)"),
    (1, {}, ValueError, r"shape \(B,\)=\(3,\), got \(\)"),
    (torch.tensor([0, 3, 1]), {"num_classes": 3}, ValueError, r"must be in \[0, 3\), got min 0, max 3"),
    (torch.tensor([0, -1, 1]), {"num_classes": 3}, ValueError, r"got min -1"),
])
def test_check_labels_bad_input(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_labels(value, "labels", 3, **kwargs)
