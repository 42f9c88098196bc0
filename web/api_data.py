"""Datasets (what you may read; admins declare them) and disk use of homes and team folders."""

from __future__ import annotations

from flask import g, jsonify, request

from mlpd import datasets, disk_use
from mlpd.web import config, store
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("data")  # registered by the app factory (mlpd.web.create_app)
route = area.route

MAX_SUBJECTS = 200  # teams or users one dataset may name


@route("/datasets", summary="The datasets you may read: name, path in your containers (/datasets/NAME), size (measured in the "
       "background; null until then) and whether writable", job_token=True)
def list_datasets():
    return jsonify({"datasets": datasets.listing(store(), config(), g.user.name)})


@route("/admin/datasets", summary="Every dataset: host path, who may read it, writable, where declared (mlpd.toml or admin), size, "
       "and the reason a launch would refuse it now (problem)", admin=True)
def admin_list_datasets():
    return jsonify({"datasets": datasets.admin_listing(store(), config())})


def _names(body: dict, key: str) -> list[str]:
    values = body.get(key) or []
    if len(values) > MAX_SUBJECTS or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in values):
        raise ApiError(400, "invalid_field", f"{key}: expected a list of at most {MAX_SUBJECTS} names")
    return values


@route("/admin/datasets", methods=("POST",), admin=True, summary="Declare a dataset (audited): a host directory mounted at /datasets/NAME "
       "in the work of the teams and users named (none = everyone), read-only unless writable; the path is checked now and at every launch",
       body={"name": Field(str, True, "the dataset's name (/datasets/NAME)"), "path": Field(str, True, "absolute path of a directory on the host"),
             "teams": Field(list, False, "teams whose members may read it"), "users": Field(list, False, "users who may read it"),
             "writable": Field(bool, False, "mounted read-write (default: read-only)")})
def admin_add_dataset():
    body = json_body()
    added = datasets.add(store(), config(), body["name"], body["path"], _names(body, "teams"), _names(body, "users"),
                         bool(body.get("writable")), g.user.name)
    return jsonify({"dataset": added.to_dict()}), 201


@route("/admin/datasets/<name>", methods=("DELETE",), admin=True,
       summary="Remove a dataset added at run time (audited); running work keeps its mount until it ends, the files stay")
def admin_remove_dataset(name: str):
    return jsonify(datasets.remove(store(), config(), name, g.user.name))


@route("/usage/disk", summary="Disk use of your home and your teams' folders as last measured, with quotas.home_gb and "
       "quotas.team_gb (admins: ?all=1 for every home and team)")
def disk_usage():
    if request.args.get("all") and g.user.is_admin:
        return jsonify(disk_use.all_usage(store(), config()))
    return jsonify(disk_use.usage_of(store(), config(), g.user.name))
