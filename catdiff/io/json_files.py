"""JSON description files (configs, manifests, format-tagged folders): one reader, one atomic writer.

A catdiff file says what it is with ``"format": "catdiff.<kind>/<version>"``; files of other
tools (diffusers' ``config.json``, ``model_index.json``) are read with no format to check.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from catdiff.errors import UserError
from catdiff.io.atomic import atomic_file

__all__ = ["read_json", "write_json"]


def read_json(file: Path, *, format: str | None = None, what: str = "JSON file") -> dict[str, Any]:
    """The JSON object in ``file``. An unreadable file, one that is not a JSON object or (given
    ``format``) one whose ``"format"`` differs is a one-line :class:`UserError` naming ``what``."""
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"unreadable {what} {file}: {' '.join(str(error).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{file} is not a JSON object, so not a {what}")
    if format is not None and data.get("format") != format:
        raise UserError(f"not a catdiff {what}: {file} has no format {format!r}")
    return data


def write_json(file: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (:func:`~catdiff.io.atomic.atomic_file`)."""
    file = Path(file)
    with atomic_file(file) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return file
