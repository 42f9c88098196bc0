"""Every workload named by its name, wherever a person reads it (issue 23): a running workspace, a
deployment's replica and a queued job on the dashboard, the waiting job's page, the admin overview
and the events page, at a phone's width and a laptop's, with no sideways scrolling, no console error
(a favicon), and the same names from the CLI. Real daemon (2 declared GPUs), real Docker, Debian's
Chromium; screenshots under test-artifacts/browser/.
"""

from __future__ import annotations

import re


from helpers import as_json, wait_for
from test_ui_browser import (ARTIFACTS, TERMINAL, VIEWPORTS, check_layout, job_state, login, member, playwright_api,  # noqa: F401
                             submit_api)
from test_ui_browser import browser, pytestmark  # noqa: F401  (the module's browser and its skips)

TRAIN = """
import mlflow, mlflow.sklearn, numpy as np, pandas as pd
from sklearn.linear_model import LinearRegression

X = pd.DataFrame({"sepal": np.arange(10, dtype=float), "petal": np.arange(10, dtype=float) / 2})
with mlflow.start_run():
    model = LinearRegression().fit(X, 2 * X["sepal"])
    mlflow.sklearn.log_model(model, name="model", registered_model_name="{model}", input_example=X[:1])
"""


def _wide_cells(page) -> list[str]:
    """Cells of the GPU and queue tables that reach past the right edge of the window (scrolled out of sight)."""
    return page.evaluate("""() => [...document.querySelectorAll('table.gpus td, table.gpus th, table.queue td')]
        .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
        .map(e => (e.dataset.label || e.tagName) + ': ' + e.textContent.trim().slice(0, 40))""")


def test_a_workspace_a_replica_and_a_queued_job_are_named_by_their_names_at_both_widths(daemon, browser, tmp_path):  # noqa: F811
    nina, token, password = member(daemon, "nina")
    admin, _, admin_password = member(daemon, "adm", admin=True)
    model = f"iris-{nina}"
    work = tmp_path / "train"
    work.mkdir()
    (work / "train.py").write_text(TRAIN.replace("{model}", model))
    trained = as_json(daemon.cli("run", "--json", "--name", "fit-iris", "--", "python", "train.py", token=token, cwd=str(work)))["job"]["id"]
    wait_for(lambda: job_state(daemon, token, trained) in TERMINAL, 300, 0.5, "the training job")
    assert job_state(daemon, token, trained) == "succeeded", daemon.api("GET", f"/api/v1/jobs/{trained}/logs", token).text[-2000:]
    made = []
    try:
        r = daemon.api("POST", "/api/v1/workspaces", token, json={"name": "lab", "gpus": 1})
        assert r.status_code == 201, r.text
        made.append(("workspaces", "lab"))
        r = daemon.api("POST", "/api/v1/deployments", token, json={"model": f"models:/{model}/1", "name": model, "gpus": 1})
        assert r.status_code == 201, r.text
        made.append(("deployments", model))
        wait_for(lambda: daemon.api("GET", "/api/v1/workspaces/lab", token).json()["workspace"]["state"] == "running", 120, 0.5,
                 "the workspace to run")
        wait_for(lambda: daemon.api("GET", f"/api/v1/deployments/{model}", token).json()["deployment"]["state"] == "serving", 300, 1.0,
                 "the deployment to serve")
        queued = submit_api(daemon, token, ["sleep", "1"], gpus=2, name="train-big")
        made.append(("jobs", queued))
        wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{queued}", token).json()["job"]["waiting"], 30, 0.5, "the job to wait")
        workspace_label, replica_label = f"workspace lab ({nina})", f"deployment {model}, replica 0"
        session_ids = [g["holder"]["job_id"] for g in daemon.api("GET", "/api/v1/gpus", token).json()["gpus"] if g["holder"]]
        assert len(session_ids) == 2

        # The CLI: who holds each GPU, why the job waits, and the GPUS column as a count.
        gpus = daemon.cli("gpus", token=token)
        assert workspace_label in gpus.stdout and f"{replica_label} ({nina})" in gpus.stdout, gpus.stdout
        shown = daemon.cli("jobs", "show", queued[:8], token=token)
        assert f"held by {workspace_label}" in shown.stdout and f"held by {replica_label} ({nina})" in shown.stdout, shown.stdout
        listed = daemon.cli("jobs", token=token)
        row = next(line for line in listed.stdout.splitlines() if line.startswith(queued))
        assert " 2 " in row, row  # two GPUs asked for (none held yet), not an index list

        console: list[str] = []
        failed: list[str] = []
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        ctx.set_default_timeout(15000)
        page = ctx.new_page()
        page.on("console", lambda m: console.append(f"{page.url}: {m.text}") if m.type == "error" else None)
        page.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)
        login(page, daemon, nina, password)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for label, (w, h) in VIEWPORTS.items():
            page.set_viewport_size({"width": w, "height": h})
            page.goto(daemon.url + "/ui/")
            gpu_table = page.locator("table.gpus")
            playwright_api.expect(gpu_table).to_contain_text(workspace_label)
            playwright_api.expect(gpu_table).to_contain_text(replica_label)
            playwright_api.expect(gpu_table.get_by_role("link", name=workspace_label)).to_have_attribute("href", "/ui/workspaces/lab")
            playwright_api.expect(page.locator("table.queue")).to_contain_text("train-big")
            why = page.locator("table.queue td.why").first
            playwright_api.expect(why).to_contain_text(f"held by {workspace_label}")
            assert why.bounding_box()["width"] > min(w, 1280) * 0.35, f"'why it waits' is a narrow column at {label}"
            assert not [i for i in session_ids if i[:8] in page.locator("main").text_content()], "a session's id is shown"
            check_layout(page, f"dashboard at {label}")
            assert not _wide_cells(page), f"cells out of sight at {label}: {_wide_cells(page)}"
            for td in ("For", "Until"):
                playwright_api.expect(gpu_table.locator(f'td[data-label="{td}"]').first).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / f"names-dashboard-{label}.png"), full_page=True)

            page.goto(f"{daemon.url}/ui/jobs/{queued}")
            playwright_api.expect(page.locator("main")).to_contain_text(f"GPU held by {workspace_label}")
            check_layout(page, f"the waiting job's page at {label}")
            page.screenshot(path=str(ARTIFACTS / f"names-waiting-job-{label}.png"), full_page=True)

            page.goto(f"{daemon.url}/ui/deployments/{model}")
            playwright_api.expect(page.locator("#dep-input")).to_contain_text("sepal")
            playwright_api.expect(page.locator("#dep-curl")).to_contain_text("$MLPD_TOKEN")
            check_layout(page, f"the deployment's page at {label}")
            page.screenshot(path=str(ARTIFACTS / f"names-deployment-{label}.png"), full_page=True)
        page.close()

        # An admin: the overview counts each kind apart; the events page is a page at a time and names objects.
        admin_page = ctx.new_page()
        admin_page.on("console", lambda m: console.append(f"{admin_page.url}: {m.text}") if m.type == "error" else None)
        ctx.clear_cookies()
        login(admin_page, daemon, admin, admin_password)
        for label, (w, h) in VIEWPORTS.items():
            admin_page.set_viewport_size({"width": w, "height": h})
            admin_page.goto(daemon.url + "/ui/admin/")
            playwright_api.expect(admin_page.locator("#count-workspaces")).to_contain_text(re.compile(r"Workspaces: [1-9]\d* running"))
            playwright_api.expect(admin_page.locator("#count-deployments")).to_contain_text(re.compile(r"replicas: [1-9]\d* running"))
            jobs_text = admin_page.locator("#count-jobs").text_content()
            running_jobs = int(re.search(r"(\d+) running", jobs_text).group(1))
            assert running_jobs == len(daemon.api("GET", "/api/v1/jobs?all=1&state=starting,running", daemon.admin_token).json()["jobs"])
            check_layout(admin_page, f"admin overview at {label}")
            admin_page.goto(daemon.url + "/ui/admin/events?object=lab")
            playwright_api.expect(admin_page.locator("table.events")).to_contain_text(workspace_label)
            check_layout(admin_page, f"events of lab at {label}")
            admin_page.goto(daemon.url + "/ui/admin/events")
            assert admin_page.locator("table.events tbody tr").count() <= 50
            height = admin_page.evaluate("() => document.documentElement.scrollHeight")
            admin_page.screenshot(path=str(ARTIFACTS / f"names-events-{label}.png"), full_page=True)
            assert height < 12000, f"the events page is {height}px tall at {label}"
            check_layout(admin_page, f"events at {label}")
        admin_page.goto(daemon.url + f"/ui/admin/events?action=workspace.&actor={nina}")
        rows = admin_page.locator("table.events tbody tr")
        assert rows.count() >= 1 and all(rows.nth(i).locator("td").nth(2).text_content().startswith("workspace.") for i in range(rows.count()))
        ctx.close()
        assert not console, console
        assert not failed, failed
    finally:
        for kind, name in reversed(made):
            if kind == "jobs":
                daemon.api("POST", f"/api/v1/jobs/{name}/cancel", token)
            else:
                daemon.api("DELETE", f"/api/v1/{kind}/{name}", token)
        wait_for(lambda: not [g for g in daemon.api("GET", "/api/v1/gpus", token).json()["gpus"] if g["holder"]], 120, 0.5,
                 "the GPUs to be free again")
