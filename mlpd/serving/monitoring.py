"""Monitoring of what a deployment is asked and answers, per deployment and version (revision).

For each request through the daemon's endpoint (``/serve/NAME/invocations`` on the daemon's own
address: :mod:`mlpd.web.serving_proxy`), the web worker reads the numeric input features out of the
JSON body (MLflow's ``dataframe_split``, ``dataframe_records``, ``inputs`` and ``instances``
shapes) and the predictions out of the answer, and keeps them in memory; every few seconds it adds
them to the state database (one transaction, like the request counts):

- **Predictions**: numeric ones in a uniform sample (reservoir) of ``SAMPLE_CAP`` values per
  revision, from which the quantiles are read; labels (strings, booleans) as counts per label.
- **Drift**: the first ``serving.monitor_reference`` values of each numeric feature of a revision are
  its reference. Once that many arrived, they are reduced to ``BINS`` bins (the reference's deciles)
  and their counts, and the values themselves deleted; every later value is counted into those bins.
  The population stability index of the later values against the reference is
  ``sum((a - e) * ln(a / e))`` over the bins, with a and e the shares of each (see :func:`psi`).

Request bodies are never stored: only single numbers of a feature until its reference is complete,
and then bin counts. The HAProxy serving proxy (serving.listen) does not pass bodies to Python, so
requests that go through it are not monitored (docs/serving-monitoring.md).

The pure functions (parsing, binning, PSI, quantiles, reservoir) take plain data; :func:`add` and
:func:`summary` are the store's edge.
"""

from __future__ import annotations

import bisect
import json
import math
import random
import time
from typing import Any

BINS = 10
SAMPLE_CAP = 2000  # predictions kept per revision for their quantiles
MAX_FEATURES = 64  # numeric input columns watched per revision (the first ones, in the order they appear)
MAX_VALUES_PER_REQUEST = 10_000  # values of one feature read from one request (a larger batch is subsampled)
MAX_LABELS = 50  # distinct labels counted per revision; the rest count as OTHER
OTHER = "(other)"
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PSI_WATCH, PSI_DRIFT = 0.1, 0.25  # the usual reading: < 0.1 stable, 0.1-0.25 some shift, > 0.25 drift
EPSILON = 1e-4  # the share given to an empty bin, so that ln(a/e) stays finite


# ------------------------------------------------------------------ pure: the math
def bin_edges(reference: list[float], bins: int = BINS) -> list[float]:
    """The inner edges that cut the reference into `bins` bins of about equal count (its quantiles),
    without repeats (a feature with few distinct values gets fewer bins)."""
    values = sorted(v for v in reference if math.isfinite(v))
    if not values:
        return []
    edges: list[float] = []
    for i in range(1, bins):
        edge = values[min(len(values) - 1, (i * len(values)) // bins)]
        if (not edges or edge > edges[-1]) and edge > values[0]:
            edges.append(edge)
    return edges


def bin_counts(values: list[float], edges: list[float]) -> list[int]:
    """How many values fall in each of the len(edges) + 1 bins (a value equal to an edge goes above it)."""
    counts = [0] * (len(edges) + 1)
    for v in values:
        if math.isfinite(v):
            counts[bisect.bisect_right(edges, v)] += 1
    return counts


def psi(expected: list[int], actual: list[int]) -> float | None:
    """The population stability index of `actual` bin counts against `expected` (the reference's):
    sum over bins of (a - e) * ln(a / e), a and e each bin's share, an empty bin counted as EPSILON.
    None when either side has no values."""
    e_total, a_total = sum(expected), sum(actual)
    if not e_total or not a_total:
        return None
    total = 0.0
    for e_count, a_count in zip(expected, actual, strict=True):
        e = max(e_count / e_total, EPSILON)
        a = max(a_count / a_total, EPSILON)
        total += (a - e) * math.log(a / e)
    return total


def psi_level(value: float | None) -> str:
    """'stable', 'shift' or 'drift' by the usual thresholds ('' without a value)."""
    if value is None:
        return ""
    return "drift" if value > PSI_DRIFT else "shift" if value >= PSI_WATCH else "stable"


def quantiles(sample: list[float], qs: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """Quantiles of a sample by linear interpolation, keyed 'p5', 'p50', ...; empty without values."""
    values = sorted(sample)
    if not values:
        return {}
    out = {}
    for q in qs:
        pos = q * (len(values) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(values) - 1)
        out[f"p{round(q * 100):d}"] = values[lo] + (values[hi] - values[lo]) * (pos - lo)
    return out


def reservoir_add(sample: list[float], seen: int, values: list[float], cap: int = SAMPLE_CAP,
                  rng: random.Random | None = None) -> int:
    """Add values to a uniform sample of at most `cap` of all `seen` so far (in place); the new count seen."""
    rng = rng or random.Random()
    for v in values:
        seen += 1
        if len(sample) < cap:
            sample.append(v)
        else:
            j = rng.randrange(seen)
            if j < cap:
                sample[j] = v
    return seen


# ------------------------------------------------------------------ pure: reading requests and answers
def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _thin(values: list[float]) -> list[float]:
    if len(values) <= MAX_VALUES_PER_REQUEST:
        return values
    step = len(values) / MAX_VALUES_PER_REQUEST
    return [values[int(i * step)] for i in range(MAX_VALUES_PER_REQUEST)]


def numeric_features(body: Any) -> dict[str, list[float]]:
    """{column: its numeric values} of an /invocations request body (parsed JSON) in one of MLflow's
    shapes; columns without a name (an unnamed tensor) are called 0, 1, ...; non-numbers are skipped."""
    columns: dict[str, list[float]] = {}

    def put(name: Any, value: Any) -> None:
        key = str(name)[:100]
        number = _number(value)
        if number is None or (key not in columns and len(columns) >= MAX_FEATURES):
            return
        columns.setdefault(key, []).append(number)

    if not isinstance(body, dict):
        return {}
    split = body.get("dataframe_split")
    records = body.get("dataframe_records")
    inputs = body.get("inputs", body.get("instances"))
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        names = split.get("columns") if isinstance(split.get("columns"), list) else None
        for row in split["data"]:
            if isinstance(row, list):
                for i, value in enumerate(row):
                    put(names[i] if names and i < len(names) else i, value)
    elif isinstance(records, list) or isinstance(inputs, list):
        rows: list[Any] = records if isinstance(records, list) else inputs or []
        for row in rows:
            if isinstance(row, dict):
                for name, value in row.items():
                    put(name, value)
            elif isinstance(row, list):
                for i, value in enumerate(row):
                    put(i, value)
            else:
                put(0, row)
    elif isinstance(inputs, dict):
        for name, values in inputs.items():
            for value in values if isinstance(values, list) else [values]:
                put(name, value)
    return {k: _thin(v) for k, v in columns.items()}


def predictions_of(answer: Any) -> tuple[list[float], list[str]]:
    """(numeric predictions, labels) of a scoring server's answer ({"predictions": [...]}): numbers
    are numeric, strings and booleans labels; a row that is a list or dict gives its first value."""
    preds = answer.get("predictions") if isinstance(answer, dict) else answer
    if isinstance(preds, dict):  # a frame answered column-wise: its first column
        first: Any = next(iter(preds.values()), [])
        preds = first if isinstance(first, list) else [first]
    if not isinstance(preds, list):
        return [], []
    numbers: list[float] = []
    labels: list[str] = []
    for p in preds[:MAX_VALUES_PER_REQUEST]:
        if isinstance(p, list):
            p = p[0] if p else None
        elif isinstance(p, dict):
            p = next(iter(p.values()), None)
        if isinstance(p, (str, bool)):
            labels.append(str(p)[:100])
        elif (n := _number(p)) is not None:
            numbers.append(n)
    return numbers, labels


class Observed:
    """What one web worker saw of one revision since its last flush (plain data)."""

    def __init__(self) -> None:
        self.features: dict[str, list[float]] = {}
        self.predictions: list[float] = []
        self.labels: dict[str, int] = {}
        self.requests = 0

    def add(self, request_body: Any, answer: Any) -> None:
        """Count one answered request (both parsed JSON)."""
        self.requests += 1
        for name, values in numeric_features(request_body).items():
            kept = self.features.setdefault(name, [])
            if len(kept) < 4 * MAX_VALUES_PER_REQUEST:  # between flushes: a cap on memory, not on what a request holds
                kept.extend(values)
        numbers, labels = predictions_of(answer)
        if len(self.predictions) < 4 * MAX_VALUES_PER_REQUEST:
            self.predictions.extend(numbers)
        for label in labels:
            self.labels[label] = self.labels.get(label, 0) + 1


def merge_feature(state: dict[str, Any] | None, values: list[float], reference_size: int) -> dict[str, Any]:
    """A feature's stored state after `values` arrived: {"reference": [values] (while collecting)} or
    {"edges", "expected", "actual"} (bin counts of the reference and of everything after it)."""
    state = dict(state or {"reference": []})
    if "edges" not in state:
        reference = list(state.get("reference") or [])
        room = max(0, reference_size - len(reference))
        reference.extend(values[:room])
        values = values[room:]
        if len(reference) < reference_size:
            return {"reference": reference}
        edges = bin_edges(reference)
        state = {"edges": edges, "expected": bin_counts(reference, edges), "actual": [0] * (len(edges) + 1)}
    state["actual"] = [a + b for a, b in zip(state["actual"], bin_counts(values, state["edges"]), strict=True)]
    return state


# ------------------------------------------------------------------ the store's edge
def add(store, observed: dict[tuple[str, str], Observed], reference_size: int, now: float | None = None) -> None:
    """Add one worker's observations ({(deployment, revision): Observed}) to the revisions' monitor rows,
    in one transaction (rows of a deployment removed meanwhile are not written)."""
    now = time.time() if now is None else now
    rng = random.Random()
    with store.write() as db:
        for (dep_id, rev_id), seen in observed.items():
            if not db.execute("SELECT 1 FROM deployments WHERE id = ?", [dep_id]).fetchone():
                continue
            row = db.execute("SELECT data FROM deployment_monitor WHERE deployment = ? AND revision = ?", [dep_id, rev_id]).fetchone()
            data: dict[str, Any] = json.loads(row[0]) if row else {"requests": 0, "features": {}, "sample": [], "seen": 0, "labels": {}}
            data["requests"] += seen.requests
            for name, values in seen.features.items():
                if name in data["features"] or len(data["features"]) < MAX_FEATURES:
                    data["features"][name] = merge_feature(data["features"].get(name), values, reference_size)
            data["seen"] = reservoir_add(data["sample"], data["seen"], seen.predictions, rng=rng)
            for label, count in seen.labels.items():
                key = label if label in data["labels"] or len(data["labels"]) < MAX_LABELS else OTHER
                data["labels"][key] = data["labels"].get(key, 0) + count
            db.execute("""INSERT INTO deployment_monitor (deployment, revision, data, updated_at) VALUES (?, ?, ?, ?)
                          ON CONFLICT (deployment, revision) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at""",
                       [dep_id, rev_id, json.dumps(data, separators=(",", ":")), now])


def summary(store, dep_id: str | None = None) -> list[dict[str, Any]]:
    """Per deployment and revision: requests monitored, the predictions' quantiles and label counts,
    and each numeric feature's drift ({"feature", "psi", "level", "reference", "since"}), or how far its
    reference has come while it is being collected."""
    where, params = ("WHERE m.deployment = ?", [dep_id]) if dep_id else ("", [])
    rows = store.query(f"""SELECT m.data, d.name, v.seq, v.model_version FROM deployment_monitor m
                           JOIN deployments d ON d.id = m.deployment LEFT JOIN deployment_revisions v ON v.id = m.revision
                           {where} ORDER BY d.name, v.seq""", params)
    out = []
    for r in rows:
        data = json.loads(r["data"])
        features = []
        for name, state in data["features"].items():
            if "edges" in state:
                value = psi(state["expected"], state["actual"])
                features.append({"feature": name, "psi": None if value is None else round(value, 4), "level": psi_level(value),
                                 "reference": sum(state["expected"]), "since": sum(state["actual"])})
            else:
                features.append({"feature": name, "psi": None, "level": "", "reference": len(state.get("reference") or []), "since": 0})
        out.append({"deployment": r["name"], "revision": r["seq"], "version": r["model_version"], "requests": data["requests"],
                    "predictions": {"count": data["seen"], "quantiles": {k: round(v, 6) for k, v in quantiles(data["sample"]).items()},
                                    "labels": dict(sorted(data["labels"].items(), key=lambda kv: -kv[1]))},
                    "features": features})
    return out
