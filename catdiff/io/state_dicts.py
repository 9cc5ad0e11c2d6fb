"""Weight files -> state dicts, and the one strict loader of those into modules.

Files are never unpickled: ``.safetensors`` are opened with ``safe_open``, whose tensors are
views of a memory map, and ``.ckpt``/``.pt``/``.pth``/``.bin`` are read with
``torch.load(weights_only=True, mmap=True)``. Either way a tensor's bytes are read from disk
only when it is used, and :func:`load_state_strict` with ``assign=True`` hands them to a module
built on the meta device without a copy, so loading a checkpoint costs about its size in memory,
not twice it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import safe_open
from torch import Tensor, nn

from catdiff.errors import UserError

__all__ = ["PICKLE_SUFFIXES", "load_state_strict", "read_state_file", "rename_key"]

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
KeySelector = Callable[[list[str]], list[str]]
KeyNamer = Callable[[str], str]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _all_keys(keys: list[str]) -> list[str]:
    return keys


def _same_name(key: str) -> str:
    return key


def _read_safetensors(path: Path, select: KeySelector) -> dict[str, Tensor]:
    """The tensors of ``path`` whose keys ``select`` keeps, as views of the file's memory map."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = select(list(f.keys()))
            return {k: f.get_tensor(k) for k in keys}
    except UserError:
        raise
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise UserError(f"corrupt or unreadable safetensors file {path}: {error}") from None


def _read_pickle(path: Path, select: KeySelector) -> dict[str, Tensor]:
    """A ``torch.save`` file read with ``weights_only=True`` (no code runs) and memory-mapped."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # zipfile, pickle and torch errors alike mean "unreadable"
        raise UserError(
            f"cannot read {path} as a weights-only torch checkpoint ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise UserError(f"{path} does not hold a state dict")
    keys = select(list(obj))
    bad = [k for k in keys if not isinstance(obj[k], Tensor)]
    if bad:
        raise UserError(f"{path}: entries {bad[:3]} are not tensors")
    return {k: obj[k] for k in keys}


def read_state_file(path: Path, select: KeySelector = _all_keys) -> dict[str, Tensor]:
    """The tensors of a weights file whose keys ``select`` keeps (a ``"state_dict"`` entry of a
    torch checkpoint is unwrapped). Unreadable, truncated or unknown files are a :class:`UserError`."""
    if path.suffix == ".safetensors":
        return _read_safetensors(path, select)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, select)
    raise UserError(f"{path}: unknown weights format (expected .safetensors, or {', '.join(PICKLE_SUFFIXES)})")


def _first(keys: list[str]) -> str:
    more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
    return f"{keys[:3]}{more}"


def load_state_strict(
    module: ModuleT,
    state: Mapping[str, Tensor],
    source: Path,
    *,
    what: str = "the model",
    name: KeyNamer = _same_name,
    dtype: torch.dtype | None = None,
    assign: bool = False,
) -> ModuleT:
    """Load ``state`` into ``module`` after checking every key and shape; returns ``module``.

    A misfit is one :class:`UserError` naming the first missing, unexpected and wrong-shape keys
    as the file spells them (``name``). Floating tensors are cast to ``dtype`` when given. With
    ``assign=True`` a module built under ``torch.device("meta")`` takes the tensors themselves
    (``load_state_dict(assign=True)``: no copy, no second allocation); otherwise they are copied
    into its parameters, which keep their dtype, device and identity (an optimizer's references).
    """
    own = module.state_dict()
    problems = [
        f"{kind} {_first(keys)}"
        for kind, keys in (
            ("missing keys", [name(k) for k in own if k not in state]),
            ("unexpected keys", [name(k) for k in state if k not in own]),
            ("wrong shapes for", [name(k) for k, v in own.items() if k in state and v.shape != state[k].shape]),
        )
        if keys
    ]
    if problems:
        raise UserError(f"weights in {source} do not fit {what}: {'; '.join(problems)}")
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)
    return module


def rename_key(key: str, modules: Mapping[str, str]) -> str:
    """``key`` with its longest module-path prefix found in ``modules`` renamed; else unchanged."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:n])
        if module in modules:
            return modules[module] + key[len(module) :]
    return key
