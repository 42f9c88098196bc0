"""Deployments: registered models served behind a stable endpoint (see mlpd.serving.deployments)."""

from __future__ import annotations

from flask import g, jsonify, request

from mlpd.serving import deployments as serving
from mlpd.serving.models import input_of
from mlpd.web import config, store
from mlpd.web.api_jobs import check_admission, check_disk, wake
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("serving")  # registered by the app factory (mlpd.web.create_app)
route = area.route

CREATE_BODY = {
    "model": Field(str, True, "MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/PATH"),
    "name": Field(str, False, "Deployment name, the endpoint's /serve/NAME (default: the model's name); one per daemon"),
    "gpus": Field(int, False, "GPUs per replica (default 0)"),
    "gpu_model": Field(str, False, "Only GPUs of this model"),
    "cpus": Field((int, float), False, "CPU limit per replica"),
    "memory": Field(str, False, "Memory limit per replica, e.g. 4g"),
    "replicas": Field(int, False, "Replicas of each version (1-16, default 1)"),
    "follow_alias": Field(bool, False, "Roll out the version the alias points to whenever it moves (default: true for models:/NAME@ALIAS)"),
    "auth": Field(str, False, "Who may call the endpoint: 'token' (the owner's or an admin's mlpd token, or the deployment's key; default) or 'none'"),
    "follow_foreign": Field(bool, False, "Follow the alias of a model someone else owns (refused without it: they choose what it runs)"),
    "gates": Field(list, False, "Quality gates on the version's source run, all of which must hold, e.g. [\"metrics.accuracy>=0.9\"]; "
                                "a version that fails one is never rolled out"),
}


def _visible(name: str) -> dict:
    from mlpd.roles import may_read

    dep = serving.get(store(), name) if isinstance(name, str) else None
    if dep is None or not may_read(store(), g.user, dep["owner"]):  # a viewer: their teams' members' (mlpd.roles)
        raise ApiError(404, "not_found", f"no such deployment {name[:60]!r}")
    return dep


def endpoint_base() -> str:
    """Where clients call deployments: the serving proxy (serving.listen) when the daemon runs one, else this address."""
    listen = config()["serving.listen"]
    if listen in ("", "auto"):  # "auto" is resolved by the daemon; an app made without one has no proxy
        return request.host_url
    host, _, port = listen.rpartition(":")
    if host.strip("[]") in ("0.0.0.0", "::"):
        host = request.host.rpartition(":")[0] if ":" in request.host else request.host
    return f"http://{host}:{port}/"


def view(dep: dict, detail: bool = False) -> dict:
    """A deployment as the API and the UI show it (with metrics and its input example when detail)."""
    st = store()
    metrics = serving.request_metrics(st, dep["id"]) if detail else []
    revs = serving.revisions(st, dep["id"])
    out = serving.view(dep, revs, serving.replicas(st, dep["id"]), endpoint_base(), detail, metrics)
    if detail:
        out["input"] = input_of(config().state_dir, dep, revs, out["endpoint"])
        from mlpd.serving import monitoring

        out["monitoring"] = monitoring.summary(st, dep["id"])
    return out


def spec_of(data: dict) -> tuple[dict, object]:
    """The deployment spec of a request body and the job spec of one of its replicas (both checked)."""
    spec = serving.parse_deployment_spec({k: data[k] for k in serving.SPEC_KEYS if k in data})
    job_spec = serving.replica_spec({"name": "x", "spec": spec}, {}, config(), 0)
    return spec, job_spec


@route("/deployments", methods=("POST",), summary="Serve a model: a deployment with a stable endpoint /serve/NAME/invocations; "
                                                  "answers its key once", body=CREATE_BODY)
def create_deployment():
    data = json_body()
    uri = data["model"]
    name = serving.check_name(data.get("name") or serving.default_name(uri))
    spec, job_spec = spec_of(data)
    check_admission(job_spec)
    check_disk()
    from mlpd.scheduling import quotas

    warnings = quotas.admit(store(), config(), g.user.name, spec["gpus"] * spec["replicas"],  # QuotaExceeded: 403
                            work=[spec] * spec["replicas"])
    dep, key = serving.create(store(), config(), g.user.name, name, uri, spec, data.get("follow_alias"),
                              follow_foreign=bool(data.get("follow_foreign")))
    wake(f"deployment {name} created")
    return jsonify({"deployment": view(dep), "key": key, "warnings": warnings}), 201


@route("/deployments", summary="List deployments (yours; admins ?all=1): model and version, state, endpoint, health, replicas")
def list_deployments():
    from mlpd.roles import is_viewer, readable_owners

    owner = None if (g.user.is_admin and request.args.get("all")) else g.user.name
    if is_viewer(g.user):
        owner = readable_owners(store(), g.user)
    return jsonify({"deployments": [view(d) for d in serving.list_deployments(store(), owner)]})


@route("/deployments/<name>", summary="A deployment: state, serving and rolling-out versions, replicas and their health, restarts, last error")
def show_deployment(name: str):
    return jsonify({"deployment": view(_visible(name), detail=True)})


UPDATE_BODY = {
    "model": Field(str, False, "The model URI to roll out (default: the deployment's own, resolved again)"),
    "follow_alias": Field(bool, False, "Follow the URI's alias from now on (default: true for models:/NAME@ALIAS)"),
    "canary": Field(int, False, "Send this percentage of requests (1-99) to the new version until promote or rollback"),
    "follow_foreign": Field(bool, False, "Follow the alias of a model someone else owns (refused without it: they choose what it runs)"),
}


@route("/deployments/<name>/update", methods=("POST",), summary="Roll out another model version: it takes the traffic once it "
                                                                  "answers /ping; one that does not is rolled back", body=UPDATE_BODY)
def update_deployment(name: str):
    dep = _visible(name)
    data = json_body()
    dep = serving.update(store(), config(), dep, g.user.name, data.get("model"), data.get("follow_alias"), canary=data.get("canary"),
                         follow_foreign=bool(data.get("follow_foreign")))
    wake(f"deployment {name} updated")
    return jsonify({"deployment": view(dep, detail=True)})


@route("/deployments/<name>/promote", methods=("POST",), summary="The canary takes all the traffic; the version it shared it with stops")
def promote_deployment(name: str):
    dep = _visible(name)
    serving.promote(store(), config(), dep, g.user.name)
    wake(f"deployment {name} promoted")
    return jsonify({"deployment": view(serving.must_get(store(), dep["id"]), detail=True)})


@route("/deployments/<name>/rollback", methods=("POST",), summary="Drop the canary (or a rollout in progress); the serving version keeps all the traffic")
def rollback_deployment(name: str):
    dep = _visible(name)
    what = serving.rollback(store(), dep, g.user.name)
    wake(f"deployment {name} rolled back")
    return jsonify({"rolled_back": what, "deployment": view(serving.must_get(store(), dep["id"]), detail=True)})


@route("/deployments/<name>/key", methods=("POST",), summary="Replace the deployment's key (the old one stops working); answers the new key once",
       credentials=True)
def rotate_deployment_key(name: str):
    dep = _visible(name)
    key = serving.rotate_key(store(), dep, g.user.name)
    return jsonify({"key": key})


@route("/deployments/<name>/logs", summary="A replica's output (?slot=N, default 0, of the version serving or rolling out; "
                                           "?job=ID for any of its replicas); ?follow=1 streams it", streaming=True)
def deployment_logs(name: str):
    dep = _visible(name)
    reps = serving.replicas(store(), dep["id"])
    job_id = request.args.get("job")
    if job_id:
        if job_id not in {r["job_id"] for r in reps}:
            raise ApiError(404, "not_found", f"deployment {name!r} has no replica {job_id[:20]!r}")
    else:
        try:
            slot = int(request.args.get("slot", 0))
        except ValueError:
            raise ApiError(400, "invalid_field", "slot: expected a whole number") from None
        revs = {r["id"]: r for r in serving.revisions(store(), dep["id"])}
        rolling = [r["id"] for r in revs.values() if r["state"] == "rolling"]
        order = ([dep["current"]] if dep["current"] else []) + rolling + [r["id"] for r in sorted(revs.values(), key=lambda r: -r["seq"])]
        found = None
        for rev_id in order:
            mine = [r for r in reps if r["revision"] == rev_id and r["slot"] == slot]
            if mine:
                found = mine[-1]
                break
        if found is None:
            raise ApiError(404, "not_found", f"deployment {name!r} has no replica in slot {slot} yet")
        job_id = found["job_id"]
    from mlpd.web.api_jobs import job_logs

    return job_logs(job_id=job_id)


@route("/models/<model>/versions/<version>/gates", summary="Which deployments following models:/MODEL@ALIAS (?alias=, default prod) "
                                                          "would hold VERSION back, and why (their quality gates); checked by 'mlpd models promote'")
def model_version_gates(model: str, version: str):
    alias = request.args.get("alias", "prod")
    _, fields = serving.resolve(config().state_dir, f"models:/{model}/{version}")
    held = []
    for dep in serving.list_deployments(store()):
        if dep["follow_alias"] and dep["model_uri"] == f"models:/{model}@{alias}":
            reason = serving.held_back(config().state_dir, dep["spec"].get("gates") or [], fields)
            if reason:
                held.append({"deployment": dep["name"], "owner": dep["owner"], "gates": dep["spec"]["gates"], "reason": reason})
    return jsonify({"model": model, "version": version, "alias": alias, "held_back": held})


@route("/deployments/<name>", methods=("DELETE",), summary="Remove a deployment: its replicas stop, its endpoint answers 404")
def remove_deployment(name: str):
    dep = _visible(name)
    serving.remove(store(), config(), dep, g.user.name)
    wake(f"deployment {name} removed")
    return jsonify({"removed": name})


PREDICT_BODY = {
    "model": Field(str, True, "MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/PATH "
                              "(pinned to the version it resolves to now)"),
    "input": Field(str, True, "The input's file name in the code archive: NAME.csv or NAME.parquet (.pq)"),
    "code": Field(str, True, "The digest of the uploaded code archive that holds the input (PUT /api/v1/code/DIGEST)"),
    "output": Field(str, False, "The predictions' file name in the job's outputs (default predictions.csv / predictions.parquet; "
                                "the input's format)"),
    "gpus": Field(int, False, "GPUs for the job (default 0)"),
}


@route("/predict", methods=("POST",), summary="Batch scoring: a job that scores a CSV or Parquet file with a model in its serving "
                                              "environment; the predictions land in its outputs", body=PREDICT_BODY)
def submit_prediction():
    from mlpd.serving import batch
    from mlpd.web.api_jobs import create_job, job_view

    data = json_body()
    gpus = data.get("gpus", 0)
    if gpus is None or isinstance(gpus, bool):
        gpus = 0
    batch.check_file_name(data["input"], "input")
    batch.format_of(data["input"])
    from mlpd import jobs

    if isinstance(data["code"], str) and jobs.holds_code(store(), data["code"], g.user.name):
        batch.check_input_shipped(jobs.code_dir(config().state_dir, data["code"]), data["input"])
    _, fields = serving.resolve(config().state_dir, data["model"])
    spec = batch.job_spec(fields, config()["jobs.default_image"], data["input"], data.get("output"), data["code"], gpus)
    job, warnings = create_job(spec)
    output = spec["command"][5]
    return jsonify({"job": job_view(job), "warnings": warnings, "model": fields["model_uri"], "output": output}), 201
