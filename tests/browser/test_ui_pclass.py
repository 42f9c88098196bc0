"""The job page shows a job's priority class, its attempt and each preemption, in a real browser
(Debian's headless Chromium through Playwright) against a daemon of its own (one declared GPU,
preemption at once) and a real Docker engine: the same facts `mlpd jobs show` prints.

The production job's owner may use the class through `mlpd admin priority-class grant`, so the
grant is exercised end to end too.
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest

from helpers import as_json, needs_docker, new_user, wait_for

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MLPD_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"

pytestmark = [needs_docker, pytest.mark.skipif(not shutil.which(CHROMIUM) and os.environ.get("CI") != "true",
                                               reason="needs Debian's chromium (tests/run.sh installs it)")]

# Trains and ignores SIGTERM, so it is stopped at the end of the grace period: long enough to see
# the page say it is being preempted.
TRAIN = textwrap.dedent("""\
    import os, signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: print("SIGTERM: no checkpoint here", flush=True))
    print("attempt", os.environ["MLPD_ATTEMPT"], "training", flush=True)
    while True:
        time.sleep(0.1)
""")


def job(d, token, job_id):
    resp = d.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def web_password(d, name: str) -> str:
    password = f"pw-{uuid.uuid4().hex}"
    resp = d.api("POST", f"/api/v1/users/{name}/password", d.admin_token, json={"password": password})
    assert resp.status_code == 200, resp.text
    return password


def login(page, d, name: str, password: str) -> None:
    page.goto(d.url + "/ui/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/$"))


def test_the_job_page_shows_the_class_the_attempt_and_each_preemption(make_daemon, tmp_path):
    cfg = tmp_path / "mlpd.toml"
    cfg.write_text('[scheduler]\npreempt_after = "0"\npreempt_grace = "15s"\n')
    d = make_daemon(["--declare-gpus", "1"], config_file=cfg)
    alice, alice_token = new_user(d, "alice")
    bob, bob_token = new_user(d, "bob")
    granted = d.cli("admin", "priority-class", "grant", bob, "production")
    assert granted.returncode == 0, granted.stderr

    train = as_json(d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "preemptible", "--json", "--",
                          "python3", "-c", TRAIN, token=alice_token))["job"]["id"]
    wait_for(lambda: "training" in d.api("GET", f"/api/v1/jobs/{train}/logs", alice_token).text, 60, 0.2, "attempt 1 to train")
    prod = as_json(d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "production", "--json", "--",
                         "sleep", "30", token=bob_token))["job"]["id"]
    wait_for(lambda: job(d, alice_token, train)["preempting"], 30, 0.1, "the preemption to be asked for")

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            page.set_default_timeout(15000)
            login(page, d, alice, web_password(d, alice))
            page.goto(f"{d.url}/ui/jobs/{train}")
            # within the grace period (15 s from the preemption's request): SIGTERM sent, not stopped yet
            preempting = page.locator("#preempting").inner_text()
            assert preempting.startswith("Being preempted since ") and f"for job {prod[:12]} of {bob} (class production" in preempting
            assert page.locator("#job-attempt").inner_text() == "1" and page.locator("#preemptions li.preemption").count() == 0
            wait_for(lambda: job(d, alice_token, train)["attempt"] == 2, 60, 0.2, "the preemptible job to be stopped and queued again")
            page.goto(f"{d.url}/ui/jobs/{train}")
            assert page.locator("#job-class").inner_text() == "preemptible"
            assert page.locator("#job-attempt").inner_text() == "2"
            items = page.locator("#preemptions li.preemption")
            assert items.count() == 1
            text = items.first.inner_text()
            assert text.startswith("Attempt 1 preempted ") and f"preempted for job {prod[:12]} of {bob} (class production, 1 GPU)" in text
            assert items.first.locator("a").count() == 0  # bob's job is not alice's to open
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "job-preempted.png"), full_page=True)

            admin = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            admin.set_default_timeout(15000)
            login(admin, d, "root", web_password(d, "root"))
            admin.goto(f"{d.url}/ui/jobs/{train}")
            admin.locator("#preemptions li.preemption a").click()  # an admin may follow it to the job it made way for
            admin.wait_for_url(re.compile(rf".*/ui/jobs/{prod}$"))
            assert admin.locator("#job-class").inner_text() == "production"
            assert admin.locator("#job-attempt").inner_text() == "1"
            assert admin.locator("#preemptions").count() == 0
        finally:
            browser.close()
    assert d.api("POST", f"/api/v1/jobs/{prod}/cancel", bob_token).status_code == 200
    assert d.api("POST", f"/api/v1/jobs/{train}/cancel", alice_token).status_code == 200
