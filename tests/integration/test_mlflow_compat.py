"""Plain MLflow client code against the embedded server, as a member: the classic half and MLflow 3's GenAI half.

Each check is ordinary MLflow 3 user code (what a notebook or a training script writes), run
by the real MLflow client in a subprocess with MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN
pointing at the daemon, as `eval "$(mlpd env)"` sets them. The script reports every check by
name; the test fails naming each check that did not behave as on a stock ``mlflow server``.

Then a second member runs MLflow client code against the first member's traces, assessments,
prompts and datasets: every change must be refused with MLflow's PERMISSION_DENIED (the client
raises it as such), and every read must work (a team reads each other's results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import new_user

# Shared by both scripts: run each check, record its outcome, print them all as JSON at the end.
PRELUDE = r'''
import json, os, sys, tempfile, time, traceback
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

RESULTS = []
STATE = json.loads(os.environ.get("COMPAT_STATE") or "{}")
client = MlflowClient()


def check(name):
    def run(fn):
        try:
            fn()
            RESULTS.append({"name": name, "ok": True})
        except Exception as exc:
            RESULTS.append({"name": name, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:600]}",
                            "where": traceback.format_exc()[-1200:]})
        return fn
    return run


def refused(fn, code="PERMISSION_DENIED"):
    """fn must raise MlflowException with this error code (what a client program catches)."""
    try:
        fn()
    except MlflowException as exc:
        assert exc.error_code == code, f"raised {exc.error_code}, not {code}: {exc.message[:300]}"
        return
    raise AssertionError(f"not refused: expected {code}")
'''

# The member's checks: the classic half, then traces, prompts and evaluation datasets.
MEMBER = PRELUDE + r'''
tag = os.environ["COMPAT_TAG"]
work = tempfile.mkdtemp()
S = {}


@check("experiments: set_experiment creates one")
def _():
    S["exp"] = mlflow.set_experiment(f"compat-{tag}").experiment_id
    assert client.get_experiment(S["exp"]).name == f"compat-{tag}"


@check("experiments: get_experiment_by_name")
def _():
    assert mlflow.get_experiment_by_name(f"compat-{tag}").experiment_id == S["exp"]


@check("experiments: set_experiment_tag")
def _():
    client.set_experiment_tag(S["exp"], "team", "vision")
    assert client.get_experiment(S["exp"]).tags["team"] == "vision"


@check("experiments: search_experiments with a filter")
def _():
    found = mlflow.search_experiments(filter_string=f"name = 'compat-{tag}'")
    assert [e.experiment_id for e in found] == [S["exp"]]


@check("runs: start_run and log_param, log_params")
def _():
    with mlflow.start_run(run_name="first") as run:
        S["run"] = run.info.run_id
        mlflow.log_param("lr", 0.1)
        mlflow.log_params({"batch": 32, "opt": "adam"})
    assert client.get_run(S["run"]).data.params == {"lr": "0.1", "batch": "32", "opt": "adam"}


@check("runs: the run's user is the member")
def _():
    assert client.get_run(S["run"]).info.user_id == os.environ["COMPAT_USER"]


@check("runs: log_metric with steps and get_metric_history")
def _():
    with mlflow.start_run(run_id=S["run"]):
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
    assert [m.step for m in client.get_metric_history(S["run"], "loss")] == [0, 1, 2, 3, 4]


@check("runs: log_metrics")
def _():
    with mlflow.start_run(run_id=S["run"]):
        mlflow.log_metrics({"acc": 0.9, "f1": 0.8}, step=1)
    assert client.get_run(S["run"]).data.metrics["f1"] == 0.8


@check("runs: set_tag, set_tags, delete_tag")
def _():
    with mlflow.start_run(run_id=S["run"]):
        mlflow.set_tag("stage", "dev")
        mlflow.set_tags({"a": "1", "b": "2"})
    client.delete_tag(S["run"], "b")
    tags = client.get_run(S["run"]).data.tags
    assert tags["stage"] == "dev" and tags["a"] == "1" and "b" not in tags


@check("runs: log_batch of 1000 metrics")
def _():
    from mlflow.entities import Metric
    now = int(time.time() * 1000)
    client.log_batch(S["run"], metrics=[Metric("batch", float(i), now, i) for i in range(1000)])
    assert len(client.get_metric_history(S["run"], "batch")) == 1000


@check("runs: log_input of a dataset")
def _():
    import pandas as pd
    dataset = mlflow.data.from_pandas(pd.DataFrame({"x": [1, 2]}), name="train")
    with mlflow.start_run(run_id=S["run"]):
        mlflow.log_input(dataset, context="training")
    assert client.get_run(S["run"]).inputs.dataset_inputs[0].dataset.name == "train"


@check("artifacts: log_text, log_dict, log_artifact")
def _():
    path = os.path.join(work, "notes.txt")
    with open(path, "w") as f:
        f.write("hello\n")
    with mlflow.start_run(run_id=S["run"]):
        mlflow.log_text("some text", "texts/a.txt")
        mlflow.log_dict({"k": 1}, "conf.json")
        mlflow.log_artifact(path, "files")
    names = {a.path for a in client.list_artifacts(S["run"])}
    assert {"texts", "conf.json", "files"} <= names, names


@check("artifacts: list_artifacts in a folder and download_artifacts")
def _():
    assert [a.path for a in client.list_artifacts(S["run"], "files")] == ["files/notes.txt"]
    local = mlflow.artifacts.download_artifacts(run_id=S["run"], artifact_path="files/notes.txt", dst_path=work + "/dl")
    assert open(local).read() == "hello\n"


@check("artifacts: load_text and load_dict")
def _():
    assert mlflow.artifacts.load_text(f"runs:/{S['run']}/texts/a.txt") == "some text"
    assert mlflow.artifacts.load_dict(f"runs:/{S['run']}/conf.json") == {"k": 1}


@check("runs: end_run status and update_run name")
def _():
    client.update_run(S["run"], status="FINISHED", name="renamed")
    run = client.get_run(S["run"])
    assert run.info.status == "FINISHED" and run.info.run_name == "renamed"


@check("search: search_runs with a filter and order")
def _():
    for i in range(3):
        with mlflow.start_run(run_name=f"sweep-{i}"):
            mlflow.log_metric("score", i)
    runs = mlflow.search_runs([S["exp"]], filter_string="metrics.score >= 1", order_by=["metrics.score DESC"])
    assert list(runs["metrics.score"]) == [2.0, 1.0]


@check("search: search_runs paging with page tokens")
def _():
    first = client.search_runs([S["exp"]], max_results=2)
    second = client.search_runs([S["exp"]], max_results=2, page_token=first.token)
    ids = [r.info.run_id for r in first] + [r.info.run_id for r in second]
    assert len(ids) == 4 and len(set(ids)) == 4


@check("runs: delete_run and restore_run")
def _():
    client.delete_run(S["run"])
    assert client.get_run(S["run"]).info.lifecycle_stage == "deleted"
    client.restore_run(S["run"])
    assert client.get_run(S["run"]).info.lifecycle_stage == "active"


@check("errors: a missing run raises RESOURCE_DOES_NOT_EXIST")
def _():
    refused(lambda: client.get_run("0" * 32), "RESOURCE_DOES_NOT_EXIST")


@check("models: log_model of a pyfunc creates a logged model")
def _():
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    with mlflow.start_run(run_name="model") as run:
        S["model_run"] = run.info.run_id
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo(), pip_requirements=[])
    S["model_uri"] = info.model_uri
    S["model_id"] = info.model_id
    assert client.get_logged_model(info.model_id).name == "echo"


@check("models: load_model and predict")
def _():
    import pandas as pd
    model = mlflow.pyfunc.load_model(S["model_uri"])
    assert list(model.predict(pd.DataFrame({"x": [3]}))["x"]) == [3]


@check("logged models: set_logged_model_tags and search_logged_models")
def _():
    client.set_logged_model_tags(S["model_id"], {"quality": "good"})
    found = mlflow.search_logged_models(experiment_ids=[S["exp"]], filter_string="name = 'echo'", output_format="list")
    assert [m.model_id for m in found] == [S["model_id"]] and found[0].tags["quality"] == "good"


@check("models: mlflow.models.evaluate of a regressor")
def _():
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LinearRegression
    X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    y = np.array([0.0, 1.0, 2.0, 3.0])
    with mlflow.start_run(run_name="evaluate"):
        info = mlflow.sklearn.log_model(LinearRegression().fit(X, y), name="lr", pip_requirements=[])
        result = mlflow.models.evaluate(info.model_uri, X.assign(y=y), targets="y", model_type="regressor", evaluators=["default"])
    assert result.metrics["mean_absolute_error"] < 1e-6, result.metrics


@check("registry: register_model")
def _():
    S["reg"] = f"compat-model-{tag}"
    version = mlflow.register_model(S["model_uri"], S["reg"])
    assert version.version == "1"


@check("registry: aliases")
def _():
    client.set_registered_model_alias(S["reg"], "champion", "1")
    assert client.get_model_version_by_alias(S["reg"], "champion").version == "1"
    assert mlflow.pyfunc.load_model(f"models:/{S['reg']}@champion") is not None


@check("registry: stages, tags and descriptions")
def _():
    client.transition_model_version_stage(S["reg"], "1", "Staging")
    client.set_model_version_tag(S["reg"], "1", "validated", "yes")
    client.update_registered_model(S["reg"], description="an echo")
    version = client.get_model_version(S["reg"], "1")
    assert version.current_stage == "Staging" and version.tags["validated"] == "yes"
    assert client.get_registered_model(S["reg"]).description == "an echo"


@check("registry: a second version, get_latest_versions, delete_registered_model_alias")
def _():
    mlflow.register_model(S["model_uri"], S["reg"])
    assert [v.version for v in client.get_latest_versions(S["reg"], stages=["None"])] == ["2"]
    client.set_registered_model_alias(S["reg"], "challenger", "2")
    client.delete_registered_model_alias(S["reg"], "challenger")
    assert "challenger" not in client.get_registered_model(S["reg"]).aliases


@check("registry: registered model tags and delete_model_version")
def _():
    client.set_registered_model_tag(S["reg"], "team", "vision")
    assert client.get_registered_model(S["reg"]).tags["team"] == "vision"
    client.delete_model_version(S["reg"], "2")
    assert [v.version for v in client.search_model_versions(f"name = '{S['reg']}'")] == ["1"]


@check("registry: rename and delete a registered model")
def _():
    spare = f"compat-spare-model-{tag}"
    client.create_registered_model(spare)
    client.rename_registered_model(spare, spare + "-renamed")
    client.delete_registered_model(spare + "-renamed")
    assert not client.search_registered_models(f"name = '{spare}-renamed'")


@check("logged models: initialize, log params and finalize")
def _():
    from mlflow.entities import LoggedModelStatus
    model = mlflow.initialize_logged_model(name="manual", experiment_id=S["exp"])
    client.log_model_params(model.model_id, {"depth": "3"})
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    found = client.get_logged_model(model.model_id)
    assert found.status == LoggedModelStatus.READY and found.params == {"depth": "3"}


@check("registry: search_registered_models and search_model_versions")
def _():
    assert [m.name for m in client.search_registered_models(f"name = '{S['reg']}'")] == [S["reg"]]
    assert [v.version for v in client.search_model_versions(f"name = '{S['reg']}'")] == ["1"]


@check("search: search_experiments paging")
def _():
    client.create_experiment(f"compat-second-{tag}")
    first = client.search_experiments(max_results=1, filter_string=f"name LIKE 'compat-%{tag}'")
    assert first.token, "no page token"
    second = client.search_experiments(max_results=1, filter_string=f"name LIKE 'compat-%{tag}'", page_token=first.token)
    assert len(first) == 1 and len(second) == 1 and first[0].experiment_id != second[0].experiment_id


@check("experiments: rename, delete and restore an experiment")
def _():
    spare = client.create_experiment(f"compat-spare-{tag}")
    client.rename_experiment(spare, f"compat-renamed-{tag}")
    client.delete_experiment(spare)
    assert client.get_experiment(spare).lifecycle_stage == "deleted"
    client.restore_experiment(spare)
    assert client.get_experiment(spare).name == f"compat-renamed-{tag}"


@check("runs: nested runs and the parent tag")
def _():
    with mlflow.start_run(run_name="parent") as parent:
        with mlflow.start_run(run_name="child", nested=True) as child:
            pass
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert mlflow.get_parent_run(child.info.run_id).info.run_id == parent.info.run_id


@check("runs: set_terminated with a status")
def _():
    run = client.create_run(S["exp"])
    client.set_terminated(run.info.run_id, status="FAILED")
    assert client.get_run(run.info.run_id).info.status == "FAILED"


@check("search: search_runs by tag and by param")
def _():
    found = mlflow.search_runs([S["exp"]], filter_string="tags.stage = 'dev' and params.lr = '0.1'", output_format="list")
    assert [r.info.run_id for r in found] == [S["run"]]


@check("artifacts: log_artifacts of a folder")
def _():
    folder = os.path.join(work, "folder")
    os.makedirs(os.path.join(folder, "sub"))
    for rel in ("a.txt", "sub/b.txt"):
        with open(os.path.join(folder, rel), "w") as f:
            f.write(rel)
    with mlflow.start_run(run_id=S["run"]):
        mlflow.log_artifacts(folder, "folder")
    assert [a.path for a in client.list_artifacts(S["run"], "folder/sub")] == ["folder/sub/b.txt"]


@check("artifacts: log_image and log_table")
def _():
    import numpy as np
    with mlflow.start_run(run_id=S["run"]):
        mlflow.log_image(np.zeros((4, 4, 3), dtype=np.uint8), "img.png")
        mlflow.log_table({"q": ["a", "b"], "score": [1, 2]}, "table.json")
    names = {a.path for a in client.list_artifacts(S["run"])}
    assert {"img.png", "table.json"} <= names, names


@check("runs: log_metric with a timestamp and get_metric_history order")
def _():
    client.log_metric(S["run"], "timed", 1.0, timestamp=1000, step=3)
    client.log_metric(S["run"], "timed", 2.0, timestamp=2000, step=4)
    assert [(m.timestamp, m.value) for m in client.get_metric_history(S["run"], "timed")] == [(1000, 1.0), (2000, 2.0)]


@check("autolog: sklearn autologging records params, metrics and a model")
def _():
    import numpy as np
    from sklearn.linear_model import LinearRegression
    mlflow.sklearn.autolog(log_models=True)
    try:
        with mlflow.start_run(run_name="autolog") as run:
            LinearRegression().fit(np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 1.0, 2.0]))
    finally:
        mlflow.sklearn.autolog(disable=True)
    data = client.get_run(run.info.run_id).data
    assert "fit_intercept" in data.params and "training_score" in data.metrics, data


@check("traces: @mlflow.trace keeps its spans (get_trace)")
def _():
    @mlflow.trace
    def inner(x):
        return x * 2

    @mlflow.trace(name="outer")
    def outer(x):
        return inner(x) + 1

    assert outer(3) == 7
    S["trace"] = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(S["trace"])
    assert trace is not None, "no trace"
    assert sorted(s.name for s in trace.data.spans) == ["inner", "outer"], trace.data.spans
    assert trace.info.state.value == "OK", trace.info.state


@check("traces: start_span builds a span tree")
def _():
    with mlflow.start_span("root") as root:
        with mlflow.start_span("child") as child:
            child.set_inputs({"q": "hi"})
            child.set_outputs({"a": "ho"})
        root.set_attribute("k", "v")
    S["trace2"] = root.trace_id
    mlflow.flush_trace_async_logging()
    spans = {s.name: s for s in mlflow.get_trace(S["trace2"]).data.spans}
    assert spans["child"].parent_id == spans["root"].span_id and spans["child"].inputs == {"q": "hi"}


@check("traces: search_traces with its defaults finds them")
def _():
    found = mlflow.search_traces(return_type="list")
    assert {S["trace"], S["trace2"]} <= {t.info.trace_id for t in found}, [t.info.trace_id for t in found]


@check("traces: search_traces with a filter")
def _():
    found = mlflow.search_traces(filter_string="trace.name = 'outer'", return_type="list")
    assert [t.info.trace_id for t in found] == [S["trace"]]


@check("traces: set_trace_tag and delete_trace_tag")
def _():
    mlflow.set_trace_tag(S["trace"], "reviewed", "yes")
    mlflow.set_trace_tag(S["trace"], "temp", "x")
    mlflow.delete_trace_tag(S["trace"], "temp")
    tags = mlflow.get_trace(S["trace"]).info.tags
    assert tags["reviewed"] == "yes" and "temp" not in tags


@check("assessments: log_feedback and log_expectation")
def _():
    from mlflow.entities import AssessmentSource
    source = AssessmentSource(source_type="HUMAN", source_id=os.environ["COMPAT_USER"])
    S["feedback"] = mlflow.log_feedback(trace_id=S["trace"], name="helpful", value=True, source=source).assessment_id
    S["expectation"] = mlflow.log_expectation(trace_id=S["trace"], name="answer", value=7, source=source).assessment_id
    names = {a.name for a in mlflow.get_trace(S["trace"]).info.assessments}
    assert {"helpful", "answer"} <= names, names


@check("assessments: update_assessment and delete_assessment")
def _():
    from mlflow.entities import Feedback
    mlflow.update_assessment(S["trace"], S["feedback"], Feedback(name="helpful", value=False))
    mlflow.delete_assessment(S["trace"], S["expectation"])
    found = {a.assessment_id: a for a in mlflow.get_trace(S["trace"]).info.assessments}
    assert found[S["feedback"]].value is False and S["expectation"] not in found


@check("traces: a trace linked to a run (traced inside start_run)")
def _():
    with mlflow.start_run(run_name="traced") as run:
        with mlflow.start_span("in-run"):
            pass
    mlflow.flush_trace_async_logging()
    found = mlflow.search_traces(run_id=run.info.run_id, return_type="list")
    assert len(found) == 1 and found[0].data.spans[0].name == "in-run"


@check("traces: update_current_trace tags and the trace's request and response")
def _():
    @mlflow.trace
    def tagged(x):
        mlflow.update_current_trace(tags={"route": "fast"})
        return {"y": x}

    tagged(5)
    trace_id = mlflow.get_last_active_trace_id()
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(trace_id)
    assert trace.info.tags["route"] == "fast" and trace.data.spans[0].outputs == {"y": 5}


@check("traces: search_traces by tag, paged")
def _():
    found = client.search_traces(locations=[S["exp"]], filter_string="tag.reviewed = 'yes'", max_results=1)
    assert [t.info.trace_id for t in found] == [S["trace"]]


@check("traces: delete_traces by id")
def _():
    with mlflow.start_span("doomed") as span:
        pass
    mlflow.flush_trace_async_logging()
    assert client.delete_traces(S["exp"], trace_ids=[span.trace_id]) == 1
    assert mlflow.get_trace(span.trace_id, silent=True) is None


@check("prompts: register_prompt and a second version")
def _():
    S["prompt"] = f"compat-prompt-{tag}"
    first = mlflow.genai.register_prompt(S["prompt"], "Hello {{name}}", commit_message="first")
    second = mlflow.genai.register_prompt(S["prompt"], "Hi {{name}}!", commit_message="second")
    assert (first.version, second.version) == (1, 2)


@check("prompts: load_prompt by version and format")
def _():
    assert mlflow.genai.load_prompt(f"prompts:/{S['prompt']}/1").format(name="x") == "Hello x"


@check("prompts: set_prompt_alias and load_prompt by alias")
def _():
    mlflow.genai.set_prompt_alias(S["prompt"], "production", 2)
    assert mlflow.genai.load_prompt(f"prompts:/{S['prompt']}@production").version == 2


@check("prompts: a chat prompt and delete_prompt_alias")
def _():
    chat = mlflow.genai.register_prompt(f"compat-chat-{tag}", [{"role": "system", "content": "Be {{tone}}"},
                                                                 {"role": "user", "content": "{{q}}"}])
    assert chat.format(tone="brief", q="hi")[0] == {"role": "system", "content": "Be brief"}
    mlflow.genai.set_prompt_alias(chat.name, "temp", 1)
    mlflow.genai.delete_prompt_alias(chat.name, "temp")
    refused(lambda: mlflow.genai.load_prompt(f"prompts:/{chat.name}@temp"), "INVALID_PARAMETER_VALUE")  # MLflow's own answer


@check("prompts: search_prompts")
def _():
    found = mlflow.genai.search_prompts(filter_string=f"name = '{S['prompt']}'")
    assert [p.name for p in found] == [S["prompt"]]


@check("prompts: prompt tags")
def _():
    client.set_prompt_tag(S["prompt"], "owner-team", "nlp")
    assert client.get_prompt(S["prompt"]).tags["owner-team"] == "nlp"


@check("datasets: create_dataset")
def _():
    dataset = mlflow.genai.datasets.create_dataset(name=f"compat-ds-{tag}", experiment_id=[S["exp"]], tags={"k": "v"})
    S["dataset"] = dataset.dataset_id
    assert dataset.name == f"compat-ds-{tag}"


@check("datasets: merge_records and read them back")
def _():
    dataset = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"])
    dataset.merge_records([{"inputs": {"q": "2+2"}, "expectations": {"a": "4"}}, {"inputs": {"q": "3+3"}, "expectations": {"a": "6"}}])
    assert len(mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"]).to_df()) == 2


@check("datasets: search_datasets")
def _():
    found = mlflow.genai.datasets.search_datasets(experiment_ids=[S["exp"]])
    assert S["dataset"] in [d.dataset_id for d in found]


@check("datasets: set_dataset_tags and delete_dataset_tag")
def _():
    mlflow.genai.datasets.set_dataset_tags(dataset_id=S["dataset"], tags={"split": "eval"})
    mlflow.genai.datasets.delete_dataset_tag(dataset_id=S["dataset"], key="k")
    tags = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"]).tags
    assert tags.get("split") == "eval" and "k" not in tags


@check("datasets: records from traces")
def _():
    dataset = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"])
    dataset.merge_records([mlflow.get_trace(S["trace2"])])
    assert len(mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"]).to_df()) == 3


@check("datasets: delete records")
def _():
    dataset = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"])
    extra = mlflow.genai.datasets.create_dataset(name=f"compat-ds2-{tag}", experiment_id=[S["exp"]])
    extra.merge_records([{"inputs": {"q": "x"}, "expectations": {"a": "y"}}, {"inputs": {"q": "z"}, "expectations": {"a": "w"}}])
    ids = mlflow.genai.datasets.get_dataset(dataset_id=extra.dataset_id).to_df()["dataset_record_id"].tolist()
    assert extra.delete_records(ids[:1]) == 1
    assert len(mlflow.genai.datasets.get_dataset(dataset_id=extra.dataset_id).to_df()) == 1
    assert len(dataset.to_df()) == 3


@check("datasets: delete_dataset")
def _():
    doomed = mlflow.genai.datasets.create_dataset(name=f"compat-doomed-{tag}", experiment_id=[S["exp"]])
    mlflow.genai.datasets.delete_dataset(dataset_id=doomed.dataset_id)
    refused(lambda: mlflow.genai.datasets.get_dataset(dataset_id=doomed.dataset_id), "RESOURCE_DOES_NOT_EXIST")


print("COMPAT-STATE " + json.dumps(S))
print("COMPAT-RESULTS " + json.dumps(RESULTS))
'''

# The first member's spans uploaded the other way MLflow's client knows: as traces.json into the
# artifact store (what it does when the server takes no OTLP).
ARTIFACT_UPLOAD = PRELUDE + r'''
from mlflow.store.tracking.rest_store import RestStore


def no_otlp(self, *args, **kwargs):
    raise NotImplementedError("this check uploads spans as an artifact")


RestStore.log_spans = no_otlp
mlflow.set_experiment(experiment_id=STATE["exp"])


@check("traces: spans uploaded as traces.json into the artifact store")
def _():
    with mlflow.start_span("via-artifact") as span:
        span.set_inputs({"x": 1})
    mlflow.flush_trace_async_logging()
    trace = mlflow.get_trace(span.trace_id)
    assert [s.name for s in trace.data.spans] == ["via-artifact"], trace
    STATE["artifact_trace"] = span.trace_id


print("COMPAT-STATE " + json.dumps(STATE))
print("COMPAT-RESULTS " + json.dumps(RESULTS))
'''

# The second member: reads everything of the first's, changes nothing of it.
OTHER = PRELUDE + r'''
S = STATE


@check("other member reads the first's trace, prompt and dataset")
def _():
    assert len(mlflow.get_trace(S["trace"]).data.spans) == 2
    assert mlflow.genai.load_prompt(f"prompts:/{S['prompt']}@production").version == 2
    assert mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"]).dataset_id == S["dataset"]


@check("other member: set_trace_tag refused")
def _():
    refused(lambda: mlflow.set_trace_tag(S["trace"], "reviewed", "no"))


@check("other member: delete_trace_tag refused")
def _():
    refused(lambda: mlflow.delete_trace_tag(S["trace"], "reviewed"))


@check("other member: log_feedback refused")
def _():
    refused(lambda: mlflow.log_feedback(trace_id=S["trace"], name="helpful", value=False))


@check("other member: update_assessment and delete_assessment refused")
def _():
    from mlflow.entities import Feedback
    refused(lambda: mlflow.update_assessment(S["trace"], S["feedback"], Feedback(name="helpful", value=True)))
    refused(lambda: mlflow.delete_assessment(S["trace"], S["feedback"]))


@check("other member: delete_traces refused")
def _():
    refused(lambda: client.delete_traces(S["exp"], trace_ids=[S["trace"]]))
    refused(lambda: client.delete_traces(S["exp"], max_timestamp_millis=int(time.time() * 1000) + 10**6))


@check("other member: spans into the first's trace refused")
def _():
    from mlflow.entities import SpanType
    from mlflow.entities.span import Span
    trace = mlflow.get_trace(S["trace"])
    refused(lambda: client._tracking_client.store.log_spans(S["exp"], trace.data.spans))


@check("other member: a new prompt version refused")
def _():
    refused(lambda: mlflow.genai.register_prompt(S["prompt"], "Hacked {{name}}"))


@check("other member: set_prompt_alias and delete_prompt_alias refused")
def _():
    refused(lambda: mlflow.genai.set_prompt_alias(S["prompt"], "production", 1))
    refused(lambda: client.delete_prompt_alias(S["prompt"], "production"))


@check("other member: prompt tags refused")
def _():
    refused(lambda: client.set_prompt_tag(S["prompt"], "owner-team", "other"))


@check("other member: dataset changes refused")
def _():
    refused(lambda: mlflow.genai.datasets.set_dataset_tags(dataset_id=S["dataset"], tags={"split": "other"}))
    refused(lambda: mlflow.genai.datasets.delete_dataset_tag(dataset_id=S["dataset"], key="split"))
    dataset = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"])
    refused(lambda: dataset.merge_records([{"inputs": {"q": "bad"}, "expectations": {"a": "bad"}}]))
    refused(lambda: mlflow.genai.datasets.delete_dataset(dataset_id=S["dataset"]))


@check("other member: the first's objects are as they were")
def _():
    trace = mlflow.get_trace(S["trace"])
    assert trace.info.tags["reviewed"] == "yes"
    assert {a.assessment_id for a in trace.info.assessments if a.valid is not False} >= {S["feedback"]}
    assert mlflow.genai.load_prompt(f"prompts:/{S['prompt']}@production").version == 2
    assert len(client.search_prompt_versions(S["prompt"])) == 2
    dataset = mlflow.genai.datasets.get_dataset(dataset_id=S["dataset"])
    assert len(dataset.to_df()) == 3 and dataset.tags.get("split") == "eval"


print("COMPAT-RESULTS " + json.dumps(RESULTS))
'''


def run_script(daemon, tmp_path: Path, name: str, script: str, user: str, token: str, state: dict | None = None) -> tuple[list[dict], dict]:
    return run_checks(daemon.url + "/mlflow", tmp_path, name, script, user, token, state)


def run_checks(tracking_uri: str, tmp_path: Path, name: str, script: str, user: str, token: str,
               state: dict | None = None) -> tuple[list[dict], dict]:
    """Run a check script with the real MLflow client against tracking_uri; (its results, the state it passes on).
    bench/mlflow_compat_stock.py runs the same scripts against a stock server."""
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPD_"))}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_TRACKING_TOKEN=token, COMPAT_USER=user, COMPAT_TAG=user,
               COMPAT_STATE=json.dumps(state or {}), MLFLOW_DISABLE_TELEMETRY="true", HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    lines = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("COMPAT-")}
    assert "COMPAT-RESULTS" in lines, f"{name} did not finish (exit {result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return json.loads(lines["COMPAT-RESULTS"]), json.loads(lines.get("COMPAT-STATE", "{}"))


def failures(results: list[dict]) -> str:
    return "\n\n".join(f"FAILED {r['name']}: {r['error']}\n{r['where']}" for r in results if not r["ok"])


def test_plain_mlflow_client_code_works_for_a_member_and_another_member_changes_nothing(daemon, tmp_path):
    alice, alice_token = new_user(daemon, "alice")
    bob, bob_token = new_user(daemon, "bob")

    results, state = run_script(daemon, tmp_path, "member", MEMBER, alice, alice_token)
    more, state = run_script(daemon, tmp_path, "artifact_upload", ARTIFACT_UPLOAD, alice, alice_token, state)
    results += more
    print(f"{sum(r['ok'] for r in results)} of {len(results)} member checks passed")
    assert len(results) >= 65
    assert all(r["ok"] for r in results), failures(results)
    # the spans of the artifact-upload path are a file in mlpd's store, where the trace's owner put them
    stored = list((daemon.state_dir / "mlflow" / "artifacts" / state["exp"] / "traces" / state["artifact_trace"]).rglob("traces.json"))
    assert stored and b"via-artifact" in stored[0].read_bytes()

    others, _ = run_script(daemon, tmp_path, "other", OTHER, bob, bob_token, state)
    print(f"{sum(r['ok'] for r in others)} of {len(others)} second-member checks passed")
    assert len(others) >= 12
    assert all(r["ok"] for r in others), failures(others)


def test_the_ui_assistant_is_off_and_answers_as_a_stock_server_with_no_provider(daemon):
    _, token = new_user(daemon, "carol")
    prefix = "/mlflow/ajax-api/3.0/mlflow/assistant/"
    config = daemon.api("GET", prefix + "config", token)
    assert config.status_code == 200 and config.json()["remote_access_allowed"] is False
    providers = daemon.api("GET", prefix + "providers", token)
    assert providers.status_code == 200 and providers.json()["providers"] == []
    for method, path in (("POST", "message"), ("PUT", "config"), ("GET", "sessions/x/stream")):
        refused = daemon.api(method, prefix + path, daemon.admin_token, json={"message": "run ls"})
        assert refused.status_code == 403 and refused.json()["error_code"] == "PERMISSION_DENIED", (method, path, refused.text)
    assert daemon.api("GET", prefix + "config").status_code == 401  # still behind mlpd's login
    current = daemon.api("GET", "/mlflow/ajax-api/2.0/mlflow/users/current", token)
    assert current.status_code == 200 and current.json() == {"user": None, "is_basic_auth": False}, current.text
