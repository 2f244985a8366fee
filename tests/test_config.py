"""Quick mode, seeding and device resolution."""
import pytest
import torch

from minidiff import config


def test_quick_mode_from_env(monkeypatch):
    monkeypatch.setenv("MINIDIFF_QUICK", "1")
    assert config.is_quick() and config.pick("q", "f") == "q"
    monkeypatch.setenv("MINIDIFF_QUICK", "0")
    assert not config.is_quick() and config.pick("q", "f") == "f"
    monkeypatch.delenv("MINIDIFF_QUICK")
    assert not config.is_quick()


def test_seed_everything_is_reproducible():
    g1 = config.seed_everything(3)
    a = torch.randn(4), torch.randn(4, generator=g1)
    g2 = config.seed_everything(3)
    b = torch.randn(4), torch.randn(4, generator=g2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(TypeError, match="seed"):
        config.seed_everything(1.5)


def test_resolve_device():
    assert config.resolve_device(None) == torch.device("cpu")
    assert config.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        config.resolve_device("tpu-please")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="cuda.is_available"):
        config.resolve_device("cuda")


def test_show_progress_respects_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not config.show_progress(True)
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert config.show_progress(True) and not config.show_progress(False)


@pytest.mark.parametrize("value", ["2", "ture", "quick", "-1"])
def test_unknown_switch_values_are_errors(monkeypatch, value):
    monkeypatch.setenv("MINIDIFF_QUICK", value)
    with pytest.raises(ValueError, match="MINIDIFF_QUICK"):
        config.is_quick()
    monkeypatch.setenv("MINIDIFF_QUICK", "0")
    monkeypatch.setenv("TQDM_DISABLE", value)
    with pytest.raises(ValueError, match="TQDM_DISABLE"):
        config.show_progress(True)


@pytest.mark.parametrize("value, expected", [("ON", True), (" yes ", True), ("False", False), ("", False)])
def test_switch_spellings(monkeypatch, value, expected):
    monkeypatch.setenv("MINIDIFF_QUICK", value)
    assert config.is_quick() is expected


def test_pick_needs_values_of_one_kind(monkeypatch):
    monkeypatch.setenv("MINIDIFF_QUICK", "1")
    assert config.pick(1, 2.5) == 1 and config.pick((0, 1), (0, 1, 2)) == (0, 1)
    for quick, full in [(10, "10"), (None, 5), (True, 3), ([1], (1,))]:
        with pytest.raises(TypeError, match="one kind"):
            config.pick(quick, full)


def test_seed_everything_rejects_bad_seeds_and_seeds_every_rng():
    import random

    import numpy as np

    for seed, error in [(-1, ValueError), (2**64, ValueError), (True, TypeError), ("0", TypeError), (None, TypeError)]:
        with pytest.raises(error, match="seed"):
            config.seed_everything(seed)
    config.seed_everything(np.int64(5))
    first = random.random(), np.random.rand(), torch.rand(1).item()
    config.seed_everything(5)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


@pytest.mark.parametrize("device, error", [(1.5, TypeError), (True, TypeError), (["cpu"], TypeError),
                                           ("meta", ValueError), ("tpu-please", ValueError), ("", ValueError)])
def test_resolve_device_rejects(device, error):
    with pytest.raises(error, match="device"):
        config.resolve_device(device)
    assert config.resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_show_progress_needs_a_bool(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "0")
    with pytest.raises(TypeError, match="progress"):
        config.show_progress("no")
