"""Which precision a network evaluates in, chosen by the hardware at hand.

bf16 halves the bytes each convolution moves, and pays where the hardware computes it natively:
GPUs with bf16, and CPUs with AVX-512 bf16 or AMX instructions. On AVX2-only CPUs bf16
convolutions run 3-25x slower than fp32, so there ``"auto"`` stays fp32 (measured per CPU in
docs/PERFORMANCE.md). Training times its candidates on top of this (:mod:`catdiff.training.speed`).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: The dtypes of each concrete precision: of autocast, or of stored weights.
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def fast_bf16() -> bool:
    """Whether bf16 can pay off here: a GPU with bf16, or a CPU with AVX-512 bf16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so looked up with care
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: Precision) -> str:
    """A concrete precision: ``"auto"`` is bf16 where :func:`fast_bf16`, else fp32."""
    if precision == "auto":
        return "bf16" if fast_bf16() else "fp32"
    return precision


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Mixed precision for network evaluations (``"auto"`` resolved here); fp32 is none."""
    concrete = resolve_precision(precision)
    if concrete == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=PRECISIONS[concrete])
