"""Quality gates: conditions on the source run of a model version that a deployment requires before it serves it.

A gate is ``metrics.NAME OP NUMBER`` or ``tags.NAME OP VALUE`` (``mlpd serve ... --gate
"metrics.accuracy>=0.9"``, several allowed, all must hold), with OP one of ``>= <= > < == !=`` (a
tag compares as text, with == and != only). A version whose run lacks the metric or tag fails the
gate. :func:`failures` says why a version fails, as people read it: ``metrics.accuracy 0.52 < 0.9``.
Pure: the run's metrics and tags come from the caller (mlpd.serving.models reads them from MLflow).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mlpd.errors import MlpdError

MAX_GATES = 16
GATE = re.compile(r"\s*(metrics|tags)\.([A-Za-z0-9_.\-/ ]{1,250}?)\s*(>=|<=|==|!=|>|<)\s*(.{1,250}?)\s*")
NEGATION = {">=": "<", "<=": ">", ">": "<=", "<": ">=", "==": "!=", "!=": "=="}


class GateError(MlpdError):
    """A gate that cannot be read."""


@dataclass(frozen=True)
class Gate:
    kind: str  # "metrics" or "tags"
    name: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}.{self.name}{self.op}{self.value}"


def parse_gate(text: str) -> Gate:
    """A gate from its text; GateError (400) saying the form when it is not one."""
    match = GATE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise GateError(400, "invalid_field", f"gate {str(text)[:80]!r}: expected metrics.NAME OP NUMBER or tags.NAME OP VALUE, "
                                              "OP one of >= <= > < == != (e.g. \"metrics.accuracy>=0.9\")")
    kind, name, op, value = match.groups()
    if kind == "metrics":
        try:
            number = float(value)
        except ValueError:
            raise GateError(400, "invalid_field", f"gate {text!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise GateError(400, "invalid_field", f"gate {text!r}: expected a finite number")
    elif op not in ("==", "!="):
        raise GateError(400, "invalid_field", f"gate {text!r}: a tag compares with == or != only")
    return Gate(kind, name, op, value)


def parse_gates(texts) -> list[str]:
    """Validated gates, as their normal text (what a deployment stores)."""
    if texts is None:
        return []
    if not isinstance(texts, list) or len(texts) > MAX_GATES:
        raise GateError(400, "invalid_field", f"gates: expected a list of at most {MAX_GATES} conditions")
    return [str(parse_gate(t)) for t in texts]


def _holds(actual, op: str, wanted) -> bool:
    return {">=": actual >= wanted, "<=": actual <= wanted, ">": actual > wanted, "<": actual < wanted,
            "==": actual == wanted, "!=": actual != wanted}[op]


def failures(gates: list[str], metrics: dict[str, float], tags: dict[str, str]) -> list[str]:
    """Why a run fails the gates, one phrase per failed gate (empty: it passes): 'metrics.accuracy 0.52 < 0.9'."""
    out = []
    for text in gates:
        gate = parse_gate(text)
        if gate.kind == "metrics":
            actual = metrics.get(gate.name)
            if actual is None:
                out.append(f"metrics.{gate.name} not logged (gate {gate})")
            elif not _holds(float(actual), gate.op, float(gate.value)):
                out.append(f"metrics.{gate.name} {actual:g} {NEGATION[gate.op]} {float(gate.value):g}")
        else:
            tag = tags.get(gate.name)
            if tag is None:
                out.append(f"tags.{gate.name} not set (gate {gate})")
            elif not _holds(tag, gate.op, gate.value):
                out.append(f"tags.{gate.name} {tag!r} {NEGATION[gate.op]} {gate.value!r}")
    return out
