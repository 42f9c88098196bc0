"""Jobs, code archives, logs, outputs and GPUs."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time

from flask import Response, current_app, g, jsonify, request, stream_with_context

from mlpd import admission, jobs
from mlpd.scheduling.scheduler import name_of as name_of_holder
from mlpd.scheduling.gpu_state import drains, find_gpu, gpu_holders, gpu_sharers, read_instance_id, set_drained, stray_gpus
from mlpd.scheduling.sharing import as_gpus
from mlpd.kinds.codeship import CodeArchiveError, extract_archive
from mlpd.jobs import TERMINAL_STATES, JobState
from mlpd.kinds.base import kind_of
from mlpd.units import host_limits
from mlpd.scheduling.resource_caps import effective_limits
from mlpd.web import config, store
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body, request_json

area = Area("jobs")  # registered by the app factory (mlpd.web.create_app)
route = area.route

_lock = threading.Lock()


def inventory():
    """This web worker's GPU inventory (NVML is initialised once per process)."""
    with _lock:
        if "mlpd.inventory" not in current_app.extensions:
            from mlpd.runtime.gpus import make_inventory

            cfg = config()
            current_app.extensions["mlpd.inventory"] = make_inventory(cfg["gpus.declare"], cfg["gpus.declared_model"], store())
        return current_app.extensions["mlpd.inventory"]


def runtime():
    """The runtime for reading logs and images; ApiError 503 when the engine does not answer."""
    from mlpd.runtime import connect
    from mlpd.runtime.protocol import RuntimeFailure

    with _lock:
        if "mlpd.runtime.protocol" not in current_app.extensions:
            cfg = config()
            try:
                from mlpd.runtime.slurm import with_slurm

                local = connect(read_instance_id(cfg.state_dir), cfg["docker.host"], cfg["docker.gpu_runtime"])
                current_app.extensions["mlpd.runtime.protocol"] = with_slurm(local, cfg, read_instance_id(cfg.state_dir), store())
            except RuntimeFailure as exc:
                raise ApiError(503, "docker_unavailable", str(exc)) from None
        return current_app.extensions["mlpd.runtime.protocol"]


def wake(reason: str) -> None:
    """Ask the worker's reconcile loop for a pass now (see mlpd.wakeup)."""
    from mlpd.wakeup import wake as wake_worker

    wake_worker(config().state_dir, reason)


def _visible_job(job_id: str) -> dict:
    from mlpd.roles import may_read

    job = jobs.get(store(), job_id)  # theirs; any for admins; their teams' members' for a viewer (mlpd.roles)
    if job is None or not may_read(store(), g.user, job["owner"]) or (g.user.job_id and job_id != g.user.job_id):
        raise ApiError(404, "not_found", f"no such job {job_id!r}")
    return job


def job_view(job: dict) -> dict:
    """The stable JSON form of a job."""
    spec = job["spec"]
    return {
        "id": job["id"], "kind": kind_of(job.get("kind")).name, "name": job["name"], "owner": job["owner"], "state": job["state"], "reason": job["reason"],
        "exit_code": job["exit_code"], "priority": job["priority"],
        "gpus": {"count": spec["gpus"], "share": spec.get("gpu_share"), "indices": job["gpu_indices"], "uuids": job["gpu_uuids"]},
        "image": spec.get("image") or config()["jobs.default_image"], "command": spec["command"],
        "submitted_at": job["submitted_at"], "started_at": job["started_at"], "ended_at": job["ended_at"],
        "cancel_requested_by": job["cancel_requested_by"], "spec": spec, "limits": effective_limits_view(spec),
        "priority_class": _classes().of(job), "attempt": job["attempts"],
        "preempting": None if job["preempt_requested_at"] is None or job["state"] not in jobs.ACTIVE_STATES
        else {"since": job["preempt_requested_at"], "reason": job["preempt_reason"]},
    }


def effective_limits_view(spec: dict) -> dict:
    """The CPU and memory limits the workload's container gets (its own, else the defaults; None = none)."""

    cpus, memory = effective_limits(spec, config(), host_limits())
    return {"cpus": cpus, "memory": memory, "cpus_default": spec.get("cpus") is None and cpus is not None,
            "memory_default": spec.get("memory") is None and memory is not None}


def _classes():
    from mlpd.scheduling.priority_classes import PriorityClasses

    return PriorityClasses.from_config(config())


def check_disk(incoming: int = 0, what: str = "new work") -> None:
    """mlpd.admission.check_disk for this daemon."""
    admission.check_disk(config(), incoming, what)


def check_admission(spec) -> None:
    """mlpd.admission.check_fits for g.user on this daemon (what can never run here: 400)."""
    admission.check_fits(store(), config(), inventory().devices(), spec, g.user.name)


def check_priority_class(spec) -> None:
    """mlpd.admission.check_priority_class for g.user on this daemon."""
    admission.check_priority_class(store(), config(), spec, g.user.name, g.user.is_admin)


def create_job(data: dict) -> tuple[dict, list[str]]:
    """Admit and queue a job spec for g.user (the API and the web form both submit here; see
    mlpd.admission.submit_job), and wake the worker. `after` (job ids with :ok or :any) makes it
    wait for those jobs (mlpd.automation.dependencies)."""
    job, warnings = admission.submit_job(store(), config(), inventory().devices(), g.user.name, g.user.is_admin, data)
    wake(f"submitted {job['id']}")
    return job, warnings


@route("/jobs", methods=("POST",), summary="Submit a job (the job spec as JSON; see mlpd.kinds.jobspec)")
def submit_job():
    data = request_json()
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object (a job spec)")
    job, warnings = create_job(data)
    return jsonify({"job": job_view(job), "warnings": warnings}), 201


@route("/jobs", summary="List jobs, newest first (yours; admins ?all=1); ?state= filters, ?schedule=NAME and ?sweep=ID the runs of one, "
       "?limit= (default 200) caps and sets truncated")
def list_jobs():
    states = [s for s in request.args.getlist("state") for s in s.split(",") if s]
    bad = [s for s in states if s not in jobs.STATE_NAMES]
    if bad:
        raise ApiError(400, "invalid_field", f"state: unknown state {bad[0]!r}; expected one of {', '.join(jobs.STATE_NAMES)}")
    from mlpd.roles import is_viewer, readable_owners

    owner = None if (g.user.is_admin and request.args.get("all")) else g.user.name
    if is_viewer(g.user):
        owner = readable_owners(store(), g.user)  # their teams' members
    try:
        limit = max(1, min(int(request.args.get("limit", 200)), 10000))
    except ValueError:
        raise ApiError(400, "invalid_field", "limit: expected a whole number") from None
    schedule, sweep = request.args.get("schedule"), request.args.get("sweep")
    if schedule or sweep:
        from mlpd.automation import links

        rows = links.jobs_of(store(), owner, states, limit + 1, schedule=schedule, sweep=sweep)
    else:
        rows = jobs.list_jobs(store(), owner, states, limit=limit + 1)
    return jsonify({"jobs": [job_view(j) for j in rows[:limit]], "truncated": len(rows) > limit})


def explain_wait(job_id: str) -> dict | None:
    """Why a queued job waits: position, blockers and an estimated start, from the scheduler itself."""
    from mlpd.controller import why_waiting

    wait, priority = why_waiting(store(), inventory(), config(), time.time(), job_id)
    if wait is None:
        return None
    return {"position": wait.position, "reason": wait.reason, "estimated_start": wait.estimated_start, "reserved": wait.reserved,
            "blocking": [{"gpu_uuid": h.gpu_uuid, "job_id": h.job_id, "owner": h.owner, "ends_by": h.ends_by, "label": name_of_holder(h)}
                         for h in wait.blocking],
            "priority": priority}


@route("/jobs/<job_id>", summary="One job: spec, state history, GPUs and why it waits", job_token=True)
def show_job(job_id: str):
    job = _visible_job(job_id)
    view = job_view(job)
    view["history"] = jobs.history(store(), job_id)
    view["preemptions"] = jobs.preemptions(view["history"])
    view["waiting"] = explain_wait(job_id) if job["state"] == JobState.QUEUED.value else None
    view["mlflow_runs"] = mlflow_runs(job_id)
    from mlpd.automation import links

    view.update(links.of_job(store(), job_id))  # after (the jobs it waits for), schedule, sweep
    return jsonify({"job": view})


def mlflow_runs(job_id: str) -> list[dict]:
    """The MLflow runs the job logged (tagged mlpd.job_id by mlpd), with links to their UI pages."""
    from mlpd.tracking.server import TrackingDb, run_url

    if "mlpd.tracking_db" not in current_app.extensions:
        current_app.extensions["mlpd.tracking_db"] = TrackingDb(config().state_dir)
    runs = current_app.extensions["mlpd.tracking_db"].runs_for_job(job_id)
    return [dict(r, url=run_url(request.host_url, r["experiment_id"], r["run_id"])) for r in runs]


@route("/jobs/<job_id>/cancel", methods=("POST",), summary="Cancel a job")
def cancel_job(job_id: str):
    _visible_job(job_id)
    job = jobs.request_cancel(store(), job_id, g.user.name)
    wake(f"cancel {job_id}")
    return jsonify({"job": job_view(job)})


@route("/jobs/<job_id>/logs", summary="A job's output; ?follow=1 streams it live until the job ends; ?timestamps=1 stamps each line; "
       "?since=EPOCH_SECONDS only lines from then on", streaming=True, job_token=True)
def job_logs(job_id: str):
    _visible_job(job_id)
    return logs_response(job_id, request.args.get("follow") in ("1", "true", "yes"))


def _since_arg() -> float | None:
    raw = request.args.get("since")
    if raw in (None, ""):
        return None
    try:
        since = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_field", "since: expected a time in seconds since the epoch, e.g. 1764558000") from None
    if since != since or since in (float("inf"), float("-inf")):
        raise ApiError(400, "invalid_field", "since: expected a finite number")
    return since


LOG_POLL_INTERVAL = 0.25  # seconds between looks at a live log file (and at whether its reader is still there)
LOG_READ_MAX = 1 << 20  # bytes read from a log file at once


def _stream_slots():
    from mlpd.web.log_streams import StreamSlots

    with _lock:
        if "mlpd.log_streams" not in current_app.extensions:
            cfg = config()
            current_app.extensions["mlpd.log_streams"] = StreamSlots(cfg.state_dir, cfg["server.threads"] // 2)
        return current_app.extensions["mlpd.log_streams"]


def client_gone(sock) -> bool:
    """Whether the peer of a streaming response has closed its end: checked without sending anything
    (a readable socket with nothing to read is at its end), so a silent log stream notices at once."""
    import select
    import socket

    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _read_from(path: str, offset: int, limit: int = LOG_READ_MAX) -> bytes:
    """Up to limit bytes of the file from offset (b"" when it is missing); never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, OSError):
        return b""
    with os.fdopen(fd, "rb") as fh:
        fh.seek(offset)
        return fh.read(limit)


def logs_response(job_id: str, follow: bool) -> Response:
    """A workload's output (build log first, then the container's, then the saved log once it ended); with follow, live.
    ?timestamps=1 keeps each line's stamp; ?since= drops lines written before it.

    Following polls the file the worker copies the running container's output to
    (mlpd.workers.live_logs), never Docker, and ends when the workload ends or the client has
    gone; each user may follow server.log_streams_per_user streams at once (429 beyond)."""
    from mlpd import logtext
    from mlpd.web.log_streams import StreamsBusy

    directory = jobs.job_dir(config().state_dir, job_id)
    log_path = os.path.join(directory, "log")
    st = store()
    timestamps, since = request.args.get("timestamps") in ("1", "true", "yes"), _since_arg()
    stamped = timestamps or since is not None
    release = None
    sock = request.environ.get("gunicorn.socket")
    if follow:
        try:
            release = _stream_slots().acquire(g.user.name, config()["server.log_streams_per_user"])
        except StreamsBusy as exc:
            raise ApiError(429, "too_many_streams", str(exc)) from None

    def raw_saved(path):
        try:
            with open(path, "rb") as fh:
                yield from iter(lambda: fh.read(65536), b"")
        except FileNotFoundError:
            return

    def saved(path=log_path):
        yield from logtext.select(raw_saved(path), timestamps, since)

    def attempts_before(job: dict):
        # the output of attempts that were preempted, each written whole when it ended
        for n in range(1, job["attempts"]):
            yield f"--- attempt {n} (preempted) ---\n".encode()
            yield from saved(os.path.join(directory, f"attempt-{n}.log"))
        if job["attempts"] > 1:
            yield f"--- attempt {job['attempts']} ---\n".encode()

    def snapshot():
        # not following: the build log, then what the container has written so far, or the saved log once it ended
        job = jobs.get(st, job_id)
        yield from saved(os.path.join(directory, "build.log"))
        yield from attempts_before(job)
        if job["state"] in TERMINAL_STATES:
            yield from saved_when_written()
        elif job["state"] == JobState.RUNNING.value or (job["state"] == JobState.STARTING.value and runtime().inspect(job_id)):
            live = runtime().logs(job_id, follow=False, timestamps=stamped)
            yield from (logtext.select(live, timestamps, since) if stamped else live)

    def saved_when_written(offset: int = 0, pending: bytes = b""):
        # give the controller a moment to save the log of a job that just ended
        for _ in range(50):
            if os.path.exists(log_path):
                break
            if any(e["action"] == "job.files_removed" for e in jobs.history(st, job_id)):
                yield b"(this job's log and outputs were removed: it ended more than retention.job_days ago)\n"
                return
            time.sleep(0.1)
        yield from logtext.select(rest_of(log_path, offset, pending), timestamps, since)

    def rest_of(path: str, offset: int, pending: bytes):
        yield pending
        while chunk := _read_from(path, offset):
            offset += len(chunk)
            yield chunk

    def follow_live():
        # The live file holds the same bytes as the log saved at the end: having read `offset` bytes
        # of one, go on at `offset` of the other. Whole lines only until the end (stamps are per line).
        attempt, offset, pending, built = None, 0, b"", 0
        build_log = os.path.join(directory, "build.log")
        while True:
            job = jobs.get(st, job_id)
            if job is None:
                return  # removed meanwhile
            if attempt is None and job["state"] != JobState.STARTING.value:
                # the rest of the environment's build (if the job brought requirements), then its attempts
                yield from logtext.select(rest_of(build_log, built, b""), timestamps, since)
                yield from attempts_before(job)
                attempt = job["attempts"] or 1
            elif attempt is None:
                # starting: the environment's build is written line by line as pip runs; follow it
                data = _read_from(build_log, built)
                cut = data.rfind(b"\n") + 1
                if cut:
                    built += cut
                    yield from logtext.select([data[:cut]], timestamps, since)
                    continue
            if job["state"] in TERMINAL_STATES:
                yield from saved_when_written(offset, pending)
                return
            if attempt is not None and (job["attempts"] or 1) != attempt:
                # preempted: the rest of that attempt's saved log, then the next attempt's output
                yield from logtext.select(rest_of(os.path.join(directory, f"attempt-{attempt}.log"), offset, pending), timestamps, since)
                yield f"--- attempt {attempt} was preempted; attempt {job['attempts']} waits in the queue ---\n".encode()
                attempt, offset, pending = job["attempts"], 0, b""
            if attempt is not None:
                data = _read_from(logtext.live_log_path(directory, attempt), offset)
                if data:
                    offset += len(data)
                    data, cut = pending + data, (pending + data).rfind(b"\n") + 1
                    data, pending = data[:cut], data[cut:]
                    yield from logtext.select([data], timestamps, since)
                    continue
            if client_gone(sock):
                return
            time.sleep(LOG_POLL_INTERVAL)

    def generate():
        try:
            if follow:
                yield b""  # the headers go out now, so a client sees its stream open even while the workload is silent
            yield from (follow_live() if follow else snapshot())
        finally:
            if release:
                release()

    response = Response(stream_with_context(generate()), mimetype="text/plain", headers={"X-Accel-Buffering": "no", "Cache-Control": "no-cache"})
    if release:
        response.call_on_close(release)  # also when the stream never started
    return response


@route("/jobs/<job_id>/outputs", summary="A job's /outputs directory as a .tar.gz", streaming=True, job_token=True)
def job_outputs(job_id: str):
    _visible_job(job_id)
    from mlpd.kinds.outputs import iter_tar_gz

    try:
        stream = iter_tar_gz(os.path.join(jobs.job_dir(config().state_dir, job_id), "outputs"))
    except OSError:
        raise ApiError(404, "not_found", f"job {job_id} has no outputs (it has not started yet)") from None
    return Response(stream, mimetype="application/gzip", headers={"Content-Disposition": f"attachment; filename=outputs-{job_id}.tar.gz"})


def _check_digest(digest: str) -> str:
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ApiError(400, "invalid_field", "digest: expected the sha256 of the archive, 64 lowercase hex characters")
    return digest


@route("/code/<digest>", summary="Whether you have uploaded this code archive (200) or not (404)")
def code_status(digest: str):
    _check_digest(digest)
    if not (os.path.isdir(jobs.code_dir(config().state_dir, digest)) and jobs.holds_code(store(), digest, g.user.name)):
        raise ApiError(404, "not_found", f"you have no code archive {digest[:12]}... on the daemon")
    return jsonify({"digest": digest, "present": True})


@route("/code/<digest>", methods=("PUT",), summary="Upload a code archive (.tar.gz body; content-addressed by its sha256; yours to run once sent)")
def upload_code(digest: str):
    _check_digest(digest)
    check_disk(request.content_length or 0, "a code archive")
    cfg = config()
    dest = jobs.code_dir(cfg.state_dir, digest)
    if os.path.isdir(dest) and jobs.holds_code(store(), digest, g.user.name):
        return jsonify({"digest": digest, "present": True, "uploaded": False})
    limit = cfg["jobs.max_code_mb"] * 1024 * 1024
    if request.content_length and request.content_length > limit:
        raise ApiError(413, "too_large", f"code archive is {request.content_length} bytes; the limit is {cfg['jobs.max_code_mb']} MiB (jobs.max_code_mb). Add large files to .mlpdignore")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    h, size = hashlib.sha256(), 0
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(dest), suffix=".upload", delete=False) as tmp:
        try:
            while chunk := request.stream.read(65536):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"code archive is over the {cfg['jobs.max_code_mb']} MiB limit (jobs.max_code_mb); add large files to .mlpdignore")
                h.update(chunk)
                tmp.write(chunk)
            tmp.close()
            if h.hexdigest() != digest:
                raise ApiError(400, "digest_mismatch", f"digest: the body's sha256 is {h.hexdigest()}, not {digest}")
            try:
                files = extract_archive(tmp.name, dest, max_bytes=limit, max_members=cfg["jobs.max_code_files"])
            except FileExistsError:
                files = None  # stored already (by someone else, or a concurrent upload): same content
            except CodeArchiveError as exc:
                raise ApiError(400, "invalid_archive", str(exc)) from None
        finally:
            os.unlink(tmp.name)
    jobs.grant_code(store(), digest, g.user.name)  # they sent the bytes: theirs to run
    return jsonify({"digest": digest, "present": True, "uploaded": True, "files": files}), 201


@route("/gpus", summary="GPUs with who holds each")
def list_gpus():
    cfg = config()
    drained = drains(store(), cfg["gpus.drained"], inventory().devices())
    sharers = gpu_sharers(store())
    stray = stray_gpus(store())
    out = []
    for d in inventory().devices():
        item = d.to_dict()
        item["drained"] = d.uuid in drained
        item["drain_reason"] = drained.get(d.uuid)
        held = sharers.get(d.uuid, [])
        item["holder"] = held[0] if held else None  # the first holder (as before sharing); all of them in "holders"
        item["holders"] = held
        item["shared"] = any(h["share"] < 1 for h in held)  # held by shares (--gpus 0.5): takes no whole-GPU work
        item["share_used"] = as_gpus(sum(h["share"] for h in held))
        item["stray_pids"] = stray.get(d.uuid, [])
        out.append(item)
    answer = {"gpus": out, "inventory": inventory().kind}
    if cfg["slurm.enabled"]:  # the cluster's nodes too, as Slurm sees them (docs/slurm.md)
        from mlpd.runtime.protocol import RuntimeFailure
        from mlpd.runtime.slurm import slurm_nodes

        try:
            answer["slurm_nodes"] = slurm_nodes()
        except RuntimeFailure as exc:
            answer["slurm_nodes"], answer["slurm_error"] = [], str(exc)
    return jsonify(answer)


DECLARE_BODY = {"count": Field(int, True, "how many GPUs to declare; 0 goes back to mlpd.toml's gpus.declare / the real GPUs"),
                "model": Field(str, doc="the model name shown (default: gpus.declared_model)")}


@route("/gpus/declare", methods=("POST",), summary="Declare test GPUs on a host without NVIDIA GPUs, at once and without a restart (0 undoes it)",
       admin=True, body=DECLARE_BODY)
def declare_gpus():
    from mlpd.runtime.gpus import declare

    data = json_body()
    count, model = data["count"], (data.get("model") or config()["gpus.declared_model"])[:128]
    if not 0 <= count <= 64:
        raise ApiError(400, "invalid_field", "count: expected 0 to 64")
    inv = inventory()
    if count and inv.base.kind == "nvml" and inv.base.devices():
        raise ApiError(409, "real_gpus", f"this host has {len(inv.base.devices())} NVIDIA GPUs; declared GPUs are only for hosts without them")
    held = gpu_holders(store())
    if held:
        raise ApiError(409, "gpus_in_use", f"{len(held)} GPUs are held by running work; declare GPUs when none are in use")
    declare(store(), g.user.name, count, model)
    wake("gpus declared")
    return jsonify({"gpus": [d.to_dict() for d in inv.devices()], "inventory": inv.kind})


@route("/gpus/<gpu>/drain", methods=("POST",), summary="Drain a GPU (index or UUID): running work finishes, nothing new is placed", admin=True,
       body={"reason": Field(str, False, "why, shown wherever the GPU is")})
def drain_gpu(gpu: str):
    reason = (json_body().get("reason") or "")[:500]
    device = find_gpu(inventory().devices(), gpu)
    set_drained(store(), device.uuid, True, g.user.name, reason)
    return jsonify({"gpu": device.uuid, "index": device.index, "drained": True, "reason": reason})


@route("/gpus/<gpu>/undrain", methods=("POST",), summary="Undrain a GPU: it takes new work again", admin=True)
def undrain_gpu(gpu: str):
    device = find_gpu(inventory().devices(), gpu)
    set_drained(store(), device.uuid, False, g.user.name)
    wake(f"undrained {device.uuid}")
    return jsonify({"gpu": device.uuid, "index": device.index, "drained": False})


@route("/images", summary="mlpd's images on this host")
def list_images():
    from mlpd.runtime.image_catalog import image_status

    return jsonify({"images": image_status(runtime(), config())})


@route("/images/build", methods=("POST",), summary="Build the images that are missing (streams progress)", admin=True, streaming=True)
def build_images():
    from mlpd.runtime.image_catalog import EXTRAS, build_missing

    rt, cfg = runtime(), config()
    force = request.args.get("force") in ("1", "true")
    extra = [name for name in request.args.get("with", "").split(",") if name]
    unknown = [name for name in extra if name not in EXTRAS]
    if unknown:
        raise ApiError(400, "invalid_field", f"with: unknown optional image {unknown[0]!r}: known are {', '.join(EXTRAS)}")

    def generate():
        try:
            for line in build_missing(rt, cfg, force=force, extra=extra):
                yield line + "\n"
        except Exception as exc:  # the response has started: report in-band
            yield f"ERROR: {exc}\n"

    return Response(stream_with_context(generate()), mimetype="text/plain")
