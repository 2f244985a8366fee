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
