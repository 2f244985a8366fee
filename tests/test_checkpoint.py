"""Checkpoints that rebuild their model in a fresh process; recorded configs; clear errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from minidiff import EMA, MLPDenoiser, NoiseSchedule, UNet, fit, load_checkpoint, load_model, save_checkpoint, save_model
from minidiff.cascade import SuperResolutionUNet
from minidiff.checkpoint import build_model, model_config, record_config

ROOT = Path(__file__).resolve().parent.parent


def _mlp(seed=0, **kw):
    torch.manual_seed(seed)
    return MLPDenoiser(num_timesteps=100, **{"width": 32, "depth": 2, **kw})


def _unet(seed=0):
    torch.manual_seed(seed)
    return UNet(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, num_timesteps=100,
                num_classes=3, groups=4)


FRESH = """
import sys, torch
from safetensors.torch import save_file
import minidiff
out = {}
for name, ema, x, c in [("mlp", False, torch.ones(3, 2), None), ("mlp", True, torch.ones(3, 2), None),
                        ("unet", False, torch.ones(3, 1, 8, 8), torch.tensor([0, 1, 2]))]:
    m = minidiff.load_model(sys.argv[1] + "/" + name, ema=ema)
    assert not m.training
    with torch.no_grad():
        out[f"{name}-{ema}"] = m(x, torch.tensor([5, 50, 99]), c)
save_file(out, sys.argv[1] + "/out.safetensors")
print(type(m).__name__)
"""


def test_round_trip_in_a_fresh_process(tmp_path):
    """save_model here, load_model in a new Python process: the same outputs, bit for bit (MLP, EMA, U-Net)."""
    mlp, unet = _mlp(), _unet()
    ema = EMA(mlp, decay=0.5)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(0.1)              # model and EMA weights now differ
    ema.update(mlp)
    ema.update(_mlp(seed=3))
    save_model(mlp, tmp_path / "mlp", ema=ema, meta={"steps": 2})
    save_model(unet, tmp_path / "unet")
    run = subprocess.run([sys.executable, "-c", FRESH, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    got = load_file(str(tmp_path / "out.safetensors"))
    t = torch.tensor([5, 50, 99])
    with torch.no_grad():
        assert torch.equal(got["mlp-False"], mlp.eval()(torch.ones(3, 2), t))
        assert torch.equal(got["mlp-True"], ema.model(torch.ones(3, 2), t))
        assert torch.equal(got["unet-False"], unet.eval()(torch.ones(3, 1, 8, 8), t, torch.tensor([0, 1, 2])))
    assert not torch.equal(got["mlp-False"], got["mlp-True"])
    header = json.loads((tmp_path / "mlp" / "config.json").read_text())
    assert header["class"] == "minidiff.nets.mlp.MLPDenoiser" and header["config"]["width"] == 32
    assert header["meta"] == {"steps": 2} and header["ema"] == {"decay": 0.5, "warmup": True, "num_updates": 2}
    assert sorted(p.name for p in (tmp_path / "unet").iterdir()) == ["config.json", "model.safetensors"]


def test_load_checkpoint_into_a_built_model_and_ema(tmp_path):
    model, ema = _mlp(seed=1), EMA(_mlp(seed=2))
    fit(_mlp(seed=2), lambda m, b, g: m(b, torch.zeros(len(b), dtype=torch.long)).pow(2).mean(), torch.randn(8, 2),
        steps=2, ema=ema)
    path = save_checkpoint(tmp_path / "ck", model, ema, meta={"T": 100})
    fresh, fresh_ema = _mlp(seed=3), EMA(_mlp(seed=4))
    assert load_checkpoint(path, fresh, fresh_ema) == {"T": 100}
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(fresh_ema.model.parameters(), ema.model.parameters()))
    assert fresh_ema.num_updates == 2
    save_checkpoint(path, model)                  # overwriting without an EMA drops the stale EMA file
    with pytest.raises(ValueError, match="no EMA weights"):
        load_model(path, ema=True)


def test_any_module_saves_but_only_recorded_minidiff_classes_rebuild(tmp_path):
    lin = nn.Linear(2, 3)
    path = save_model(lin, tmp_path / "lin")
    fresh = nn.Linear(2, 3)
    load_checkpoint(path, fresh)
    assert torch.equal(fresh.weight, lin.weight)
    with pytest.raises(ValueError, match="does not record its config"):
        load_model(path)
    header = json.loads((tmp_path / "lin" / "config.json").read_text())
    header.update({"class": "os.system", "config": {"command": "echo hi"}})
    (tmp_path / "lin" / "config.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="only minidiff classes"):
        load_model(path)
    header["class"] = "minidiff.train.EMA"
    (tmp_path / "lin" / "config.json").write_text(json.dumps(header))
    with pytest.raises(ValueError, match="does not record its config"):
        load_model(path)


def test_another_architecture_names_both_shapes(tmp_path):
    path = save_model(_mlp(width=32), tmp_path / "w32")
    with pytest.raises(ValueError, match=r"'inp.weight' has shape \(32, 2\) in .*model.safetensors but \(16, 2\)"):
        load_checkpoint(path, _mlp(width=16))
    with pytest.raises(ValueError, match=r"missing from .*'blocks.2"):
        load_checkpoint(path, _mlp(depth=3))
    with pytest.raises(ValueError, match="does not fit this UNet"):
        load_checkpoint(path, _unet())


def test_not_a_checkpoint_and_missing_paths(tmp_path):
    junk = tmp_path / "random.bin"
    junk.write_bytes(torch.randint(0, 256, (100,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match=r"random.bin is not a minidiff checkpoint"):
        load_model(junk)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing.*save_model\(model"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a minidiff checkpoint"):
        load_model(tmp_path)                              # a folder without config.json
    bad = save_model(_mlp(), tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_model(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(bad)
    (bad / "config.json").write_text(json.dumps({"class": "minidiff.nets.mlp.MLPDenoiser"}))
    with pytest.raises(ValueError, match="format"):
        load_model(bad)


def test_save_errors(tmp_path):
    with pytest.raises(TypeError, match="save_model\\(model, path\\)"):
        save_model(tmp_path / "x", _mlp())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        save_model(_mlp(), tmp_path / "file")
    with pytest.raises(TypeError, match="meta"):
        save_model(_mlp(), tmp_path / "m", meta={"f": object()})
    with pytest.raises(TypeError, match="ema must be True or False"):
        load_model(tmp_path / "m", ema=1)


@record_config
class _Toy(nn.Module):
    def __init__(self, dims=(2, 3), dtype=torch.float64, schedule=None, inner=None, **extra):
        super().__init__()
        self.lin = nn.Linear(*dims, dtype=dtype)
        self.inner = inner


def test_configs_keep_their_types_and_the_outermost_call():
    s = NoiseSchedule.cosine(50)
    toy = _Toy((3, 4), torch.float32, schedule=s, inner=_mlp(), scale=torch.tensor([1.5, 2.0]), note="x")
    spec = json.loads(json.dumps(model_config(toy)))
    assert spec["class"].endswith("._Toy")
    with pytest.raises(ValueError, match="only minidiff classes"):
        build_model(spec)
    from minidiff.checkpoint import _decode
    cfg = {k: _decode(v) for k, v in spec["config"].items()}
    assert cfg["dims"] == (3, 4) and cfg["dtype"] is torch.float32 and cfg["note"] == "x"
    assert torch.equal(cfg["schedule"].betas, s.betas) and cfg["schedule"].name == s.name
    assert torch.equal(cfg["scale"], torch.tensor([1.5, 2.0])) and isinstance(cfg["inner"], MLPDenoiser)
    with pytest.raises(TypeError, match=r"_Toy\(note=...\) is a object"):
        model_config(_Toy(note=object()))
    sr = SuperResolutionUNet(image_size=8, low_res_size=4, aug_schedule=NoiseSchedule.linear(100), base_channels=8,
                             channel_mults=(1, 2), num_res_blocks=1, groups=4, num_timesteps=100)
    spec = model_config(sr)                       # the outer call, not the inner UNet's, with **unet_kwargs flattened
    assert spec["class"] == "minidiff.cascade.SuperResolutionUNet" and spec["config"]["base_channels"] == 8
    rebuilt = build_model(json.loads(json.dumps(spec)))
    assert torch.equal(rebuilt.aug_schedule.alpha_bar, sr.aug_schedule.alpha_bar)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in sr.parameters()]

    class Sub(MLPDenoiser):
        pass

    with pytest.raises(TypeError, match="without recording its own config"):
        model_config(Sub())
    with pytest.raises(TypeError, match="does not record"):
        model_config(nn.Linear(2, 2))
