"""The web UI's deployment pages: a member's served models (list, serve a model from the registry,
a deployment's versions, replicas, health and request numbers; promote, roll back, remove).
Every action goes through the same functions as the JSON API (web/api_serving.py, mlpd.serving.deployments)."""

from __future__ import annotations

from flask import g, redirect, render_template, request, url_for

from mlpd.serving import deployments as serving
from mlpd.errors import MlpdError
from mlpd.web import config, store
from mlpd.web.ui import ui


def _mine(name: str) -> dict:
    from mlpd.roles import may_read

    dep = serving.get(store(), name)  # theirs; any for admins; their teams' members' for a viewer (mlpd.roles)
    if dep is None or not may_read(store(), g.user, dep["owner"]):
        raise MlpdError(404, "not_found", f"no deployment {name[:60]!r}")
    return dep


@ui.route("/deployments", methods=("GET", "POST"))
def deployment_list():
    from mlpd.scheduling import quotas
    from mlpd.web.api_jobs import check_admission, check_disk, wake
    from mlpd.web.api_serving import spec_of, view

    values = {k: request.form.get(k, "").strip() for k in ("model", "name", "gpus")} if request.method == "POST" else {}
    errors: dict[str, str] = {}
    key = None
    if request.method == "POST":
        try:
            if not values["model"]:
                raise MlpdError(400, "invalid_field", "model: a model URI is needed, e.g. models:/churn@prod")
            try:
                gpus = int(values["gpus"] or 0)
            except ValueError:
                raise MlpdError(400, "invalid_field", f"gpus: expected a whole number, got {values['gpus']!r}") from None
            name = serving.check_name(values["name"] or serving.default_name(values["model"]))
            spec, job_spec = spec_of({"gpus": gpus})
            check_admission(job_spec)
            check_disk()
            quotas.admit(store(), config(), g.user.name, spec["gpus"] * spec["replicas"], work=[spec] * spec["replicas"])
            dep, key = serving.create(store(), config(), g.user.name, name, values["model"], spec, None)
            wake(f"deployment {name} created")
        except MlpdError as exc:
            field, _, rest = exc.message.partition(": ")
            errors[field if field in ("model", "name", "gpus") and rest else "_form"] = rest if field in ("model", "name", "gpus") and rest else exc.message
    everyone = g.user.is_admin and request.args.get("all") == "1"
    from mlpd.roles import is_viewer, readable_owners

    owner = readable_owners(store(), g.user) if is_viewer(g.user) else (None if everyone else g.user.name)
    rows = [view(d) for d in serving.list_deployments(store(), owner)]
    return render_template("deployments.html", rows=rows, values=values, errors=errors, key=key, everyone=everyone), 400 if errors else 200


@ui.route("/deployments/<name>")
def deployment(name: str):
    from mlpd.web.api_serving import view

    from markupsafe import Markup

    from mlpd.web.ui_charts import psi_bars

    d = view(_mine(name), detail=True)
    drift = {m["revision"]: Markup(psi_bars(f"Input drift of version {m['version'] or '-'} (PSI per feature)",
                                            [(f["feature"], f["psi"]) for f in m["features"] if f["psi"] is not None]))
             for m in d.get("monitoring") or []}
    return render_template("deployment.html", d=d, drift=drift)


@ui.route("/deployments/<name>/<action>", methods=("POST",))
def deployment_action(name: str, action: str):
    from mlpd.web.api_jobs import wake

    dep = _mine(name)
    if action == "remove":
        serving.remove(store(), config(), dep, g.user.name)
        wake(f"deployment {name} removed")
        return redirect(url_for("ui.deployment_list"), code=303)
    if action == "promote":
        serving.promote(store(), config(), dep, g.user.name)
    elif action == "rollback":
        serving.rollback(store(), dep, g.user.name)
    else:
        raise MlpdError(404, "not_found", "no such action")
    wake(f"deployment {name} {action}")
    return redirect(url_for("ui.deployment", name=name), code=303)
