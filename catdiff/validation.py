"""Strict validation of JSON-shaped settings (training options, recipes, model configs,
``pipeline.json``) against their typed definitions, with pydantic.

Strict as a JSON file is read: ``"64"`` is not a number, ``2.5`` not a whole number, ``null``
not a value, ``true`` not 1, NaN and infinities are not numbers, and unknown keys are refused.
Whatever is wrong becomes one line naming the key, what it should be and what it was.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config

from catdiff.errors import UserError

__all__ = ["validate"]

STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    """An adapter of ``{"value": kind}`` under :data:`STRICT`, which nested dataclasses and
    TypedDicts inherit, so the types validated need no pydantic of their own."""
    box = dataclasses.make_dataclass("Strict", [("value", kind)])
    return TypeAdapter(with_config(STRICT)(box))


def validate(kind: Any, values: Any, what: str) -> Any:
    """``values`` as a ``kind`` (a dataclass, TypedDict, ``Literal``, ...), validated strictly as
    the JSON document it came from or would be saved as; anything wrong is a one-line
    :class:`UserError` that starts with ``what``."""
    try:
        text = json.dumps({"value": values})  # tuples become arrays, as in a file
    except (TypeError, ValueError) as error:
        raise UserError(f"{what}: not JSON data ({error})") from None
    try:
        return _adapter(kind).validate_json(text, strict=True).value
    except ValidationError as error:
        raise UserError(f"{what}: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """The first problem of ``error`` as ``key: expected ..., got ...``."""
    first = error.errors(include_url=False)[0]
    key = ".".join(str(part) for part in first["loc"][1:])
    if first["type"] == "missing":
        return f"{key} is required"
    if first["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        return f"unknown key {key!r}"
    where = f"{key}: " if key else ""
    if first["type"] == "value_error":  # a dataclass's own check, whose message says it all
        return where + first["msg"].removeprefix("Value error, ")
    given = json.dumps(first.get("input"), default=str)
    given = given if len(given) <= 60 else given[:57] + "..."
    return f"{where}expected {first['msg'].removeprefix('Input should be ')}, got {given}"
