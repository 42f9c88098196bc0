"""Sweeps: one ordinary job per trial over a grid or random parameters, at most `parallel` running at once.

`mlpd sweep -f sweep.toml` or `mlpd sweep --param lr=0.1,0.01 --param bs=32,64 --parallel 2 --metric
val_acc --goal max -- python train.py --lr {lr} --bs {bs}`. A grid has one trial per combination; a
random sweep (`--random N --seed S`) draws N trials, each parameter from its distribution
(`uniform:A:B`, `loguniform:A:B`, `int:A:B`, or a list to choose from) with a seeded generator, so
the same seed gives the same trials. Each trial's parameters are put in its command (`{name}`) and
its environment (`MLPD_PARAM_NAME`).

All trials are submitted at once, in the `waiting` state ("waiting in sweep ...": they wait inside
the sweep, not in everyone's queue); `release` (the worker's automation pass) queues the next ones
whenever fewer than `parallel` of the sweep's trials are queued or running. The sweep has a parent
MLflow run and each trial a child run (made by the API before the trials are submitted, see
mlpd.tracking.create_sweep_runs), which the trial's own `mlflow.start_run()` resumes (MLFLOW_RUN_ID).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Mapping

from mlpd import jobs
from mlpd.errors import MlpdError
from mlpd.jobs import NOT_ENDED_STATES, TERMINAL_STATES, JobState
from mlpd.store import Store, record_event

DISTRIBUTIONS = ("uniform", "loguniform", "int")
MAX_TRIALS_WITHOUT_YES = 1000
MAX_TRIALS = 10000
MAX_PARAMS = 32
MAX_PARALLEL = 1000
GOALS = ("max", "min")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {lr}; ${HOME} is the shell's


class SweepError(MlpdError):
    """A sweep that cannot be made; the message names the parameter or field."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_field"):
        super().__init__(status, code, message)


@dataclass(frozen=True)
class Param:
    """One parameter: a list of values (grid; or the choices of a random draw) or a distribution (random only)."""

    name: str
    values: tuple[str, ...] = ()
    distribution: str = ""
    low: float = 0.0
    high: float = 0.0


def format_value(value: Any) -> str:
    """A value as it goes into a command line: shortest text that reads back the same (0.01, 32, adam)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def parse_param(name: str, value: Any) -> Param:
    """A parameter from `NAME=A,B,C` / `NAME=DIST:A:B` text (the CLI) or a list / "DIST:A:B" (a sweep file, the API)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SweepError(f"params: {str(name)[:40]!r} is not a parameter name (letters, digits and _, starting with a letter or _)")
    if isinstance(value, list):
        if not value:
            raise SweepError(f"params.{name}: empty grid: give at least one value")
        if len(value) > MAX_TRIALS:
            raise SweepError(f"params.{name}: at most {MAX_TRIALS} values")
        for v in value:
            if not isinstance(v, (str, int, float, bool)) or (isinstance(v, str) and (not v or len(v) > 1000)):
                raise SweepError(f"params.{name}: each value is a number or a non-empty string (at most 1000 characters)")
        return Param(name, tuple(format_value(v) for v in value))
    if not isinstance(value, str):
        raise SweepError(f"params.{name}: expected a list of values or a distribution such as 'loguniform:1e-4:1e-1'")
    head, sep, rest = value.partition(":")
    if sep and re.fullmatch(r"[a-z_]+", head):
        if head not in DISTRIBUTIONS:
            raise SweepError(f"params.{name}: unknown distribution {head!r}; known are {', '.join(DISTRIBUTIONS)} "
                             "(e.g. loguniform:1e-4:1e-1), or a list of values")
        low_text, sep2, high_text = rest.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            raise SweepError(f"params.{name}: {head} needs two numbers, low and high: {head}:LOW:HIGH") from None
        if not sep2 or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise SweepError(f"params.{name}: {head}:LOW:HIGH needs finite numbers with LOW < HIGH")
        if head == "loguniform" and low <= 0:
            raise SweepError(f"params.{name}: loguniform needs LOW > 0 (a logarithm of it is taken)")
        if head == "int" and (low != int(low) or high != int(high)):
            raise SweepError(f"params.{name}: int:LOW:HIGH needs whole numbers")
        return Param(name, (), head, low, high)
    values = [v.strip() for v in value.split(",")]
    if not value.strip() or any(not v for v in values):
        raise SweepError(f"params.{name}: empty grid: give values separated by commas, e.g. {name}=0.1,0.01")
    return Param(name, tuple(values))


def parse_params(items: Mapping[str, Any]) -> list[Param]:
    """Parameters in the order given; refused when there are none, too many, or one is named twice."""
    if not isinstance(items, Mapping) or not items:
        raise SweepError("params: empty grid: give at least one parameter (--param NAME=A,B)")
    if len(items) > MAX_PARAMS:
        raise SweepError(f"params: at most {MAX_PARAMS} parameters")
    return [parse_param(name, value) for name, value in items.items()]


def parse_param_flags(flags: list[str]) -> dict[str, str]:
    """`--param NAME=VALUES` flags as a mapping; a name given twice is refused."""
    out: dict[str, str] = {}
    for item in flags:
        name, sep, value = item.partition("=")
        if not sep:
            raise SweepError(f"--param: expected NAME=VALUES (e.g. lr=0.1,0.01 or lr=loguniform:1e-4:1e-1), got {item[:60]!r}")
        if name in out:
            raise SweepError(f"--param: {name} is given twice")
        out[name] = value
    return out


def trial_count(params: list[Param], random_trials: int | None) -> int:
    """How many trials: the grid's product, or N for a random sweep."""
    if random_trials is not None:
        return random_trials
    return math.prod(len(p.values) for p in params)


def plan_trials(params: list[Param], random_trials: int | None = None, seed: int | None = None) -> list[dict[str, str]]:
    """Each trial's parameter values (text), in order. A grid varies the last parameter fastest; a random
    sweep draws each parameter in the order given from random.Random(seed) (the same seed, the same trials)."""
    if random_trials is None:
        dists = [p.name for p in params if p.distribution]
        if dists:
            raise SweepError(f"params.{dists[0]}: a distribution needs a random sweep (--random N); a grid takes lists of values")
        return [dict(zip([p.name for p in params], combo, strict=True)) for combo in itertools.product(*(p.values for p in params))]
    rng = random.Random(seed)
    trials = []
    for _ in range(random_trials):
        trial = {}
        for p in params:
            if p.values:
                trial[p.name] = rng.choice(p.values)
            elif p.distribution == "uniform":
                trial[p.name] = format(rng.uniform(p.low, p.high), ".6g")
            elif p.distribution == "loguniform":
                trial[p.name] = format(math.exp(rng.uniform(math.log(p.low), math.log(p.high))), ".6g")
            else:
                trial[p.name] = str(rng.randint(int(p.low), int(p.high)))
        trials.append(trial)
    return trials


def check_placeholders(command: list[str], params: list[Param]) -> None:
    """Refuse a {placeholder} in the command that no parameter fills."""
    names = {p.name for p in params}
    for arg in command:
        for m in _PLACEHOLDER.finditer(arg):
            if m.group(1) not in names:
                raise SweepError(f"command: placeholder {{{m.group(1)}}} has no parameter; add --param {m.group(1)}=... "
                                 f"(parameters: {', '.join(sorted(names))})")


def fill(command: list[str], values: Mapping[str, str]) -> list[str]:
    """The command with each {name} replaced by the trial's value."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in command]


def param_env(values: Mapping[str, str]) -> dict[str, str]:
    """The trial's parameters as environment variables: MLPD_PARAM_LR=0.01 and MLPD_PARAMS (JSON)."""
    return {**{f"MLPD_PARAM_{k.upper()}": v for k, v in values.items()}, "MLPD_PARAMS": json.dumps(dict(values), sort_keys=True)}


@dataclass
class SweepPlan:
    """A sweep checked and expanded: what the API submits."""

    name: str
    parallel: int
    metric: str
    goal: str
    random_trials: int | None
    seed: int | None
    params: list[Param]
    trials: list[dict[str, str]]
    command: list[str]
    stop_after_steps: int | None = None  # early stopping by the median rule at this step (None: none)


def plan(definition: Mapping[str, Any], yes: bool = False) -> SweepPlan:
    """Check a sweep definition and expand its trials (pure): name, command, params, parallel, metric,
    goal, random, seed. SweepError names what is wrong; nothing is made."""
    command = definition.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise SweepError("command: expected the command as a list of strings, with {name} where a parameter goes")
    params = parse_params(definition.get("params") or {})
    check_placeholders(command, params)
    random_trials = definition.get("random")
    if random_trials is not None and (isinstance(random_trials, bool) or not isinstance(random_trials, int) or random_trials < 1):
        raise SweepError("random: expected a number of trials, at least 1")
    seed = definition.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise SweepError("seed: expected a whole number")
    if random_trials is not None and seed is None:
        seed = secrets.randbelow(2**31)  # recorded with the sweep, so its trials can be drawn again
    count = trial_count(params, random_trials)
    if count > MAX_TRIALS:
        raise SweepError(f"this sweep has {count} trials; at most {MAX_TRIALS}")
    if count > MAX_TRIALS_WITHOUT_YES and not yes:
        raise SweepError(f"this sweep has {count} trials, over {MAX_TRIALS_WITHOUT_YES}: confirm with --yes (\"yes\": true)",
                         400, "confirm_needed")
    parallel = definition.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_PARALLEL:
        raise SweepError(f"parallel: expected a whole number from 1 to {MAX_PARALLEL}")
    metric = definition.get("metric") or ""
    if not isinstance(metric, str) or len(metric) > 250:
        raise SweepError("metric: expected the name of an MLflow metric (at most 250 characters)")
    goal = definition.get("goal") or "max"
    if goal not in GOALS:
        raise SweepError(f"goal: expected max or min, got {str(goal)[:20]!r}")
    stop_after = definition.get("stop_after_steps")
    if stop_after is not None and (isinstance(stop_after, bool) or not isinstance(stop_after, int) or stop_after < 1):
        raise SweepError("stop_after_steps: expected a whole number of steps, at least 1")
    if stop_after is not None and not metric:
        raise SweepError("stop_after_steps: early stopping compares the trials' metric: give --metric")
    name = definition.get("name") or ""
    if not isinstance(name, str) or (name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name)):
        raise SweepError("name: 1-64 letters, digits, '.', '_' or '-'")
    trials = plan_trials(params, random_trials, seed)
    return SweepPlan(name, parallel, metric, goal, random_trials, seed, params, trials, command, stop_after)


# ---------------------------------------------------------------- the database

def waiting_reason(sweep_id: str, parallel: int) -> str:
    return f"waiting in sweep {sweep_id} (at most {parallel} of its trials run at once)"


def create(store: Store, owner: str, p: SweepPlan, base_spec: Mapping[str, Any], experiment: str, parent_run_id: str,
           child_run_ids: list[str], now: float | None = None, sweep_id: str | None = None) -> str:
    """Record the sweep and submit every trial as a waiting job (one transaction); returns the sweep id."""
    from mlpd.kinds.jobspec import parse_spec

    now = now if now is not None else time.time()
    sweep_id = sweep_id or secrets.token_hex(6)
    definition = {"name": p.name, "command": p.command, "params": {q.name: (list(q.values) if q.values else f"{q.distribution}:{q.low:g}:{q.high:g}")
                                                                    for q in p.params},
                  "random": p.random_trials, "seed": p.seed, "stop_after_steps": p.stop_after_steps, "spec": dict(base_spec)}
    specs = []
    for n, (values, run_id) in enumerate(zip(p.trials, child_run_ids, strict=True), start=1):
        env = {**(base_spec.get("env") or {}), **param_env(values), "MLPD_SWEEP_ID": sweep_id, "MLPD_TRIAL": str(n)}
        if run_id:
            env["MLFLOW_RUN_ID"] = run_id
        name = f"{p.name or 'sweep'}-{n}"[:64]
        spec, _ = parse_spec({**base_spec, "command": fill(p.command, values), "env": env, "name": name, "experiment": experiment})
        specs.append(spec)
    with store.write() as db:
        db.execute("""INSERT INTO sweeps (id, owner, name, definition, parallel, metric, goal, experiment, parent_run_id, created_at)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                   [sweep_id, owner, p.name, json.dumps(definition), p.parallel, p.metric, p.goal, experiment, parent_run_id, now])
        reason = waiting_reason(sweep_id, p.parallel)
        for n, (spec, values, run_id) in enumerate(zip(specs, p.trials, child_run_ids, strict=True), start=1):
            job_id = jobs.submit(store, owner, spec, [], now=now + n * 1e-6, db=db, waiting=reason)["id"]
            db.execute("INSERT INTO sweep_trials (sweep_id, trial, job_id, params, run_id) VALUES (?, ?, ?, ?, ?)",
                       [sweep_id, n, job_id, json.dumps(values), run_id])
        record_event(db, owner, "sweep.created", "sweep", sweep_id, name=p.name, trials=len(p.trials), parallel=p.parallel,
                     metric=p.metric, goal=p.goal, seed=p.seed)
    return sweep_id


def get(store: Store, sweep_id: str) -> dict[str, Any] | None:
    row = store.query_one("SELECT * FROM sweeps WHERE id = ?", [sweep_id])
    if row:
        row["definition"] = json.loads(row["definition"])
    return row


def list_sweeps(store: Store, owner: str | None) -> list[dict[str, Any]]:
    """Sweeps newest first, with counts of their trials by state."""
    rows = store.query("SELECT * FROM sweeps" + (" WHERE owner = ?" if owner else "") + " ORDER BY created_at DESC", [owner] if owner else [])
    for row in rows:
        row["definition"] = json.loads(row["definition"])
        row["states"] = {r["state"]: r["n"] for r in store.query(
            "SELECT j.state, COUNT(*) AS n FROM sweep_trials t JOIN jobs j ON j.id = t.job_id WHERE t.sweep_id = ? GROUP BY j.state", [row["id"]])}
    return rows


def trials(store: Store, sweep_id: str) -> list[dict[str, Any]]:
    """The sweep's trials in order: trial, job id, params, run id, job state and reason."""
    rows = store.query("""SELECT t.trial, t.job_id, t.params, t.run_id, j.state, j.reason, j.started_at, j.ended_at
                          FROM sweep_trials t JOIN jobs j ON j.id = t.job_id WHERE t.sweep_id = ? ORDER BY t.trial""", [sweep_id])
    for r in rows:
        r["params"] = json.loads(r["params"])
    return rows


def ranked(rows: list[dict[str, Any]], goal: str) -> list[dict[str, Any]]:
    """Trials best first by their "metric" (max: highest first; min: lowest first); those without one last, in trial order."""
    with_metric = [r for r in rows if r.get("metric") is not None]
    without = [r for r in rows if r.get("metric") is None]
    with_metric.sort(key=lambda r: (-r["metric"] if goal == "max" else r["metric"], r["trial"]))
    return with_metric + without


def release(store: Store, now: float | None = None) -> list[str]:
    """Queue waiting trials while their sweep has fewer than `parallel` queued or running; returns the ids queued."""
    now = now if now is not None else time.time()
    rows = store.query("""SELECT t.sweep_id, t.trial, t.job_id, j.state, s.parallel FROM sweep_trials t JOIN jobs j ON j.id = t.job_id
                          JOIN sweeps s ON s.id = t.sweep_id
                          WHERE s.cancelled_at IS NULL AND t.sweep_id IN (SELECT t2.sweep_id FROM sweep_trials t2 JOIN jobs j2 ON j2.id = t2.job_id
                                                                          WHERE j2.state = ?)
                          ORDER BY t.sweep_id, t.trial""", [JobState.WAITING.value])
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_sweep.setdefault(r["sweep_id"], []).append(r)
    queued = []
    for trial_rows in by_sweep.values():
        busy = sum(1 for r in trial_rows if r["state"] in NOT_ENDED_STATES and r["state"] != JobState.WAITING.value)
        room = trial_rows[0]["parallel"] - busy
        for r in trial_rows:
            if room <= 0:
                break
            if r["state"] == JobState.WAITING.value:
                if jobs.transition(store, r["job_id"], JobState.QUEUED, reason="", at=now, only_from=[JobState.WAITING]):
                    queued.append(r["job_id"])
                    room -= 1
    return queued


def cancel(store: Store, sweep: dict[str, Any], actor: str) -> list[str]:
    """Cancel the sweep's trials that have not ended (waiting and queued at once, running ones are stopped); their ids."""
    now = time.time()
    with store.write() as db:
        db.execute("UPDATE sweeps SET cancelled_at = ? WHERE id = ? AND cancelled_at IS NULL", [now, sweep["id"]])
        record_event(db, actor, "sweep.cancelled", "sweep", sweep["id"])
    cancelled = []
    for r in trials(store, sweep["id"]):
        if r["state"] not in TERMINAL_STATES:
            try:
                jobs.request_cancel(store, r["job_id"], actor, f"sweep {sweep['id']} cancelled by {actor}")
                cancelled.append(r["job_id"])
            except jobs.JobError:
                pass  # it ended meanwhile
    return cancelled


# ---------------------------------------------------------------- early stopping (the median rule)

MEDIAN_MIN_OTHERS = 2  # trials that reached the step before the rule judges one


def median_verdict(best_at_step: float, others: list[float], goal: str) -> float | None:
    """The median rule (Vizier's median stopping; Optuna's MedianPruner): the median of the other trials'
    best values up to the step when this trial's best is worse than it (stop), else None. Pure."""
    import statistics

    if len(others) < MEDIAN_MIN_OTHERS:
        return None
    median = statistics.median(others)
    worse = best_at_step < median if goal == "max" else best_at_step > median
    return median if worse else None


def stop_early(store: Store, read_history, now: float | None = None) -> list[str]:
    """Stop running trials of sweeps with stop_after_steps that the median rule judges: each trial that
    logged its metric at that step or later is compared, by its best value up to the step, with the
    median of the other trials that got there. read_history(run_ids, key, step) -> {run id: [(step,
    value)]} (mlpd.tracking.TrackingDb.metric_history). Returns the ids asked to stop."""
    rows = store.query("""SELECT s.id, s.metric, s.goal, s.definition FROM sweeps s WHERE s.cancelled_at IS NULL
                          AND json_extract(s.definition, '$.stop_after_steps') IS NOT NULL AND EXISTS (
                            SELECT 1 FROM sweep_trials t JOIN jobs j ON j.id = t.job_id WHERE t.sweep_id = s.id AND j.state = ?)""",
                       [JobState.RUNNING.value])
    stopped = []
    for sweep in rows:
        step = json.loads(sweep["definition"])["stop_after_steps"]
        trial_rows = [t for t in trials(store, sweep["id"]) if t["run_id"]]
        history = read_history([t["run_id"] for t in trial_rows], sweep["metric"], step)
        best = {}
        for t in trial_rows:
            points = history.get(t["run_id"]) or []
            if points and max(s for s, _ in points) >= step:
                values = [v for s, v in points if s <= step]
                if values:
                    best[t["job_id"]] = max(values) if sweep["goal"] == "max" else min(values)
        for t in trial_rows:
            if t["state"] != JobState.RUNNING.value or t["job_id"] not in best:
                continue
            median = median_verdict(best[t["job_id"]], [v for j, v in best.items() if j != t["job_id"]], sweep["goal"])
            if median is None:
                continue
            reason = (f"stopped early by the median rule: its best {sweep['metric']} up to step {step} ({best[t['job_id']]:g}) is "
                      f"{'below' if sweep['goal'] == 'max' else 'above'} the median of the other trials ({median:g})")
            job = jobs.get(store, t["job_id"])
            if job and job["cancel_requested_by"] is None:
                jobs.request_cancel(store, t["job_id"], "mlpd", reason)
                stopped.append(t["job_id"])
    return stopped
