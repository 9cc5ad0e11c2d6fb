"""How a run computes, chosen by measuring on the machine at hand: precision (fp32, or bf16
autocast where the hardware has bf16 instructions) and memory format (NCHW or channels-last).

The project's CPUs differ: on AVX2-only cores bf16 convolutions run 3-25x slower than fp32, on
AVX-512 bf16 and AMX cores faster, and channels-last gains or loses a few percent by network
size. So a recipe may say ``"auto"`` for either, and :func:`choose_speed` times a few training
steps of each candidate (forward, backward, fused AdamW, on random data of the run's shape)
and keeps the fastest. ``torch.compile`` is left out: on a 2-core CPU its four-minute warm-up
bought nothing measurable (docs/TRAINING.md).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import torch

from catdiff.models import build_model
from catdiff.precision import fast_bf16

PROBE_STEPS = 3  # timed steps per candidate, after one untimed


def candidates(precision: str, channels_last: bool | str) -> list[dict[str, Any]]:
    """The settings to try: ``"auto"`` for either option opens it up (bf16 only where :func:`fast_bf16`)."""
    precisions = (["no", "bf16"] if fast_bf16() else ["no"]) if precision == "auto" else [precision]
    formats = [False, True] if channels_last == "auto" else [bool(channels_last)]
    return [{"mixed_precision": p, "channels_last": c} for p, c in itertools.product(precisions, formats)]


def images_per_second(
    model: dict[str, Any], shape: Sequence[int], batch: int, setting: dict[str, Any], device: torch.device
) -> float:
    """Training images/s of ``model`` on random data of ``shape`` under ``setting``."""
    torch.manual_seed(0)
    network = build_model(model).to(device)
    memory_format = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    network = network.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-6, fused=True)
    x = torch.randn(batch, *shape, device=device).contiguous(memory_format=memory_format)
    t = torch.randint(0, 1000, (batch,), device=device).float()
    bf16 = setting["mixed_precision"] == "bf16"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    start = 0.0
    for step in range(PROBE_STEPS + 1):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = network(x, t).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return PROBE_STEPS * batch / (time.perf_counter() - start)


def choose_speed(
    model: dict[str, Any],
    shape: Sequence[int],
    batch: int,
    options: list[dict[str, Any]],
    device: torch.device,
    *,
    measure_one: bool = False,
) -> tuple[dict[str, Any], list[tuple[dict[str, Any], float]]]:
    """The fastest of the denoiser settings ``options`` and every option's measured images/s
    (the fastest first; a single option is timed only if ``measure_one``). A model config that
    builds no model is a :class:`UserError`."""
    if len(options) == 1 and not measure_one:
        return options[0], []
    build_model(model)
    rates = [(setting, images_per_second(model, shape, batch, setting, device)) for setting in options]
    rates.sort(key=lambda pair: -pair[1])
    return rates[0][0], rates


def describe(setting: dict[str, Any]) -> str:
    precision = {"no": "fp32"}.get(setting["mixed_precision"], setting["mixed_precision"])
    return f"{precision}, {'channels-last' if setting['channels_last'] else 'NCHW'}"
