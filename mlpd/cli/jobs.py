"""`mlpd run`, `submit`, `jobs`, `logs`, `cancel`, `gpus`, `images`."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any

import click

from mlpd.cli.common import GPU_COUNT, gpus_wanted, logged_in_client, json_option
from mlpd.cli.job_end import EXIT_STATUS_TABLE
from mlpd.output import emit_json, plural, table, when


def upload_code(client, directory: str) -> str:
    """Pack a directory and upload it unless the daemon already has the same archive; return its digest."""
    from mlpd.client import ClientError
    from mlpd.kinds.codeship import CodeArchiveError, pack_directory

    bar = None

    def packing(done: int, total: int) -> None:
        # A big tree takes seconds to pack before anything is sent: say so, on a terminal.
        nonlocal bar
        if bar is None and total > 16 * 1024 * 1024 and sys.stderr.isatty():
            bar = click.progressbar(length=total, label="packing code", file=sys.stderr)
            bar.__enter__()
        if bar is not None:
            bar.update(done - bar.pos)

    try:
        packed = pack_directory(directory, progress=packing)
    except CodeArchiveError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    try:
        try:
            client.get(f"/code/{packed.digest}")
            click.echo(f"code: {plural(packed.files, 'file')}, {plural(packed.size, 'byte')} (already on the daemon)", err=True)
            return packed.digest
        except ClientError as exc:
            if exc.status != 404:
                raise
        with open(packed.path, "rb") as fh:
            if packed.size > 1024 * 1024 and sys.stderr.isatty():
                with click.progressbar(length=packed.size, label="uploading code", file=sys.stderr) as bar:
                    def chunks():
                        while chunk := fh.read(256 * 1024):
                            bar.update(len(chunk))
                            yield chunk
                    client.request("PUT", f"/code/{packed.digest}", data=chunks(), headers={"Content-Type": "application/gzip"}, timeout=600)
            else:
                client.request("PUT", f"/code/{packed.digest}", data=fh, headers={"Content-Type": "application/gzip", "Content-Length": str(packed.size)}, timeout=600)
        click.echo(f"code: {plural(packed.files, 'file')}, {plural(packed.size, 'byte')} uploaded", err=True)
        return packed.digest
    finally:
        os.unlink(packed.path)


def read_requirements(path: str) -> str:
    """A requirements file's text, for the job spec (the daemon builds the environment)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read it as a requirements file ({exc})") from exc


def _submit(spec: dict[str, Any], as_json: bool) -> dict[str, Any]:
    result = logged_in_client().post("/jobs", spec)
    job = result["job"]
    for warning in result.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"submitted job {job['id']} ({job['state']}); follow it with: mlpd logs -f {job['id']}", err=True)
        click.echo(job["id"])
    return job


@click.command(context_settings={"ignore_unknown_options": False})
@click.option("--gpus", type=GPU_COUNT, default=0, show_default=True,
              help="How many GPUs, or a share of one GPU such as 0.5 (time-sliced with other small work; docs/gpu-sharing.md).")
@click.option("--gpu-share", is_flag=True, help="Half of one GPU, shared with other small work (as --gpus 0.5).")
@click.option("--gpu-model", help="Only GPUs of this model (as 'mlpd gpus' names it).")
@click.option("--image", help="Container image (default: the daemon's jobs.default_image).")
@click.option("--cpus", type=float, help="CPU limit, e.g. 4 or 0.5.")
@click.option("--memory", help="Memory limit, e.g. 16g.")
@click.option("--shm", help="Size of /dev/shm (shared memory for DataLoader workers and NCCL), e.g. 2g; within the memory "
                            "limit (default: the daemon's jobs.shm_size, half the memory limit).")
@click.option("--time-limit", help="Stop the job after this long, e.g. 2h or 30m.")
@click.option("--env", "env", multiple=True, metavar="K=V", help="Environment variable (repeatable).")
@click.option("--name", help="A name for the job.")
@click.option("--priority", type=int, help="Higher runs first (-100..100).")
@click.option("--priority-class", help="Its class, e.g. production or preemptible (the daemon's scheduler.priority_classes; "
                                       "preemptible work may be stopped for higher classes and runs again with MLPD_ATTEMPT=2, ...).")
@click.option("--experiment", help="MLflow experiment name.")
@click.option("--on", "on", type=click.Choice(["local", "slurm"]), help="Where it runs: this host, or the Slurm cluster the daemon "
                                                                      "submits to (default: the daemon's slurm.default_on).")
@click.option("--code", "code_dir", default=".", show_default=True, type=click.Path(exists=True, file_okay=False), help="Directory to ship as the job's working directory.")
@click.option("--no-code", is_flag=True, help="Do not ship any code.")
@click.option("--requirements", "requirements_file", type=click.Path(exists=True, dir_okay=False),
              help="A requirements.txt to install over the image (built once per image and file, then reused). "
                   "Default: requirements.txt in the code directory, if there is one.")
@click.option("--no-requirements", is_flag=True, help="Do not use the code directory's requirements.txt.")
@click.option("-f", "--follow", is_flag=True, help="Then stream the job's output until it ends; exits with how it ended (see 'mlpd wait --help').")
@click.option("--after", "after", multiple=True, metavar="ID[:ok|:any]",
              help="Wait for that job to end first (repeatable): with ok (the default) it must succeed, or this job is cancelled; "
                   "with any, any end will do. The job waits outside the queue ('waiting for job ID').")
@click.option("--param", "params", multiple=True, metavar="K=V",
              help="For a notebook (mlpd run NB.ipynb): a value for its 'parameters' cell (repeatable); the executed notebook is kept in the outputs.")
@json_option
@click.argument("command", nargs=-1, required=True)
def run(gpus, gpu_share, gpu_model, image, cpus, memory, shm, time_limit, env, name, priority, priority_class, experiment, on, code_dir,
        no_code, requirements_file, no_requirements, follow, after, params, as_json, command):
    """Run COMMAND as a job, with the current directory as its code: mlpd run --gpus 1 -- python train.py

    A notebook runs headless with papermill in the workspace image: mlpd run train.ipynb --param epochs=2
    (the executed notebook is kept in the job's outputs)."""
    if command and command[0].endswith(".ipynb"):
        command = notebook_command(command[0], params, command[1:])
        image = image or NOTEBOOK_IMAGE
    elif params:
        raise click.UsageError("--param sets a notebook's parameters: mlpd run NOTEBOOK.ipynb --param K=V")
    env_map = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected K=V, got {item!r}", param_hint="--env")
        env_map[key] = value
    spec: dict[str, Any] = {"command": list(command), "gpus": gpus_wanted(gpus, gpu_share)}
    for key, value in (("gpu_model", gpu_model), ("image", image), ("cpus", cpus), ("memory", memory), ("shm", shm),
                       ("time_limit", time_limit), ("name", name), ("priority", priority), ("priority_class", priority_class), ("experiment", experiment), ("on", on)):
        if value is not None:
            spec[key] = value
    if env_map:
        spec["env"] = env_map
    if requirements_file is None and not no_requirements and not no_code and os.path.isfile(os.path.join(code_dir, "requirements.txt")):
        requirements_file = os.path.join(code_dir, "requirements.txt")
    if requirements_file is not None and not no_requirements:
        spec["requirements"] = read_requirements(requirements_file)
    if not no_code:
        from mlpd.kinds.jobspec import SpecError, parse_spec

        try:
            parse_spec(spec)  # refuse a bad spec before packing and uploading the code
        except SpecError as exc:
            raise click.ClickException(str(exc)) from exc
        spec["code"] = upload_code(logged_in_client(), code_dir)
    # without code the daemon's own parse_spec answers first, with the same message (importing
    # jobspec here would cost about a sixth of the CLI's start-up)
    from mlpd.cli.automation import after_field

    job = _submit(spec | after_field(logged_in_client(), after), as_json)
    if follow:
        follow_to_end(logged_in_client(), job["id"])


def follow_to_end(client, job_id: str, **options) -> None:
    """Stream a job's output until it ends, then say how it ended and exit with its status (mlpd.cli.job_end)."""
    from mlpd.cli.job_end import EXIT_INTERRUPTED, finish

    try:
        stream_logs(client, job_id, True, **options)
        finish(client, job_id)
    except KeyboardInterrupt:
        # Ctrl-C ends the following, not the job: say so, and how to pick it up again
        click.echo(f"\nmlpd: stopped following job {job_id}; it goes on ('mlpd logs -f {job_id}', 'mlpd wait {job_id}', "
                   f"'mlpd cancel {job_id}')", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


NOTEBOOK_IMAGE = "mlpd/workspace:latest"  # workspaces.image's default: the same Python as workspaces, with papermill


def notebook_command(notebook: str, params: tuple[str, ...], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """papermill NB /outputs/NB -p K V ...: executes a notebook in the job, keeping the executed copy in /outputs."""
    argv = ["papermill", notebook, "/outputs/" + os.path.basename(notebook), "--kernel", "python3", "--log-output"]
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE with NAME a Python name, got {item!r}", param_hint="--param")
        argv += ["-p", key, value]
    return tuple(argv + list(extra))


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--code", "code_dir", type=click.Path(exists=True, file_okay=False),
              help="Directory to ship (default: the file's code_dir, relative to the file, else the file's own directory).")
@click.option("--no-code", is_flag=True, help="Do not ship any code.")
@click.option("--no-requirements", is_flag=True, help="Do not use the shipped directory's requirements.txt.")
@click.option("--priority-class", help="Its class, over the file's priority_class.")
@click.option("-f", "--follow", is_flag=True, help="Then stream the job's output until it ends; exits with how it ended (see 'mlpd wait --help').")
@json_option
def submit(file, code_dir, no_code, no_requirements, priority_class, follow, as_json):
    """Submit a job spec file (TOML; the same fields as 'mlpd run' flags). Ships the file's directory, like 'mlpd run'."""
    from mlpd.kinds.jobspec import SpecError

    with open(file, "rb") as fh:
        text = fh.read()
    import tomllib

    try:
        raw = tomllib.loads(text.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{file}: not valid TOML: {exc}") from exc
    from mlpd.cli.automation import after_field
    from mlpd.kinds.jobspec import parse_spec

    after = raw.pop("after", None)  # the jobs it waits for: not a field of the spec (mlpd.automation.dependencies)
    if after is not None and (not isinstance(after, list) or not all(isinstance(a, str) for a in after)):
        raise click.ClickException(f"{file}: after: expected a list of job ids, e.g. after = [\"3f2a9c1b7d4e\", \"0b1c2d3e4f5a:any\"]")

    try:
        parse_spec({k: v for k, v in raw.items() if k not in ("code_dir", "requirements")} | {"command": raw.get("command", ["x"])},
                   job_file=True)  # every unknown key at once, named as a job file names them
    except SpecError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    if priority_class is not None:
        raw["priority_class"] = priority_class
    rel = raw.pop("code_dir", None)
    if rel is not None and not isinstance(rel, str):
        raise click.ClickException(f"{file}: code_dir: expected a string path")
    if "requirements" in raw:
        if not isinstance(raw["requirements"], str):
            raise click.ClickException(f"{file}: requirements: expected the path of a requirements file, relative to {file}")
        raw["requirements"] = read_requirements(os.path.join(os.path.dirname(os.path.abspath(file)), raw["requirements"]))

    try:
        spec, _warnings = parse_spec(raw)
    except SpecError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    data = spec.to_dict()
    here = os.path.dirname(os.path.abspath(file))
    directory = None if no_code else (code_dir or (os.path.join(here, rel) if rel else here))
    if directory and not os.path.isdir(directory):
        raise click.ClickException(f"{file}: code_dir: {directory} is not a directory")
    if directory and data.get("requirements") is None and not no_requirements and os.path.isfile(os.path.join(directory, "requirements.txt")):
        data["requirements"] = read_requirements(os.path.join(directory, "requirements.txt"))
    if directory:
        data["code"] = upload_code(logged_in_client(), directory)
    job = _submit({k: v for k, v in data.items() if v is not None and v != {}} | after_field(logged_in_client(), after or ()), as_json)
    if follow:
        follow_to_end(logged_in_client(), job["id"])


def resolve_job(client, ref: str) -> str:
    """A job id from a unique prefix of it (as 'mlpd jobs' shows ids); ClickException when none or several match."""
    import re

    if re.fullmatch(r"[0-9a-f]{12}", ref):
        return ref
    if not re.fullmatch(r"[0-9a-f]{1,11}", ref):
        raise click.ClickException(f"{ref!r} is not a job id (12 hex characters, or the start of one)")
    params: dict[str, Any] = {"limit": 10000}
    if client.get("/whoami")["user"]["role"] == "admin":
        params["all"] = 1
    matches = [j["id"] for j in client.get("/jobs", params=params)["jobs"] if j["id"].startswith(ref)]
    if not matches:
        raise click.ClickException(f"no job of yours starts with {ref!r}; 'mlpd jobs' lists them (a workspace or a deployment "
                                   "is shown by name: 'mlpd ws show NAME', 'mlpd deployments show NAME')")
    if len(matches) > 1:
        raise click.ClickException(f"{ref!r} matches {len(matches)} jobs ({', '.join(matches[:5])}); give more of the id")
    return matches[0]


def _gpus_text(job: dict) -> str:
    """How many GPUs a job asks for, and which it holds: "2 (GPUs 0,3)", "1", or "-" for none."""
    count, indices = job["gpus"]["count"], job["gpus"]["indices"]
    if not count:
        return "-"
    if job["gpus"].get("share"):
        count = f"{job['gpus']['share']:g} of 1"  # a share of one GPU (--gpus 0.5)
    return f"{count} (GPU{'s' if len(indices) > 1 else ''} {','.join(map(str, indices))})" if indices else str(count)


@click.group(invoke_without_command=True)
@click.option("--all", "all_users", is_flag=True, help="Everyone's jobs (admins).")
@click.option("--state", "states", multiple=True, help="Only jobs in this state (repeatable): waiting, queued, starting, running, succeeded, failed, cancelled, timed_out, lost, preempted.")
@click.option("--limit", type=int, default=200, show_default=True, help="Show at most this many.")
@click.option("--schedule", help="Only the runs of this schedule ('mlpd schedule' lists them).")
@click.option("--sweep", help="Only the trials of this sweep.")
@json_option
@click.pass_context
def jobs(ctx, all_users, states, limit, schedule, sweep, as_json):
    """List your jobs (newest first); 'mlpd jobs show ID' for one, 'jobs outputs ID' for its /outputs, 'jobs rerun ID' to run it again."""
    if ctx.invoked_subcommand:
        return
    params: dict[str, Any] = {"state": ",".join(states), "limit": limit} if states else {"limit": limit}
    if all_users:
        params["all"] = 1
    params.update({k: v for k, v in (("schedule", schedule), ("sweep", sweep)) if v})
    result = logged_in_client().get("/jobs", params=params)
    rows = result["jobs"]
    if as_json:
        emit_json(result)
        return
    if result.get("truncated"):
        click.echo(f"(showing the newest {limit}; use --limit or --state to see more)", err=True)
    table([(j["id"], j["name"], j["owner"], j["state"], _gpus_text(j), when(j["submitted_at"]), j["reason"][:50]) for j in rows],
          ["id", "name", "owner", "state", "gpus", "submitted", "reason"])



def _limit_lines(job: dict, spec: dict) -> list[tuple[str, str]]:
    """The CPU and memory limits the container gets, marked where they are the daemon's defaults."""
    from mlpd.units import format_bytes

    limits = job.get("limits") or {"cpus": spec.get("cpus"), "memory": spec.get("memory")}
    cpus = f"{limits['cpus']:g}" if limits.get("cpus") else "no limit"
    memory = format_bytes(limits["memory"]) if limits.get("memory") else "no limit"
    return [("cpus", cpus + (" (default)" if limits.get("cpus_default") else "")),
            ("memory", memory + (" (default)" if limits.get("memory_default") else ""))]


@jobs.command("show")
@click.argument("job_id")
@json_option
def jobs_show(job_id, as_json):
    """A job's spec, state history, GPUs and why it waits (ID may be a unique prefix)."""
    client = logged_in_client()
    job = client.get(f"/jobs/{resolve_job(client, job_id)}")["job"]
    if as_json:
        emit_json({"job": job})
        return
    from mlpd.units import format_duration

    spec = job["spec"]
    lines = [
        ("job", job["id"] + (f" ({job['name']})" if job["name"] else "")), ("owner", job["owner"]),
        ("state", job["state"] + (f": {job['reason']}" if job["reason"] else "")),
        ("exit code", job["exit_code"]), ("image", job["image"]), ("command", " ".join(job["command"])),
        ("gpus", (f"a {spec['gpu_share']:g} share of 1 GPU" if spec.get("gpu_share") else f"{spec['gpus']}") + " requested" + (f", indices {job['gpus']['indices']} ({', '.join(job['gpus']['uuids'])})" if job["gpus"]["uuids"] else "")),
        *_limit_lines(job, spec),
        ("time limit", format_duration(spec["time_limit"]) if spec.get("time_limit") else "-"), ("priority", job["priority"]),
        ("class", job.get("priority_class", "-")), ("attempt", job.get("attempt", 1)),
        ("code", (spec.get("code") or "-")[:12]), ("submitted", when(job["submitted_at"])), ("started", when(job["started_at"])), ("ended", when(job["ended_at"])),
    ]
    for key, value in lines:
        click.echo(f"{key + ':':<12} {'-' if value is None else value}")
    if job.get("preempting"):
        click.echo(f"{'preempting:':<12} since {when(job['preempting']['since'])}: {job['preempting']['reason']} "
                   "(SIGTERM sent; stopped after the grace period)")
    for p in job.get("preemptions") or []:
        click.echo(f"{'preempted:':<12} attempt {p['attempt']} at {when(p['at'])}: {p['reason']}")
    if job.get("waiting"):
        w = job["waiting"]
        click.echo(f"{'waiting:':<12} position {w['position']} in the queue; {w['reason']}")
        start = when(w["estimated_start"]) if w["estimated_start"] else "unknown (a holder has no time limit)"
        if w.get("reserved") and w["estimated_start"]:
            start = f"{start} at the latest (GPUs are reserved for it)"
        click.echo(f"{'est. start:':<12} {start}")
        if w.get("priority"):
            click.echo(f"{'priority:':<12} {priority_text(w['priority'])}")
    from mlpd.cli.automation import link_lines

    for key, value in link_lines(job):
        click.echo(f"{key + ':':<12} {value}")
    for run in job.get("mlflow_runs") or []:
        click.echo(f"{'mlflow run:':<12} {run['url']}  ({run['name'] or run['run_id']}, {run['status'].lower()}{', deleted' if run['deleted'] else ''})")
    click.echo("history:")
    for event in job["history"]:
        reason = event["detail"].get("reason") or ""
        click.echo(f"  {when(event['at'])}  {event['action'].removeprefix('job.'):<16} {event['actor']:<10} {reason}")


PRIORITY_TERMS = (("priority", "own priority"), ("age", "age"), ("fair_share", "fair share (usage)"),
                  ("slowdown", "fair share (slowdown)"), ("expansion", "expansion"), ("size", "size"))


def priority_text(p: dict) -> str:
    """E.g. "score 5212 = age 120 + fair share (usage) 85 + fair share (slowdown) 3000 + expansion 2007";
    the terms that are 0 are left out. A job holding the reservation goes first whatever its score."""
    terms = p.get("terms") or {}
    parts = [f"{label} {terms[key]:.0f}" for key, label in PRIORITY_TERMS if round(terms.get(key, 0))]
    text = f"score {p['score']:.0f}" + (" = " + " + ".join(parts) if parts else "")
    if p.get("priority_class"):
        text += f"; class {p['priority_class']}"
    if p.get("reserved"):
        text += "; holds the reservation, so it goes first whatever the score"
    elif p.get("starving"):
        text += "; starving (waited scheduler.starvation_wait), so it goes ahead of its class, oldest first, whatever the score"
    return text


@jobs.command("outputs")
@click.argument("job_id")
@click.option("-o", "--output", "dest", help="Directory to write into (default: ./outputs-ID).")
def jobs_outputs(job_id, dest):
    """Download a job's /outputs directory."""
    import tempfile

    from mlpd.kinds.codeship import extract_archive

    client = logged_in_client()
    job_id = resolve_job(client, job_id)
    dest = dest or f"outputs-{job_id}"
    if os.path.exists(dest):
        raise click.ClickException(f"{dest} already exists; choose another with -o")
    resp = client.request("GET", f"/jobs/{job_id}/outputs", stream=True, timeout=600)
    with tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False) as tmp:
        for chunk in resp.iter_content(65536):
            tmp.write(chunk)
    try:
        files = extract_archive(tmp.name, dest)
    finally:
        os.unlink(tmp.name)
    click.echo(f"{plural(files, 'file')} in {dest}/")


@jobs.command("rerun")
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Then stream its output until it ends; exits with how it ended (see 'mlpd wait --help').")
@json_option
def jobs_rerun(job_id, follow, as_json):
    """Submit a job again with the same spec (and the same code). ID may be a unique prefix."""
    client = logged_in_client()
    spec = client.get(f"/jobs/{resolve_job(client, job_id)}")["job"]["spec"]
    job = _submit({k: v for k, v in spec.items() if v is not None and v != {}}, as_json)
    if follow:
        follow_to_end(client, job["id"])


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Stream live until the job ends; exits with how it ended (see 'mlpd wait --help').")
@click.option("-n", "--tail", type=click.IntRange(min=0), help="Only the last N lines (of what is there now; with -f, then live).")
@click.option("-t", "--timestamps", is_flag=True, help="Start each line with when it was written (UTC).")
@click.option("--since", help="Only lines written since then: a duration ago (10m, 2h) or a time (2026-12-01T09:00, UTC).")
@click.option("--raw", is_flag=True, help="The bytes as the job wrote them, escape sequences included (default: shown as text).")
def logs(job_id, follow, tail, timestamps, since, raw):
    """A job's output (kept after it ends). ID may be a unique prefix."""
    client = logged_in_client()
    job_id = resolve_job(client, job_id)
    options = dict(tail=tail, timestamps=timestamps, since=parse_since(since) if since else None, raw=raw)
    if follow:
        follow_to_end(client, job_id, **options)
    else:
        stream_logs(client, job_id, False, **options)


def parse_since(text: str, now: float | None = None) -> float:
    """--since: a duration ago ('10m', '2h') or a UTC time ('2026-12-01T09:00', '2026-12-01 09:00:00'); seconds since the epoch."""
    import datetime as dt
    import time

    from mlpd.units import parse_duration

    try:
        return (now if now is not None else time.time()) - parse_duration(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"expected a duration such as 10m or 2h, or a time such as 2026-12-01T09:00 (UTC), got {text!r}",
                                 param_hint="--since") from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()


def stream_logs(client, job_id: str, follow: bool, tail: int | None = None, timestamps: bool = False, since: float | None = None,
                raw: bool = False) -> None:
    """Write a job's output to stdout (as text: mlpd.termsafe; raw: the bytes); with follow, until the job ends."""
    from mlpd import termsafe

    out = termsafe.raw_stdout() if raw else sys.stdout.buffer
    params = {**({"timestamps": 1} if timestamps else {}), **({"since": repr(since)} if since is not None else {})}
    if tail is not None:
        saved = client.request("GET", f"/jobs/{job_id}/logs", timeout=60, params=params).content
        lines = saved.splitlines(keepends=True)
        out.write(b"".join(lines[-tail:] if tail else []))
        out.flush()
        if not follow:
            return
        skip = len(saved)  # the live stream starts from the beginning: drop what was shown
    else:
        skip = 0
    resp = client.request("GET", f"/jobs/{job_id}/logs", stream=True, timeout=None if follow else 60, params={**params, **({"follow": 1} if follow else {})})
    for chunk in resp.iter_content(chunk_size=None):
        if skip:
            dropped, chunk = chunk[:skip], chunk[skip:]
            skip -= len(dropped)
        out.write(chunk)
        out.flush()


CANCEL_WAIT = 120.0  # seconds: a running job gets SIGTERM, then is killed after a few seconds


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--no-wait", is_flag=True, help="Return at once, while running jobs are still being stopped.")
def cancel(job_ids, no_wait):
    """Cancel jobs: queued ones at once; running ones are stopped, and cancel returns once they have ended
    (so that 'mlpd cancel ID && mlpd jobs rerun ID' finds their GPUs free)."""
    from mlpd.cli.job_end import wait_for_end
    from mlpd.jobs import TERMINAL_STATES

    c = logged_in_client()
    ids = [resolve_job(c, ref) for ref in job_ids]
    stopping = []
    for job_id in ids:
        job = c.post(f"/jobs/{job_id}/cancel")["job"]
        if job["state"] in TERMINAL_STATES:
            click.echo(f"{job_id}: {job['state'].replace('_', ' ')}")
        else:
            stopping.append(job_id)
            if no_wait:
                click.echo(f"{job_id}: stopping ('mlpd wait {job_id}' waits for it to end)")
    if no_wait:
        return
    still = []
    for job_id in stopping:
        job = wait_for_end(c, job_id, timeout=CANCEL_WAIT, interval=0.2)
        if job["state"] in TERMINAL_STATES:
            click.echo(f"{job_id}: {job['state'].replace('_', ' ')}" + (f" ({job['reason']})" if job["state"] != "cancelled" else ""))
        else:
            still.append(job_id)
    if still:
        raise click.ClickException(f"{', '.join(still)} still stopping after {CANCEL_WAIT:.0f} s; 'mlpd wait {' '.join(still)}' waits for them")


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", help="Stop waiting after this long (e.g. 30m); jobs that have not ended then exit 75 or 76.")
@json_option
def wait(job_ids, timeout, as_json):
    """Wait until the jobs have ended; exit with the worst of their ends. IDs may be unique prefixes.

    Each job's end is one line on stderr (mlpd: job ID failed: exited with code 1). The exit
    status, also of 'run -f', 'submit -f', 'logs -f' and 'jobs rerun -f', is in the table below.
    """
    import time

    from mlpd.cli.job_end import EXIT_INTERRUPTED, outcome, worst
    from mlpd.jobs import TERMINAL_STATES

    limit = None
    if timeout is not None:
        from mlpd.units import parse_duration

        try:
            limit = parse_duration(timeout)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--timeout") from None
    c = logged_in_client()
    ids = list(dict.fromkeys(resolve_job(c, ref) for ref in job_ids))
    deadline = None if limit is None else time.monotonic() + limit
    ended: dict[str, dict] = {}
    try:
        while True:
            for job_id in ids:
                if job_id not in ended:
                    job = c.get(f"/jobs/{job_id}")["job"]
                    if job["state"] in TERMINAL_STATES:
                        ended[job_id] = job
                        if not as_json:
                            click.echo(outcome(job).line, err=True)
            if len(ended) == len(ids) or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        click.echo(f"\nmlpd: stopped waiting; {len(ids) - len(ended)} of the jobs had not ended (they go on)", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    jobs_seen = [ended.get(job_id) or c.get(f"/jobs/{job_id}")["job"] for job_id in ids]
    ends = [outcome(job) for job in jobs_seen]
    for end in ends:
        if end.job_id not in ended and not as_json:
            click.echo(end.line, err=True)
    if as_json:
        emit_json({"jobs": [{"id": e.job_id, "state": j["state"], "reason": j["reason"], "exit_code": j["exit_code"], "exit_status": e.status}
                            for e, j in zip(ends, jobs_seen, strict=True)], "exit_status": worst(ends).status})
    raise click.exceptions.Exit(worst(ends).status)


wait.help = inspect.cleandoc(wait.help or "") + "\n\n\b\n" + "\n".join(f"{code:>6}  {meaning}" for code, meaning in EXIT_STATUS_TABLE)


def _holder_text(h: dict) -> str:
    """One holder of a GPU as `mlpd gpus` shows it: its label, with its share on a shared GPU."""
    text = h.get("label") or f"job {h['job_id']} of {h['owner']}"
    return text + (f" ({h['share']:g} GPU)" if h.get("share", 1) < 1 else "")


@click.command()
@json_option
def gpus(as_json):
    """GPUs and who holds each."""
    result = logged_in_client().get("/gpus")
    if as_json:
        emit_json(result)
        return
    rows = []
    for g in result["gpus"]:
        holder = g["holder"]
        held = g.get("holders") or ([holder] if holder else [])
        mem = f"{g['memory_used'] // 2**20}/{g['memory_total'] // 2**20} MiB" if g["memory_total"] else "-"
        status = (g.get("drain_reason") or "drained") if g["drained"] else (
            f"shared {g.get('share_used')} of 1 by {len(held)}" if g.get("shared") else "held" if holder else "free")
        if g.get("stray_pids"):
            status += f", STRAY use by pids {','.join(map(str, g['stray_pids']))}"
        model = g["name"] if not g["declared"] else ("declared" if g["name"] == "declared" else f"{g['name']} (declared)")
        rows.append((g["index"], model, g["uuid"], mem,
                     f"{g['utilization']}%" if g["utilization"] is not None else "-", status,
                     "; ".join(_holder_text(h) for h in held) or "-"))
    table(rows, ["index", "model", "uuid", "memory", "util", "status", "holder"])
    if "slurm_nodes" in result:  # the daemon submits to a Slurm cluster: its nodes, as sinfo says
        click.echo("\nSlurm nodes:")
        if result.get("slurm_error"):
            click.echo(f"  (Slurm does not answer: {result['slurm_error']})")
        table([(n["name"], n["state"] + (f" ({n['reason']})" if n["reason"] else ""), ",".join(n["partitions"]),
                f"{n['gpus_used']}/{n['gpus']}", f"{n['cpus_used']}/{n['cpus']}") for n in result["slurm_nodes"]],
              ["node", "state", "partitions", "gpus used", "cpus used"])


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def images(ctx, as_json):
    """mlpd's images on this host; 'mlpd images build' makes what is missing."""
    if ctx.invoked_subcommand:
        return
    rows = logged_in_client().get("/images")["images"]
    if as_json:
        emit_json({"images": rows})
        return
    table([(i["tag"], i["role"], "present" if i["present"] else "missing", i.get("id"), f"{(i.get('size') or 0) // 2**20} MiB" if i.get("size") else "-") for i in rows],
          ["image", "role", "status", "id", "size"])


@images.command("build")
@click.option("--force", is_flag=True, help="Rebuild mlpd's images even when present (the base is kept).")
@click.option("--local", "local", is_flag=True, help="Build on this host against the local Docker engine, without the daemon (install scripts, CI).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="With --local: the configuration naming the images.")
@click.option("--with", "extra", multiple=True, type=click.Choice(["pytorch"]), help="Also an optional image: pytorch (mlpd/pytorch:latest, several GB; see images.pytorch_base).")
def images_build(force, local, config_file, extra):
    """Build the images that are missing, with progress (admins)."""
    if local:
        from mlpd.config import ConfigError, load_config
        from mlpd.runtime.image_catalog import build_missing
        from mlpd.runtime import connect
        from mlpd.runtime.protocol import RuntimeFailure

        try:
            cfg = load_config(config_file)
            for line in build_missing(connect("host"), cfg, force=force, extra=extra):
                click.echo(line)
        except (ConfigError, RuntimeFailure) as exc:
            raise click.ClickException(str(exc)) from exc
        return
    c = logged_in_client()
    resp = c.request("POST", "/images/build", stream=True, timeout=3600, params={**({"force": 1} if force else {}), **({"with": ",".join(extra)} if extra else {})})
    failed = False
    for line in resp.iter_lines(decode_unicode=True):
        click.echo(line)
        failed = failed or line.startswith("ERROR:")
    if failed:
        sys.exit(1)
