"""mlpd.serving.models and the pure parts of mlpd.serving.deployments: model URIs, requirements, copying out of the store."""

from __future__ import annotations

import os

import pytest

from mlpd.tracking import server as tracking
from mlpd.serving.deployments import DeploymentError, default_name, parse_deployment_spec
from mlpd.serving.models import ModelError, copy_model, parse_uri, read_store_file, serving_requirements

RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("uri, fields", [
    ("models:/churn@prod", {"name": "churn", "alias": "prod"}),
    ("models:/churn/3", {"name": "churn", "version": "3"}),
    (f"runs:/{RUN}/model", {"run_id": RUN, "path": "model"}),
    (f"runs:/{RUN}/nested/model/", {"run_id": RUN, "path": "nested/model"}),
    ("models:/m-" + "a" * 32, {"model_id": "m-" + "a" * 32}),
])
def test_model_uris_mlpd_serves(uri, fields):
    ref = parse_uri(uri)
    assert {k: v for k, v in vars(ref).items() if v is not None and k != "uri"} == fields


@pytest.mark.parametrize("uri", ["churn", "models:/churn", "models:/churn/0", "models:/a/b/3", "models:/churn@", f"runs:/{RUN}",
                                 f"runs:/{RUN}/../x", f"runs:/{RUN}/%2e%2e/x", "runs:/short/model", "s3://bucket/model",
                                 "file:///etc/passwd", "models:/churn/3?x=1", 42, None])
def test_anything_else_is_refused_with_the_forms_it_takes(uri):
    with pytest.raises(ModelError) as err:
        parse_uri(uri)
    assert err.value.status == 400 and "models:/NAME@ALIAS" in err.value.message


def test_the_scoring_server_comes_from_the_image_not_from_the_model():
    text = "mlflow==3.17.2\ncloudpickle==3.1.2\n# a comment\nMLflow-Skinny>=3\nscikit-learn==1.9.1  # pinned\nnumpy==2.4.6\n"
    assert serving_requirements(text) == "cloudpickle==3.1.2\nscikit-learn==1.9.1\nnumpy==2.4.6\n"
    assert serving_requirements("mlflow==3.17.2\n") is None and serving_requirements(None) is None


def test_default_names_are_valid_deployment_names():
    assert default_name("models:/Churn_Model@prod") == "churn-model"
    assert default_name(f"runs:/{RUN}/model") == "run-01234567"


def test_deployment_specs_are_checked_with_the_job_specs_rules():
    assert parse_deployment_spec({"replicas": 2, "gpus": 1, "memory": "2g"})["replicas"] == 2
    for bad, says in [({"replicas": 0}, "replicas"), ({"replicas": True}, "replicas"), ({"auth": "open"}, "auth"),
                      ({"gpus": -1}, "gpus"), ({"image": "x"}, "not a deployment setting"), ({"memory": "lots"}, "memory")]:
        with pytest.raises(DeploymentError) as err:
            parse_deployment_spec(bad)
        assert says in err.value.message, (bad, err.value.message)


def make_store(tmp_path):
    model = os.path.join(tracking.artifacts_dir(str(tmp_path)), "1", "models", "m-1", "artifacts")
    os.makedirs(os.path.join(model, "sub"))
    for name, data in [("MLmodel", "flavors: {}\n"), ("requirements.txt", "numpy\n"), ("sub/weights.bin", "w" * 100)]:
        with open(os.path.join(model, name), "w") as fh:
            fh.write(data)
    return model, "mlflow-artifacts:/1/models/m-1/artifacts"


def test_a_model_is_copied_world_readable_into_a_directory_of_the_daemons(tmp_path):
    _, location = make_store(tmp_path)
    dest = str(tmp_path / "copy")
    assert copy_model(str(tmp_path), location, dest) == len("flavors: {}\n") + len("numpy\n") + 100
    assert sorted(os.listdir(dest)) == ["MLmodel", "requirements.txt", "sub"]
    assert os.stat(os.path.join(dest, "sub", "weights.bin")).st_mode & 0o777 == 0o644
    assert read_store_file(str(tmp_path), location, "requirements.txt") == "numpy\n"
    assert read_store_file(str(tmp_path), location, "absent.txt") is None


def test_links_in_the_store_are_refused_never_followed(tmp_path):
    model, location = make_store(tmp_path)
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    os.symlink(secret, os.path.join(model, "stolen"))
    with pytest.raises(ModelError) as err:
        copy_model(str(tmp_path), location, str(tmp_path / "copy"))
    assert err.value.status == 403 and "link" in err.value.message
    os.symlink(secret, os.path.join(model, "req-link.txt"))
    assert read_store_file(str(tmp_path), location, "req-link.txt") is None
    # a link in the middle of the location is refused too
    os.rename(model, model + "-real")
    os.symlink(model + "-real", model)
    assert read_store_file(str(tmp_path), location, "requirements.txt") is None


# ---------------------------------------------------------------- what a model takes (deployments show)

MLMODEL = """flavors:
  python_function:
    loader_module: mlflow.sklearn
saved_input_example_info:
  artifact_path: input_example.json
  pandas_orient: split
  serving_input_path: serving_input_example.json
  type: dataframe
signature:
  inputs: '[{"type": "double", "name": "x", "required": true}, {"type": "double",
    "name": "y", "required": true}]'
  outputs: '[{"type": "double", "required": true}]'
  params: null
"""


def _model(tmp_path, files: dict[str, str]) -> tuple[str, str]:
    state = str(tmp_path / "state")
    path = os.path.join(tracking.artifacts_dir(state), "1", "models", "m-1", "artifacts")
    os.makedirs(path)
    for name, text in files.items():
        with open(os.path.join(path, name), "w") as fh:
            fh.write(text)
    return state, "mlflow-artifacts:/1/models/m-1/artifacts"


def test_the_input_columns_and_example_come_from_the_models_signature_and_saved_example(tmp_path):
    from mlpd.serving.models import input_of, input_schema

    example = '{"dataframe_split": {"columns": ["x", "y"], "data": [[1.0, 0.5]]}}'
    state, location = _model(tmp_path, {"MLmodel": MLMODEL, "serving_input_example.json": example})
    schema = input_schema(state, location)
    assert schema["inputs"] == [{"name": "x", "type": "double", "required": True}, {"name": "y", "type": "double", "required": True}]
    assert schema["example"] == {"dataframe_split": {"columns": ["x", "y"], "data": [[1.0, 0.5]]}}
    assert schema["note"] == "the input example logged with the model"
    dep = {"current": "r1", "spec": {"auth": "token"}}
    shown = input_of(state, dep, [{"id": "r1", "state": "serving", "location": location, "model_version": "2"}],
                     "http://127.0.0.1:8080/serve/iris/invocations")
    assert shown["version"] == "2"
    assert shown["curl"] == ("curl -sS -X POST http://127.0.0.1:8080/serve/iris/invocations -H \"Authorization: Bearer $MLPD_TOKEN\" "
                             "-H 'Content-Type: application/json' -d '{\"dataframe_split\":{\"columns\":[\"x\",\"y\"],\"data\":[[1.0,0.5]]}}'")


def test_without_a_saved_example_one_is_made_from_the_signature_and_without_a_signature_it_says_so(tmp_path):
    from mlpd.serving.models import input_schema

    state, location = _model(tmp_path, {"MLmodel": MLMODEL.replace("serving_input_path: serving_input_example.json", "")})
    schema = input_schema(state, location)
    assert schema["example"] == {"dataframe_split": {"columns": ["x", "y"], "data": [[0.0, 0.0]]}}
    assert "placeholder" in schema["note"]
    bare = tmp_path / "bare"
    state, location = _model(bare, {"MLmodel": "flavors: {}\n"})
    schema = input_schema(state, location)
    assert schema["inputs"] is None and schema["example"] is None and "without a signature" in schema["note"]
    link = tmp_path / "link"
    state, location = _model(link, {"MLmodel": MLMODEL})
    os.symlink("/etc/passwd", os.path.join(tracking.artifacts_dir(state), "1", "models", "m-1", "artifacts", "serving_input_example.json"))
    assert input_schema(state, location)["example"] == {"dataframe_split": {"columns": ["x", "y"], "data": [[0.0, 0.0]]}}  # no link followed
