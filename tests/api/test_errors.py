"""The one error shape where no view runs (unknown routes, wrong methods, bodies that are not
JSON) and where success needs state the fast tier does not make (a model in MLflow)."""

from __future__ import annotations

from app_client import api, error_of  # noqa: F401  (api: the fixture)


def test_an_unknown_route_is_json_404_pointing_at_the_openapi_document(api):
    response = api.call("GET", "no/such/route", api.member)
    assert error_of(response) == (404, "not_found")
    assert "openapi.json" in response.get_json()["error"]["message"]


def test_a_wrong_method_is_405_naming_the_allowed_ones(api):
    response = api.call("PATCH", "jobs", api.member)
    assert error_of(response) == (405, "method_not_allowed")
    assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_a_body_that_is_not_json_or_not_an_object_or_has_unknown_fields_is_400(api):
    bad_json = api.call("POST", "teams", api.admin, data=b"{not json", headers={"Content-Type": "application/json"})
    assert error_of(bad_json) == (400, "invalid_json")
    not_object = api.call("POST", "teams", api.admin, json=["vision"])
    assert error_of(not_object) == (400, "invalid_body")
    unknown = api.call("POST", "teams", api.admin, json={"name": "vision", "colour": "red"})
    assert error_of(unknown) == (400, "invalid_field")
    assert "colour: unknown field" in unknown.get_json()["error"]["message"]
    missing = api.call("POST", "teams", api.admin, json={})
    assert error_of(missing) == (400, "missing_field")


def test_a_deployment_of_a_model_mlflow_does_not_have_is_404_and_leaves_nothing(api):
    response = api.call("POST", "deployments", api.member, json={"model": "models:/nosuch/1", "name": "absent"})
    assert error_of(response) == (404, "not_found")
    assert api.call("GET", "deployments", api.member).get_json()["deployments"] == []


def test_logs_of_a_job_that_never_ran_are_empty_and_its_outputs_404(api):
    job = api.call("POST", "jobs", api.member, json={"command": ["true"]}).get_json()["job"]["id"]
    logs = api.call("GET", f"jobs/{job}/logs", api.member)
    assert (logs.status_code, logs.get_data()) == (200, b"")
    assert error_of(api.call("GET", f"jobs/{job}/outputs", api.member)) == (404, "not_found")


def test_a_code_archive_must_match_its_name(api):
    response = api.call("PUT", "code/" + "0" * 64, api.member, data=b"not an archive")
    assert error_of(response) == (400, "digest_mismatch")
    assert error_of(api.call("GET", "code/" + "0" * 64, api.member)) == (404, "not_found")
    assert error_of(api.call("GET", "code/nothex", api.member)) == (400, "invalid_field")


def test_another_members_job_is_404_not_403(api):
    job = api.call("POST", "jobs", api.member, json={"command": ["true"]}).get_json()["job"]["id"]
    other = api.user("other")
    assert error_of(api.call("GET", f"jobs/{job}", other)) == (404, "not_found")
    assert error_of(api.call("POST", f"jobs/{job}/cancel", other)) == (404, "not_found")


def test_without_an_injected_runtime_the_app_connects_to_docker_and_says_when_it_cannot(tmp_path):
    """The daemon's path (create_app with no runtime): the engine is reached on first use, and an
    engine that does not answer is a 503 in the one error shape, not a crash."""
    from app_client import SHIPPED_CONFIG
    from mlpd import users
    from mlpd.config import load_config
    from mlpd.store import Store
    from mlpd.web import create_app

    cfg = load_config(SHIPPED_CONFIG, {"server.state_dir": str(tmp_path), "docker.host": "tcp://127.0.0.1:9"})
    Store(cfg.db_path).migrate()
    (tmp_path / "instance_id").write_text("nowhere\n")
    app = create_app(cfg)
    assert "mlpd.runtime.protocol" not in app.extensions
    store = app.extensions["mlpd.store"]
    users.add_user(store, "root", "admin")
    token, _ = users.create_token(store, "root")
    response = app.test_client().get("/api/v1/images", headers={"Authorization": f"Bearer {token}"})
    assert error_of(response) == (503, "docker_unavailable")
