"""Inference precision: bf16 autocast of the UNet, the CPU check that warns where bf16 is emulated, and the flags."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from causaldiffae import precision
from causaldiffae.metrics.settings import Settings
from conftest import ab_model, exit_code

AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\nbugs\t\t: spectre_v1\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    assert precision.native_bf16(AMX_CPU)
    assert precision.native_bf16("flags : fpu avx2 avx512_bf16\n")  # AVX-512 BF16 without AMX
    assert not precision.native_bf16(AVX2_CPU)
    assert not precision.native_bf16("")  # nothing to read: not native


def test_training_precision_auto_is_bf16_only_where_it_is_native(monkeypatch):
    assert precision.training_precision("auto", on_gpu=False, cpuinfo=AMX_CPU) == "bf16"
    assert precision.training_precision("auto", on_gpu=False, cpuinfo=AVX2_CPU) == "no"
    for choice in ("no", "fp16", "bf16"):  # an explicit choice is kept, native or not
        assert precision.training_precision(choice, on_gpu=False, cpuinfo=AVX2_CPU) == choice
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a GPU without bf16 (e.g. a T4)
    assert precision.training_precision("auto", on_gpu=True, cpuinfo=AMX_CPU) == "no"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.training_precision("auto", on_gpu=True, cpuinfo=AVX2_CPU) == "bf16"


def test_emulated_bf16_warns_and_fp32_or_a_gpu_does_not(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: False)
    assert "emulates" in precision.emulation_warning("bf16", "cpu")
    assert precision.emulation_warning("fp32", "cpu") is None
    assert precision.emulation_warning("bf16", "cuda") is None
    monkeypatch.setattr(precision, "native_bf16", lambda cpuinfo=None: True)
    assert precision.emulation_warning("bf16", "cpu") is None


def test_bf16_runs_the_unet_in_bfloat16_and_returns_float32_noise():
    """The same model and input: under bf16 the UNet's convolutions see bfloat16 (8-bit mantissa), so the noise
    differs from fp32's by about 1e-2 relative, not 0 and not more; it comes back as float32 for DDIM."""
    model = ab_model()
    with torch.no_grad():
        for p in model.unet.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    t, cond = torch.tensor([5, 20, 50, 90]), model.condition(model.encode(x.clamp(0, 1)).z, 4)
    seen: list[torch.dtype] = []
    model.unet.stem.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad():
        full = model.eps(x, t, cond)
        model.precision = "bf16"
        half = model.eps(x, t, cond)
    assert seen == [torch.float32, torch.bfloat16]  # the UNet's first convolution, in each precision
    assert full.dtype == half.dtype == torch.float32
    relative = ((half - full).norm() / full.norm()).item()
    assert 1e-4 < relative < 5e-2, relative


def test_precision_is_a_flag_of_evaluate_and_counterfactual(tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        Settings(precision="fp16")
    ab_model().save_pretrained(tmp_path / "model")
    Image.new("L", (8, 8), 128).save(tmp_path / "x.png")
    args = ["counterfactual", str(tmp_path / "model"), "--image", str(tmp_path / "x.png"), "--do", "a=0.5",
            "--steps", "2"]
    assert exit_code([*args, "--precision", "bf16", "--out", str(tmp_path / "cf.png")]) == 0
    assert json.loads((tmp_path / "cf.json").read_text())["settings"]["precision"] == "bf16"
    assert exit_code([*args, "--precision", "fp8", "--out", str(tmp_path / "bad.png")]) == 2  # argparse: a usage error
