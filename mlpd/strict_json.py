"""JSON as mlpd accepts it from clients: finite numbers only, bounded depth, errors for people.

Python's json module reads ``NaN``, ``Infinity`` and ``1e309`` (which overflows to
infinity) and recurses on deep nesting until it raises RecursionError. None of that
is JSON a client means, and a non-finite number stored once is answered back as
invalid JSON forever; so the API (Flask's JSON provider) and the MLflow mount parse
every request body with :func:`loads`.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class JsonError(ValueError):
    """A request body mlpd will not read; the message says why."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"the number {text[:40]} is too large (non-finite numbers are not accepted)")
    return value


def _constant(name: str) -> Any:
    raise JsonError(f"{name} is not a JSON number (non-finite numbers are not accepted)")


def depth(value: Any) -> int:
    """How deeply a decoded value nests (a scalar is 0), counted without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest


def loads(data: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a request body; raise JsonError for invalid JSON, non-finite numbers or nesting over max_depth."""
    try:
        value = json.loads(data, parse_float=_finite, parse_constant=_constant)
    except JsonError:
        raise
    except RecursionError:
        raise JsonError(f"the JSON is nested more than {max_depth} levels deep") from None
    except ValueError as exc:
        raise JsonError(f"the request body is not valid JSON ({exc})") from None
    if depth(value) > max_depth:
        raise JsonError(f"the JSON is nested more than {max_depth} levels deep")
    return value
