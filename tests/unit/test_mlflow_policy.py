"""mlpd.tracking.policy and mlpd.tracking.server's pure parts: who may do what to MLflow, and how creates are rewritten."""

from __future__ import annotations

import base64

import pytest

from mlpd.config import ConfigError, load_config
from mlpd.tracking.policy import (Refused, artifact_target, classify, job_tags, may_change, protected_key, rewrite_create_run,
                                rewrite_owned_create, tags_written, unsafe_path)
from mlpd.tracking import server as tracking

PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/")


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("endpoint, kind, ref", [
    ("runs/delete", "run", "run_id"), ("runs/log-metric", "run", "run_id"), ("runs/log-batch", "run", "run_id"),
    ("runs/set-tag", "run", "run_id"), ("runs/update", "run", "run_id"), ("runs/restore", "run", "run_id"),
    ("experiments/delete", "experiment", "experiment_id"), ("experiments/update", "experiment", "experiment_id"),
    ("experiments/set-experiment-tag", "experiment", "experiment_id"),
    ("registered-models/delete", "registered_model", "name"), ("registered-models/rename", "registered_model", "name"),
    ("registered-models/alias", "registered_model", "name"), ("model-versions/create", "registered_model", "name"),
    ("model-versions/delete", "registered_model", "name"),
])
def test_mutations_are_checked_against_the_owner_under_both_prefixes(prefix, endpoint, kind, ref):
    method = "DELETE" if endpoint.endswith("delete") and endpoint.startswith(("registered", "model-versions")) else "POST"
    rule = classify(method, prefix + endpoint)
    assert (rule.action, rule.kind, rule.ref) == ("owned", kind, ref)


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/2.0/mlflow/runs/get"), ("POST", "/api/2.0/mlflow/runs/search"),
    ("POST", "/ajax-api/2.0/mlflow/experiments/search"), ("POST", "/api/2.0/mlflow/registered-models/get-latest-versions"),
    ("GET", "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/x"), ("GET", "/"), ("GET", "/static-files/main.js"),
    ("POST", "/graphql"),
])
def test_reads_are_open_to_every_user(method, path):
    assert classify(method, path).action == "read"


def test_creates_are_rewritten_and_unknown_mutations_are_for_admins():
    assert classify("POST", "/api/2.0/mlflow/runs/create").action == "create_run"
    assert classify("POST", "/api/2.0/mlflow/experiments/create").action == "create_owned"
    assert classify("POST", "/ajax-api/2.0/mlflow/registered-models/create").action == "create_owned"
    assert classify("POST", "/api/2.0/mlflow/logged-models").kind == "logged_model"
    assert classify("DELETE", "/api/2.0/mlflow/logged-models/m-123").ref == "m-123"
    assert classify("POST", "/api/2.0/mlflow/logged-models/search").action == "read"
    for method, path in [("POST", "/api/3.0/mlflow/gateway/secrets/create"), ("POST", "/ajax-api/3.0/mlflow/demo/delete"),
                         ("POST", "/api/2.0/mlflow/webhooks"), ("POST", "/api/2.0/mlflow/some-new-endpoint")]:
        assert classify(method, path).action == "admin", path


def test_artifact_writes_name_their_run_or_model():
    rule = classify("PUT", "/api/2.0/mlflow-artifacts/artifacts/3/" + "a" * 32 + "/artifacts/model/x.pkl")
    assert rule.action == "artifact_write"
    assert artifact_target(rule.ref) == tracking_target("3", "run", "a" * 32)
    assert artifact_target("3/models/m-1/artifacts/MLmodel") == tracking_target("3", "logged_model", "m-1")
    assert artifact_target("3/traces/tr-1/artifacts/x").kind == ""
    assert classify("DELETE", "/ajax-api/2.0/mlflow-artifacts/artifacts/1/x").action == "artifact_write"
    assert classify("POST", "/api/2.0/mlflow-artifacts/mpu/create/1/x").action == "artifact_write"
    assert classify("POST", "/ajax-api/2.0/mlflow/upload-artifact").ref == "?run_uuid"


def tracking_target(experiment, kind, id):
    from mlpd.tracking.policy import ArtifactTarget

    return ArtifactTarget(experiment, kind, id)


@pytest.mark.parametrize("path", [
    "../x", "a/../../b", "a/%2e%2e/b", "a/%2E%2E%2Fb", "a/%252e%252e/b", "..%2f..%2fetc/passwd", "/etc/passwd",
    "a\\..\\b", "a/./b", "a/\x00b", "C:/Windows",
])
def test_traversal_in_artifact_paths_is_detected(path):
    assert unsafe_path(path)


@pytest.mark.parametrize("path", ["1/abc/artifacts/model.pkl", "a..b/c", "x/file.tar.gz", "data/%20space", ""])
def test_ordinary_artifact_paths_pass(path):
    assert not unsafe_path(path)


def test_create_run_records_the_token_user_and_drops_forged_tags():
    body = {"experiment_id": "1", "user_id": "bob", "run_name": "r",
            "tags": [{"key": "mlflow.user", "value": "bob"}, {"key": "mlpd.job_id", "value": "forged"}, {"key": "team", "value": "x"}]}
    out = rewrite_create_run(body, "alice", {"mlpd.job_id": "j1"})
    assert out["user_id"] == "alice" and out["run_name"] == "r" and out["experiment_id"] == "1"
    tags = {t["key"]: t["value"] for t in out["tags"]}
    assert tags == {"team": "x", "mlflow.user": "alice", "mlpd.user": "alice", "mlpd.job_id": "j1"}
    assert body["user_id"] == "bob"  # the input is not modified
    with pytest.raises(Refused):
        rewrite_create_run({"tags": "nope"}, "alice")


def test_owned_creates_carry_the_owner_tag_whatever_the_client_sent():
    out = rewrite_owned_create({"name": "m", "tags": [{"key": "mlpd.owner", "value": "bob"}]}, "alice")
    assert out["tags"] == [{"key": "mlpd.owner", "value": "alice"}]
    assert rewrite_owned_create({"name": "e"}, "carol")["tags"] == [{"key": "mlpd.owner", "value": "carol"}]


def test_protected_tags_are_found_in_every_request_that_writes_tags():
    assert tags_written("runs/set-tag", {"key": "mlpd.job_id"}) == ["mlpd.job_id"]
    assert tags_written("runs/log-batch", {"tags": [{"key": "a"}, {"key": "mlflow.user"}]}) == ["a", "mlflow.user"]
    assert tags_written("registered-models/delete-tag", {"key": "mlpd.owner"}) == ["mlpd.owner"]
    assert tags_written("logged-models/m1/tags/mlpd.owner", {}) == ["mlpd.owner"]
    assert tags_written("runs/log-metric", {"key": "loss"}) == []
    assert protected_key("mlpd.owner") and protected_key("mlflow.user") and not protected_key("mlflow.runName")


def test_owners_and_admins_may_change_nobody_else_and_ownerless_objects_are_admin_only():
    assert may_change("alice", False, "alice")
    assert not may_change("bob", False, "alice")
    assert may_change("root", True, "alice")
    assert not may_change("alice", False, "") and may_change("root", True, "")


def test_job_tags_name_the_job_gpus_image_and_code():
    job = {"id": "j1", "gpu_uuids": ["GPU-a", "GPU-b"], "gpu_indices": [0, 3], "spec": {"image": None, "code": "ab" * 32}}
    assert job_tags(job, "mlpd/train:latest") == {"mlpd.job_id": "j1", "mlpd.gpu_uuids": "GPU-a,GPU-b", "mlpd.gpu_indices": "0,3",
                                                  "mlpd.image": "mlpd/train:latest", "mlpd.code_digest": "ab" * 32}


def test_tokens_come_from_bearer_or_basic_password():
    from mlpd.web.mlflow_mount import presented_token

    assert presented_token({"HTTP_AUTHORIZATION": "Bearer mlpd_x"}) == "mlpd_x"
    basic = base64.b64encode(b"anyone:mlpd_y").decode()
    assert presented_token({"HTTP_AUTHORIZATION": f"Basic {basic}"}) == "mlpd_y"
    assert presented_token({"HTTP_AUTHORIZATION": "Basic !!!"}) is None
    assert presented_token({}) is None


def test_container_url_and_allowed_hosts_follow_the_configuration(tmp_path):
    cfg = load_config(None, {"server.container_listen": "172.17.0.1:9000", "server.listen": "127.0.0.1:8470"})
    assert tracking.container_url(cfg) == "http://host.docker.internal:9000"
    hosts = tracking.allowed_hosts(cfg)
    assert "host.docker.internal:*" in hosts and "127.0.0.1:*" in hosts and "172.17.0.1:*" in hosts
    cfg = load_config(None, {"server.container_listen": "", "server.listen": "0.0.0.0:8470"})
    assert tracking.container_url(cfg) == "http://host.docker.internal:8470"
    assert tracking.container_url(load_config(None, {"server.container_listen": ""})) is None
    env = tracking.server_env(load_config(None, {"server.state_dir": str(tmp_path)}))
    assert env["_MLFLOW_SERVER_FILE_STORE"] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert env["_MLFLOW_SERVER_ARTIFACT_ROOT"] == "mlflow-artifacts:/" and env["_MLFLOW_STATIC_PREFIX"] == "/mlflow"


@pytest.mark.parametrize("key, value", [("server.container_listen", "host:port"), ("mlflow.default_experiment", "jobs-{user}"),
                                        ("mlflow.default_experiment", " ")])
def test_bad_mlflow_settings_are_refused_with_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert err.value.key == key


# ---------------------------------------------------------------- issue 9: the object checked is the object acted on


def test_a_body_is_canonicalised_to_the_fields_mlflow_reads():
    from mlpd.tracking.policy import canonical_body

    assert canonical_body({"runId": "a", "key": "k"}) == {"run_id": "a", "key": "k"}
    assert canonical_body({"runUuid": "a"}) == {"run_uuid": "a", "run_id": "a"}
    assert canonical_body({"experimentId": "3", "newName": "x"}) == {"experiment_id": "3", "new_name": "x"}
    assert canonical_body({"run_id": "a", "run_uuid": "a"}) == {"run_id": "a", "run_uuid": "a"}
    for twice in ({"runId": "a", "run_uuid": "b"}, {"run_id": "b", "runUuid": "a"}, {"runId": "a", "run_id": "b"},
                  {"experimentId": "1", "experiment_id": "1"}, {"run_id": "a", "run_uuid": "b"}):
        with pytest.raises(Refused) as info:
            canonical_body(twice)
        assert (info.value.status, info.value.code) == (400, "ambiguous_request"), twice


def test_storage_locations_are_the_daemons():
    from mlpd.tracking.policy import check_create_locations, in_store

    for body in ({"name": "e", "artifact_location": "/etc"}, {"name": "e", "artifact_location": "file:///tmp/x"},
                 {"name": "e", "artifact_location": "mlflow-artifacts:/elsewhere"}):
        with pytest.raises(Refused, match="artifact_location"):
            check_create_locations("experiments/create", body)
    check_create_locations("experiments/create", {"name": "e"})
    check_create_locations("experiments/create", {"name": "e", "artifact_location": ""})
    for source in ("/etc", "file:///etc", "http://10.0.0.1/x", "s3://b/k", "", None, 3):
        with pytest.raises(Refused, match="source"):
            check_create_locations("model-versions/create", {"name": "m", "source": source})
    for source in ("runs:/abc/model", "models:/m-123", "mlflow-artifacts:/1/abc/artifacts/model"):
        check_create_locations("model-versions/create", {"name": "m", "source": source})
    assert in_store("mlflow-artifacts:/1/abc/artifacts") and in_store("mlflow-artifacts:/")
    for outside in ("/etc", "file:///etc", "", None, "mlflow-artifacts:/../../etc", "s3://b/k"):
        assert not in_store(outside), outside


def test_experiment_ids_are_plain_digits_as_mlflow_and_sqlite_both_read_them():
    from mlpd.tracking.policy import canonical_body

    assert canonical_body({"experimentId": "007"}) == {"experiment_id": "7"}
    assert canonical_body({"experiment_id": 12}) == {"experiment_id": "12"}
    for bad in ("0_2", "\uff12", " 2", "2 ", "-1", "1e3", True, [1], "1" * 19):
        with pytest.raises(Refused) as info:
            canonical_body({"experiment_id": bad})
        assert info.value.code == "invalid_field", bad


def test_the_logged_models_and_traces_a_body_names_are_found_in_every_spelling():
    from mlpd.tracking.policy import logged_models_named, trace_ids_named

    body = {"model_id": "m-1", "metrics": [{"key": "a", "modelId": "m-2"}, {"key": "b"}], "models": [{"model_id": "m-3"}],
            "source": "models:/m-4"}
    assert logged_models_named(body) == ["m-1", "m-2", "m-3", "m-4"]
    assert logged_models_named({"source": "models:/churn/3"}) == []
    assert trace_ids_named({"trace": {"trace_info": {"trace_id": "tr-1"}}}) == ["tr-1"]
    assert trace_ids_named({"trace": {"traceInfo": {"traceId": "tr-2"}}}) == ["tr-2"]
    with pytest.raises(Refused):
        trace_ids_named({"trace": {"trace_info": {"trace_id": "a", "traceId": "b"}}})
