"""Inference precision: bf16 autocast of the UNet, for processors that run bf16 natively.

Under bf16 autocast the UNet's matrix multiplications and convolutions run in bfloat16 (8 bits of mantissa) while
the DDIM arithmetic around it stays in float32 (``CausalDiffAE.eps`` returns the noise in the input's dtype). It
pays where bf16 is native: GPUs, and CPUs with AMX tiles or AVX-512 BF16 (the performance issue's probes on such a
Xeon: 1.5-2x for training). Without them PyTorch emulates bf16, many times slower than float32 (19x on a
training step of this project's AVX2 machine; docs/performance.md), so float32 stays the default.
"""

from __future__ import annotations

import contextlib
import typing
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
#: /proc/cpuinfo flags of the x86 instructions that make bf16 matmuls native.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def check_precision(precision: str) -> Precision:
    """``precision`` if it is one of PRECISIONS; anything else is refused by name."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return typing.cast(Precision, precision)


def autocast(precision: Precision, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context the UNet runs in: none for fp32, torch.autocast to bfloat16 on ``device``'s type for bf16."""
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU runs bf16 natively (AMX or AVX-512 BF16), read from the flags of ``/proc/cpuinfo`` (or the
    text given); False where it cannot tell (another OS)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags")
             for flag in line.partition(":")[2].split()}
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def emulation_warning(precision: Precision, device: torch.device | str) -> str | None:
    """A warning for bf16 on a CPU that emulates it (so the user knows why it is slow); None otherwise."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not native_bf16():
        return ("bf16 on a CPU without AMX or AVX-512 BF16: PyTorch emulates it, many times slower than fp32 "
                "(use --precision fp32)")
    return None


def training_precision(choice: str, on_gpu: bool, cpuinfo: str | None = None) -> str:
    """accelerate's ``mixed_precision`` for ``train.mixed_precision``: ``auto`` is bf16 where it is native (a CUDA
    device that supports it when training there, else this CPU's flags), else no; any other choice stays as it is."""
    if choice != "auto":
        return choice
    native = torch.cuda.is_bf16_supported() if on_gpu else native_bf16(cpuinfo)
    return "bf16" if native else "no"
