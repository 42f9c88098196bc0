"""`mlpd schedule ...`, `mlpd sweep ...`, and what `run --after` and `jobs show` add (mlpd.automation)."""

from __future__ import annotations

import os
from typing import Any, Iterable

import click

from mlpd.cli.common import GPU_COUNT, logged_in_client, json_option
from mlpd.output import emit_json, table, when


def after_field(client, refs: Iterable[str]) -> dict[str, Any]:
    """{"after": [...]} for a submit, each ID (or unique prefix of one) resolved, with its :ok or :any; {} for none."""
    from mlpd.cli.jobs import resolve_job

    out = []
    for ref in refs:
        job, sep, condition = ref.partition(":")
        if sep and condition not in ("ok", "any"):
            raise click.BadParameter(f"{ref!r}: the condition after ':' is ok (it must succeed) or any (any end)", param_hint="--after")
        out.append(resolve_job(client, job) + (f":{condition}" if sep else ""))
    return {"after": out} if out else {}


def link_lines(job: dict[str, Any]) -> list[tuple[str, str]]:
    """`jobs show` lines for the jobs it waits for, its schedule and its sweep."""
    lines = []
    for need in job.get("after") or []:
        lines.append(("after", f"job {need['job']} ({need['condition']}: {'must succeed' if need['condition'] == 'ok' else 'any end'}), "
                               f"{need['state'] or 'removed'}"))
    if job.get("schedule"):
        s = job["schedule"]
        lines.append(("schedule", f"{s['name']} (of {s['owner']}), run due {when(s['due_at'])}"))
    if job.get("sweep"):
        sw = job["sweep"]
        lines.append(("sweep", f"{sw['id']} trial {sw['trial']}: " + ", ".join(f"{k}={v}" for k, v in sw["params"].items())))
    return lines


# ---------------------------------------------------------------- job specs from flags or a file

def spec_from_file(client, file: str, code_dir: str | None, no_code: bool, what: str) -> dict[str, Any]:
    """A job file (TOML, as 'mlpd submit' reads it) as a spec, its code uploaded once; `after` is refused here."""
    import tomllib

    from mlpd.cli.jobs import read_requirements, upload_code
    from mlpd.kinds.jobspec import SpecError, parse_spec

    try:
        with open(file, "rb") as fh:
            raw = tomllib.loads(fh.read().decode())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file}: cannot read it as TOML: {exc}") from exc
    if "after" in raw:
        raise click.ClickException(f"{file}: after: {what} cannot wait for other jobs; each of its runs starts on its own")
    rel = raw.pop("code_dir", None)
    here = os.path.dirname(os.path.abspath(file))
    if "requirements" in raw:
        if not isinstance(raw["requirements"], str):
            raise click.ClickException(f"{file}: requirements: expected the path of a requirements file, relative to {file}")
        raw["requirements"] = read_requirements(os.path.join(here, raw["requirements"]))
    try:
        spec, _ = parse_spec(raw)
    except SpecError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    data = {k: v for k, v in spec.to_dict().items() if v is not None and v != {}}
    directory = None if no_code else (code_dir or (os.path.join(here, rel) if isinstance(rel, str) else here))
    if directory and not os.path.isdir(directory):
        raise click.ClickException(f"{file}: code_dir: {directory} is not a directory")
    if directory:
        data["code"] = upload_code(client, directory)
    return data


def spec_from_flags(client, command: tuple[str, ...], options: dict[str, Any], code_dir: str, no_code: bool) -> dict[str, Any]:
    """A spec from `-- CMD...` and the job flags, its code (the directory) uploaded once."""
    from mlpd.cli.jobs import upload_code
    from mlpd.kinds.jobspec import SpecError, parse_spec

    env = {}
    for item in options.pop("env", ()) or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected K=V, got {item!r}", param_hint="--env")
        env[key] = value
    spec: dict[str, Any] = {"command": list(command), **{k: v for k, v in options.items() if v is not None}}
    if env:
        spec["env"] = env
    try:
        parse_spec(spec)  # refuse a bad spec before packing and uploading the code
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    if not no_code:
        spec["code"] = upload_code(client, code_dir)
    return spec


def job_options(fn):
    """The job flags a schedule or a sweep takes with `-- CMD...` (as 'mlpd run' names them)."""
    for option in reversed([
        click.option("--gpus", type=GPU_COUNT, help="How many GPUs each run gets (default 0), or a share of one GPU such as 0.5."),
        click.option("--gpu-model", help="Only GPUs of this model."),
        click.option("--image", help="Container image (default: the daemon's jobs.default_image)."),
        click.option("--cpus", type=float, help="CPU limit of each run."),
        click.option("--memory", help="Memory limit of each run, e.g. 16g."),
        click.option("--time-limit", help="Stop a run after this long, e.g. 2h."),
        click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable (repeatable)."),
        click.option("--experiment", help="MLflow experiment name."),
        click.option("--priority-class", help="The runs' priority class."),
        click.option("--code", "code_dir", default=".", show_default=True, type=click.Path(exists=True, file_okay=False),
                     help="Directory shipped once as every run's working directory."),
        click.option("--no-code", is_flag=True, help="Do not ship any code."),
    ]):
        fn = option(fn)
    return fn


JOB_FLAGS = ("gpus", "gpu_model", "image", "cpus", "memory", "time_limit", "env", "experiment", "priority_class")


# ---------------------------------------------------------------- schedules

def _state(s: dict[str, Any]) -> str:
    return "stopped" if s["stopped"] else "paused" if s["paused"] else "active"


def _params(owner: str | None) -> dict[str, str]:
    return {"owner": owner} if owner else {}


@click.group(invoke_without_command=True)
@click.option("--all", "all_users", is_flag=True, help="Everyone's schedules (admins).")
@json_option
@click.pass_context
def schedule(ctx, all_users, as_json):
    """Schedules: a job run on a cron expression, each run an ordinary job of yours.

    \b
    mlpd schedule add nightly --cron "0 3 * * *" --timezone Europe/Berlin -f job.toml
    mlpd schedule add hourly --cron "@hourly" -- python retrain.py
    mlpd schedule                 (list)     mlpd jobs --schedule nightly   (its runs)
    mlpd schedule show|pause|resume|run-now|rm NAME
    """
    if ctx.invoked_subcommand:
        return
    result = logged_in_client().get("/schedules", params={"all": 1} if all_users else {})
    if as_json:
        emit_json(result)
        return
    rows = []
    for s in result["schedules"]:
        last = s["last_run"]
        rows.append((s["name"], s["owner"], s["cron"], s["timezone"], s["overlap"], _state(s), when(s["next_run"]) if s["next_run"] else "-",
                     f"{last['outcome']} {last['job_id'] or ''} {last['state'] or ''}".strip() if last else "-"))
    table(rows, ["name", "owner", "cron", "timezone", "overlap", "state", "next run", "last run"])


@schedule.command("add")
@click.argument("name")
@click.option("--cron", "cron_text", required=True, help='Five-field cron expression, e.g. "0 3 * * *" (03:00 daily), or @hourly, @daily.')
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone the cron times are read in, e.g. Europe/Berlin.")
@click.option("--overlap", type=click.Choice(["skip", "queue", "replace"]), default="skip", show_default=True,
              help="When the previous run still runs at the next due time: skip that time (recorded), queue the run after it, "
                   "or replace it (cancel it).")
@click.option("--catch-up", "catch_up", type=click.Choice(["one", "none"]), default="one", show_default=True,
              help="Due times missed while the daemon was down: one run at start (however many were missed), or none.")
@click.option("-f", "--file", "file", type=click.Path(exists=True, dir_okay=False), help="A job file (TOML, as 'mlpd submit' takes).")
@job_options
@json_option
@click.argument("command", nargs=-1)
def schedule_add(name, cron_text, timezone, overlap, catch_up, file, code_dir, no_code, as_json, command, **flags):
    """Make a schedule NAME running a job file (-f job.toml) or a command (-- CMD...): the code is shipped once, reused by every run."""
    if bool(file) == bool(command):
        raise click.UsageError("give a job file (-f job.toml) or a command after -- (mlpd schedule add NAME --cron ... -- python train.py)")
    client = logged_in_client()
    if file:
        given = [f"--{k.replace('_', '-')}" for k in JOB_FLAGS if flags.get(k) not in (None, ())]
        if given:
            raise click.UsageError(f"{', '.join(given)}: with -f the job file says it; put it there")
        spec = spec_from_file(client, file, None if code_dir == "." else code_dir, no_code, "a schedule")
    else:
        spec = spec_from_flags(client, command, {k: flags.get(k) for k in JOB_FLAGS}, code_dir, no_code)
    result = client.post("/schedules", {"name": name, "cron": cron_text, "timezone": timezone, "spec": spec, "overlap": overlap,
                                        "catch_up": catch_up})
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result)
        return
    s = result["schedule"]
    overlap_text = {"skip": "skip (the default: a due time while the previous run still runs is skipped, and recorded as skipped)",
                    "queue": "queue (a run due while the previous one runs waits for it)",
                    "replace": "replace (a run due while the previous one runs cancels it)"}[s["overlap"]]
    click.echo(f"schedule {s['name']}: {s['cron']} ({s['timezone']}); next run {when(s['next_run'])}")
    click.echo(f"overlap: {overlap_text}")
    click.echo(f"its runs: mlpd jobs --schedule {s['name']}")


@schedule.command("show")
@click.argument("name")
@click.option("--owner", help="Another member's schedule (admins).")
@json_option
def schedule_show(name, owner, as_json):
    """A schedule and its latest runs (fired, skipped, refused, missed)."""
    result = logged_in_client().get(f"/schedules/{name}", params=_params(owner))
    if as_json:
        emit_json(result)
        return
    s = result["schedule"]
    for key, value in (("schedule", f"{s['name']} (of {s['owner']})"), ("cron", f"{s['cron']} ({s['timezone']})"), ("state", s["stopped"] or _state(s)),
                       ("next run", when(s["next_run"]) if s["next_run"] else "-"), ("overlap", s["overlap"]), ("catch-up", s["catch_up"]),
                       ("command", " ".join(s["command"])), ("code", (s["spec"].get("code") or "-")[:12])):
        click.echo(f"{key + ':':<10} {value}")
    click.echo("runs:")
    table([(when(r["due_at"]), r["outcome"], r["job_id"] or "-", r["job_state"] or "-", r["detail"] or (r["job_reason"] or "")[:60])
           for r in s["runs"]], ["due", "outcome", "job", "state", "detail"])


def _simple(action: str, help_text: str):
    @click.argument("name")
    @click.option("--owner", help="Another member's schedule (admins).")
    @json_option
    def command(name, owner, as_json):
        client = logged_in_client()
        if action == "rm":
            result = client.request("DELETE", f"/schedules/{name}", params=_params(owner)).json()
        else:
            result = client.request("POST", f"/schedules/{name}/{action}", params=_params(owner)).json()
        if as_json:
            emit_json(result)
        elif action == "rm":
            click.echo(f"schedule {name} removed (its runs' jobs stay)")
        elif action == "run-now":
            click.echo(f"schedule {name}: submitted job {result['run']['job_id']}", err=True)
            click.echo(result["run"]["job_id"])
        else:
            s = result["schedule"]
            click.echo(f"schedule {name} {'paused' if s['paused'] else 'resumed: next run ' + when(s['next_run'])}")

    command.__doc__ = help_text
    return schedule.command(action)(command)


_simple("pause", "Pause a schedule: nothing fires until it is resumed.")
_simple("resume", "Resume a schedule from the next due time (what fell due while paused is not caught up).")
_simple("run-now", "Submit one run of the schedule now (outside its cron times; the overlap rule does not apply).")
_simple("rm", "Remove a schedule (its runs' jobs stay).")


# ---------------------------------------------------------------- sweeps

class SweepGroup(click.Group):
    """`mlpd sweep [options] -- CMD` starts a sweep (the `start` subcommand); `mlpd sweep show|cancel|list ...` the rest."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@click.group(cls=SweepGroup)
def sweep():
    """Sweeps: one job per trial over a grid or random parameters, at most --parallel running at once.

    \b
    mlpd sweep [start] --param lr=0.1,0.01 --param bs=32,64 --parallel 2 --metric val_acc --goal max -- python train.py --lr {lr} --bs {bs}
    mlpd sweep --random 20 --seed 1 --param lr=loguniform:1e-4:1e-1 --param bs=32,64 -- python train.py --lr {lr} --bs {bs}
    mlpd sweep -f sweep.toml
    mlpd sweep show ID   (trials, best first by the metric, read from MLflow)
    mlpd sweep cancel ID / mlpd sweep list
    """


@sweep.command("start")
@click.option("-f", "--file", "file", type=click.Path(exists=True, dir_okay=False), help="A sweep file (TOML): command, params, parallel, "
              "metric, goal, random, seed, name, and a [job] table with the rest of each trial's job (as a job file).")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUES",
              help="A parameter (repeatable): a grid's values (lr=0.1,0.01), or for --random a distribution (lr=loguniform:1e-4:1e-1, "
                   "uniform:A:B, int:A:B) or values to choose from.")
@click.option("--random", "random_trials", type=int, help="Draw this many trials at random instead of the grid.")
@click.option("--seed", type=int, help="The random draw's seed (the same seed, the same trials).")
@click.option("--parallel", type=int, help="At most this many trials queued or running at once (default 1); the rest wait in the sweep.")
@click.option("--metric", help="The MLflow metric that ranks the trials (sweep show).")
@click.option("--goal", type=click.Choice(["max", "min"]), help="Whether a higher or a lower metric is better (default max).")
@click.option("--name", help="A name for the sweep.")
@click.option("--yes", is_flag=True, help="Confirm a sweep of more than 1,000 trials.")
@click.option("--stop-after-steps", "stop_after_steps", type=int,
              help="Early stopping by the median rule: a running trial whose best --metric up to step K is worse than the median "
                   "of the other trials' there is stopped.")
@job_options
@json_option
@click.argument("command", nargs=-1)
def sweep_start(file, params, random_trials, seed, parallel, metric, goal, name, yes, stop_after_steps, code_dir, no_code, as_json, command,
                **flags):
    """Start a sweep: -f sweep.toml, or --param ... -- CMD with {name} where each value goes."""
    import tomllib

    from mlpd.automation import sweeps
    from mlpd.automation.sweeps import SweepError

    definition: dict[str, Any] = {}
    job: dict[str, Any] = {}
    here = "."
    if file:
        try:
            with open(file, "rb") as fh:
                definition = tomllib.loads(fh.read().decode())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise click.ClickException(f"{file}: cannot read it as TOML: {exc}") from exc
        job = definition.pop("job", {})
        if not isinstance(job, dict):
            raise click.ClickException(f"{file}: job: expected a table of job settings ([job])")
        here = os.path.dirname(os.path.abspath(file))
    if command:
        definition["command"] = list(command)
    try:
        if params:
            definition["params"] = {**(definition.get("params") or {}), **sweeps.parse_param_flags(list(params))}
        for key, value in (("random", random_trials), ("seed", seed), ("parallel", parallel), ("metric", metric), ("goal", goal), ("name", name),
                           ("stop_after_steps", stop_after_steps)):
            if value is not None:
                definition[key] = value
        if "command" not in definition:
            raise click.UsageError("give the command after -- (mlpd sweep --param lr=0.1,0.01 -- python train.py --lr {lr}) or -f sweep.toml")
        p = sweeps.plan(definition, yes=yes)  # every refusal before any code is packed or sent
    except SweepError as exc:
        raise click.ClickException(exc.message) from exc
    client = logged_in_client()
    env = {}
    for item in flags.pop("env", ()) or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected K=V, got {item!r}", param_hint="--env")
        env[key] = value
    spec = {**job, **{k: v for k, v in flags.items() if k in JOB_FLAGS and v is not None}}
    if env:
        spec["env"] = {**(spec.get("env") or {}), **env}
    rel = spec.pop("code_dir", None)
    if isinstance(spec.get("requirements"), str) and file:
        from mlpd.cli.jobs import read_requirements

        spec["requirements"] = read_requirements(os.path.join(here, spec["requirements"]))
    if not no_code:
        from mlpd.cli.jobs import upload_code

        directory = os.path.join(here, rel) if isinstance(rel, str) else (here if file and code_dir == "." else code_dir)
        if not os.path.isdir(directory):
            raise click.ClickException(f"code_dir: {directory} is not a directory")
        spec["code"] = upload_code(client, directory)
    body = {k: v for k, v in definition.items() if k in ("command", "params", "random", "seed", "parallel", "metric", "goal", "name",
                                                         "stop_after_steps")}
    result = client.post("/sweeps", {**body, "spec": spec, **({"yes": True} if yes else {})})
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result)
        return
    s = result["sweep"]
    kind = f"random, seed {s['seed']}" if s["random"] else "grid"
    click.echo(f"sweep {s['id']}: {result['trials']} trials ({kind}), at most {s['parallel']} at once; "
               f"MLflow parent run {s['parent_run_id']} in {s['experiment']}", err=True)
    click.echo(f"follow it with: mlpd sweep show {s['id']}", err=True)
    click.echo(s["id"])
    del p


@sweep.command("show")
@click.argument("sweep_id")
@json_option
def sweep_show(sweep_id, as_json):
    """A sweep's trials, best first by its metric (read from MLflow); the best named with its metric."""
    result = logged_in_client().get(f"/sweeps/{sweep_id}")
    if as_json:
        emit_json(result)
        return
    s = result["sweep"]
    states = ", ".join(f"{n} {state}" for state, n in sorted(s["states"].items()))
    click.echo(f"sweep {s['id']}{' (' + s['name'] + ')' if s['name'] else ''} of {s['owner']}: {states}; at most {s['parallel']} at once"
               + (f"; cancelled {when(s['cancelled_at'])}" if s["cancelled_at"] else ""))
    click.echo(f"command: {' '.join(s['command'])}")
    metric = s["metric"] or "metric"
    if s["best"]:
        b = s["best"]
        click.echo(f"best: trial {b['trial']} (job {b['job_id']}) {metric}={b['metric']:g}  "
                   + " ".join(f"{k}={v}" for k, v in b["params"].items()))
    elif s["metric"]:
        click.echo(f"best: none yet (no trial has logged {s['metric']})")
    names = list(s["params"])
    table([(t["trial"], t["job_id"], t["state"], "-" if t["metric"] is None else f"{t['metric']:g}", *(t["params"].get(n, "") for n in names))
           for t in s["trials"]], ["trial", "job", "state", metric, *names])


@sweep.command("cancel")
@click.argument("sweep_id")
@json_option
def sweep_cancel(sweep_id, as_json):
    """Cancel a sweep: its trials that have not ended are cancelled (running ones are stopped)."""
    result = logged_in_client().post(f"/sweeps/{sweep_id}/cancel")
    if as_json:
        emit_json(result)
        return
    click.echo(f"sweep {sweep_id}: cancelled {len(result['cancelled'])} trials")


@sweep.command("list")
@click.option("--all", "all_users", is_flag=True, help="Everyone's sweeps (admins).")
@json_option
def sweep_list(all_users, as_json):
    """Your sweeps, newest first, with their trials' states."""
    result = logged_in_client().get("/sweeps", params={"all": 1} if all_users else {})
    if as_json:
        emit_json(result)
        return
    table([(s["id"], s["name"] or "-", s["owner"], s["parallel"], s["metric"] or "-",
            ", ".join(f"{n} {state}" for state, n in sorted(s["states"].items())), when(s["created_at"])) for s in result["sweeps"]],
          ["id", "name", "owner", "parallel", "metric", "trials", "created"])
