"""MLflow 3's GenAI pages in a real browser, through the mlpd web session: a traced function's span tree
opens on the trace page, and the experiments, run, models, traces and prompts pages load with no 404
(every route those pages call answers as on a stock server, or is switched off as on one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from helpers import holds_for
from test_ui_browser import login, member, playwright_api  # noqa: F401
from test_ui_browser import browser, context, pytestmark  # noqa: F401  (the module's browser and its skips)

TRACED = r'''
import mlflow
tag = __import__("os").environ["TAG"]
experiment = mlflow.set_experiment(f"genai-ui-{tag}").experiment_id


@mlflow.trace(name="retrieve")
def retrieve(q):
    return ["doc-" + q]


@mlflow.trace(name="answer_question")
def answer_question(q):
    return {"docs": retrieve(q), "answer": q.upper()}


with mlflow.start_run(run_name=f"genai-run-{tag}") as run:
    mlflow.log_metric("quality", 0.5)
answer_question("why")
trace_id = mlflow.get_last_active_trace_id()
mlflow.flush_trace_async_logging()
assert [s.name for s in mlflow.get_trace(trace_id).data.spans] == ["answer_question", "retrieve"]
mlflow.genai.register_prompt(f"genai-prompt-{tag}", "Answer {{q}}")
print("IDS", experiment, run.info.run_id, trace_id)
'''


def test_a_traced_functions_span_tree_opens_on_the_trace_page_and_no_page_meets_a_404(daemon, context, tmp_path):
    name, token, password = member(daemon, "genai")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLPD_"))}
    env.update(MLFLOW_TRACKING_URI=daemon.url + "/mlflow", MLFLOW_TRACKING_TOKEN=token, TAG=name, HOME=str(tmp_path),
               MLFLOW_DISABLE_TELEMETRY="true")
    result = subprocess.run([sys.executable, "-c", TRACED], capture_output=True, text=True, env=env, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    experiment, run_id, trace_id = next(line for line in result.stdout.splitlines() if line.startswith("IDS ")).split()[1:]

    page = context.new_page()
    missing: list[str] = []
    page.on("response", lambda r: missing.append(f"{r.status} {r.request.method} {r.url}") if r.status == 404 else None)
    page.on("console", lambda m: missing.append(f"console: {m.text}") if m.type == "error" and "404" in m.text else None)

    def no_404() -> bool:
        page.wait_for_timeout(50)  # lets Playwright deliver the page's events while we check
        return not missing
    login(page, daemon, name, password)
    base = daemon.url + "/mlflow/#"

    # the trace page shows the span tree the client uploaded (over OTLP, owned by the member)
    page.goto(f"{base}/experiments/{experiment}/traces/{trace_id}")
    playwright_api.expect(page.get_by_text("retrieve").first).to_be_visible(timeout=45000)
    playwright_api.expect(page.get_by_text("answer_question").first).to_be_visible()
    assert not page.get_by_text("Failed to load trace").count()

    pages = {
        "experiments": (f"{base}/experiments", f"genai-ui-{name}"),
        "experiment runs": (f"{base}/experiments/{experiment}/runs", f"genai-run-{name}"),
        "run": (f"{base}/experiments/{experiment}/runs/{run_id}", "quality"),
        "models": (f"{base}/models", "Registered Models"),
        "traces": (f"{base}/experiments/{experiment}/traces", '{"q": "why"}'),  # the trace's input, in its row
        "prompts": (f"{base}/prompts", f"genai-prompt-{name}"),
    }
    for where, (url, text) in pages.items():
        page.goto(url)
        playwright_api.expect(page.get_by_text(re.compile(re.escape(text), re.I)).first).to_be_visible(timeout=45000)
        holds_for(no_404, 4, 0, f"no 404 on the {where} page:\n" + "\n".join(missing))
    assert not missing, "\n".join(missing)
