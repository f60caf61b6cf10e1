"""Field readers for OpenAI request bodies: each returns the value (or its default when absent or
null) or raises a 400 naming the field."""

from __future__ import annotations

import math
from typing import Any

from .errors import invalid


def type_name(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def int_field(body: dict[str, Any], name: str, lo: int | None = None, hi: int | None = None
         ) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int:
        raise invalid(f"'{name}' must be an integer, got {type_name(value)} {value!r}", name)
    if lo is not None and value < lo:
        raise invalid(f"'{name}' must be >= {lo}, got {value}", name)
    if hi is not None and value > hi:
        raise invalid(f"'{name}' must be <= {hi}, got {value}", name)
    return value


def num_field(body: dict[str, Any], name: str, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise invalid(f"'{name}' must be a number, got {type_name(value)} {value!r}", name)
    value = float(value)
    if not math.isfinite(value):
        raise invalid(f"'{name}' must be a finite number, got {value}", name)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise invalid(f"'{name}' must be {'>' if lo_open else '>='} {lo}, got {value}", name)
    if hi is not None and value > hi:
        raise invalid(f"'{name}' must be <= {hi}, got {value}", name)
    return value


def bool_field(body: dict[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not bool:
        raise invalid(f"'{name}' must be a boolean, got {type_name(value)} {value!r}", name)
    return value
