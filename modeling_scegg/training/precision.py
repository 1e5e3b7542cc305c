"""Which mixed precision a run uses when `--mixed_precision` is not given.

Accelerate's own setting wins: `accelerate launch` exports ACCELERATE_MIXED_PRECISION from
`accelerate config` or its `--mixed_precision` flag, and a run started that way must follow it
(an explicit default here would silently override it). Without any setting, `auto` applies:
bf16 autocast where the device multiplies bf16 matrices natively (CUDA from compute capability
8.0, CPUs with AVX-512 BF16 or AMX), float32 elsewhere. On a CPU without native bf16 a bf16
matmul is emulated and runs two orders of magnitude slower than float32
(benchmarks/README.md), so there it must never be picked by default.
"""
from __future__ import annotations

import os

import torch

CHOICES = ("no", "fp16", "bf16")
AUTO = "auto"


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` runs bf16 matrix products in hardware (not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def _training_device() -> torch.device:
    """The device Accelerate will train on, without creating its state (CPU when forced)."""
    forced_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return torch.device("cuda" if torch.cuda.is_available() and not forced_cpu else "cpu")


def resolve_mixed_precision(requested: str | None) -> str:
    """`requested` (no / fp16 / bf16 / auto, or None for "not given") as the value to hand to
    Accelerate: None follows ACCELERATE_MIXED_PRECISION when it is set, else `auto`."""
    if requested is None:
        requested = os.environ.get("ACCELERATE_MIXED_PRECISION") or AUTO
    requested = requested.lower()
    if requested == AUTO:
        return "bf16" if native_bf16(_training_device()) else "no"
    if requested not in CHOICES:
        raise ValueError(f"--mixed_precision must be one of {CHOICES + (AUTO,)}, got {requested!r}")
    return requested
