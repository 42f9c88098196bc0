"""The web UI in a real browser: Debian's headless Chromium driven by Playwright, against a real
daemon (the shared session daemon: 2 declared GPUs) and a real Docker engine.

One browser for the whole module; each test opens its own context (its own cookies) and creates
its own users. Screenshots go to test-artifacts/browser/ (ignored by git); CI keeps them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

import pytest

from helpers import needs_docker, wait_for
from mlpd.jobs import TERMINAL_STATES

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MLPD_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
TERMINAL = TERMINAL_STATES  # (test_ui_names imports it from here)
VIEWPORTS = {"1280x800": (1280, 800), "390x844": (390, 844)}

pytestmark = [needs_docker, pytest.mark.skipif(not shutil.which(CHROMIUM) and os.environ.get("CI") != "true",
                                               reason="needs Debian's chromium (tests/run.sh installs it)")]


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield b
        b.close()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(15000)
    yield ctx
    ctx.close()


@pytest.fixture
def cleanup(daemon):
    """Cancel what a test leaves queued or running, so the shared GPUs are free for the next test."""
    started: list[tuple[str, str]] = []
    yield started
    for token, job_id in started:
        daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", token)
    for token, job_id in started:
        wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] in TERMINAL, 30, 0.2, f"{job_id} to end")


def member(daemon, prefix: str = "m", admin: bool = False) -> tuple[str, str, str]:
    """A user with a token and a web password: (name, token, password)."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    resp = daemon.api("POST", "/api/v1/users", daemon.admin_token, json={"name": name, "admin": admin})
    assert resp.status_code == 201, resp.text
    token = resp.json()["token"]
    password = f"pw-{uuid.uuid4().hex}"
    resp = daemon.api("POST", f"/api/v1/users/{name}/password", daemon.admin_token, json={"password": password})
    assert resp.status_code == 200, resp.text
    return name, token, password


def login(page, daemon, name: str, password: str) -> None:
    page.goto(daemon.url + "/ui/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()
    page.wait_for_url(re.compile(r".*/ui/$"))


def submit_api(daemon, token: str, command: list[str], **spec) -> str:
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": command, **spec})
    assert resp.status_code == 201, resp.text
    return resp.json()["job"]["id"]


def job_state(daemon, token: str, job_id: str) -> str:
    return daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"]


def my_jobs(daemon, token: str) -> list[dict]:
    return daemon.api("GET", "/api/v1/jobs", token).json()["jobs"]


# ---------------------------------------------------------------- in-page checks

LAYOUT_CHECK = """() => {
  const doc = document.documentElement;
  const sel = 'h1,h2,p,label,input,select,textarea,button,a,th,td,pre,dt,dd,li,summary,svg.chart,.badge,.tag';
  const shown = e => e.checkVisibility({contentVisibilityAuto: true, visibilityProperty: true}) && !e.closest('.sr-only');
  const els = [...document.querySelectorAll(sel)].filter(e => shown(e) && e.getClientRects().length);
  const boxes = els.map(e => [...e.getClientRects()].filter(r => r.width > 1 && r.height > 1));
  const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' "' + (e.textContent || '').trim().slice(0, 30) + '"';
  const overlaps = [];
  for (let i = 0; i < els.length; i++) for (let j = i + 1; j < els.length; j++) {
    const a = els[i], b = els[j];
    if (a.contains(b) || b.contains(a)) continue;
    for (const r of boxes[i]) for (const q of boxes[j]) {
      const w = Math.min(r.right, q.right) - Math.max(r.left, q.left), h = Math.min(r.bottom, q.bottom) - Math.max(r.top, q.top);
      if (w > 2 && h > 2) { overlaps.push(name(a) + ' overlaps ' + name(b)); }
    }
  }
  const wide = els.filter(e => e.getBoundingClientRect().right > doc.clientWidth + 1).map(name).slice(0, 5);
  return {overflow: doc.scrollWidth - doc.clientWidth, wide: wide, overlaps: [...new Set(overlaps)].slice(0, 10)};
}"""

FIELDS_LABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && !e.hidden && !e.closest('[hidden]'))
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
  .map(e => e.outerHTML.slice(0, 120))"""

# How the keyboard walk names an element: its id, name or link, else its text (a live log's text changes).
KEY = ("e => { const ref = e.id || e.getAttribute('name') || e.getAttribute('href') || ''; "
       "return e.tagName.toLowerCase() + '|' + ref + '|' + (ref ? '' : (e.textContent || '').trim().slice(0, 40)); }")

ACTIONS = f"""() => {{
  const key = {KEY};
  const visible = e => e.checkVisibility({{contentVisibilityAuto: true, visibilityProperty: true}});
  return [...new Set([...document.querySelectorAll('a[href], button:not([disabled]), input:not([type=hidden]), select, textarea, summary, [tabindex="0"]')]
    .filter(e => visible(e) || e.classList.contains('skip')).map(key))];
}}"""


def check_layout(page, where: str) -> None:
    result = page.evaluate(LAYOUT_CHECK)
    assert result["overflow"] <= 0, f"{where}: the page scrolls sideways by {result['overflow']}px; too wide: {result['wide']}"
    assert not result["overlaps"], f"{where}: overlapping elements: {result['overlaps']}"


def snap(page, name: str) -> None:
    """Screenshot the current page at both viewports (full page) and check its layout at each."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = page.url
    for label, (w, h) in VIEWPORTS.items():
        page.set_viewport_size({"width": w, "height": h})
        page.goto(url)
        page.wait_for_load_state("load")
        check_layout(page, f"{name} at {label}")
        page.screenshot(path=str(ARTIFACTS / f"{name}-{label}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 800})


def keyboard_walk(page, where: str) -> None:
    """Tab through the page from the top: every link, button and field must take the focus."""
    wanted = set(page.evaluate(ACTIONS))
    page.evaluate(f"""() => {{
      window.scrollTo(0, 0);
      if (document.activeElement) document.activeElement.blur();
      window.__focused = [];
      document.addEventListener('focusin', ev => window.__focused.push(({KEY})(ev.target)));
    }}""")
    seen: set[str] = set()
    for _ in range(3):
        for _ in range(len(wanted) + 5):
            page.keyboard.press("Tab")
        seen |= set(page.evaluate("() => window.__focused"))
        if wanted <= seen:
            break
    assert wanted <= seen, f"{where}: not reachable with Tab: {sorted(wanted - seen)[:10]}"


def check_accessibility(page, where: str) -> None:
    """Every field has a label; every action takes keyboard focus; axe-core finds nothing serious."""
    unlabelled = page.evaluate(FIELDS_LABELLED)
    assert not unlabelled, f"{where}: fields without a label: {unlabelled}"
    keyboard_walk(page, where)
    try:
        from axe_playwright_python.sync_playwright import Axe
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        return
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
    serious = [f"{v['id']}: {v['help']} ({len(v['nodes'])}: {v['nodes'][0]['html'][:100]})" for v in results.response["violations"]
               if v["impact"] in ("serious", "critical")]
    assert not serious, f"{where}: axe-core: {serious}"


# ---------------------------------------------------------------- the tests


JOB_COMMAND = ("python -c \"import mlflow, time; mlflow.start_run(run_name='ui-walk'); "
               "[print('tick', i, flush=True) or time.sleep(0.8) for i in range(6)]; mlflow.log_metric('acc', 0.9); mlflow.end_run()\"")


def test_a_member_submits_a_job_watches_its_log_live_and_opens_its_mlflow_run(daemon, context):
    name, token, password = member(daemon, "walk")
    page = context.new_page()
    login(page, daemon, name, password)

    page.get_by_role("navigation", name="Main").get_by_role("link", name="Submit a job").click()
    page.get_by_label("Image").fill("mlpd/train:latest")
    page.get_by_label("GPUs").fill("0")
    page.get_by_label("Command").fill(JOB_COMMAND)
    page.get_by_label("Time limit").fill("5m")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]{12}$"))
    job_id = page.url.rsplit("/", 1)[1]
    assert [j["id"] for j in my_jobs(daemon, token)] == [job_id]

    # the log streams into the page while the job runs: a line shows up with the badge still "running"
    log = page.locator("#log")
    playwright_api.expect(log).to_contain_text("tick 1", timeout=90000)
    assert page.locator("#job-state").get_attribute("data-state") in ("starting", "running")
    assert "tick 5" not in log.text_content()
    # and the page shows the end by itself, with the MLflow run the job logged
    playwright_api.expect(page.locator("#job-state")).to_have_text("succeeded", timeout=60000)
    assert "tick 5" in page.locator("#log").text_content()
    run_link = page.locator("a.mlflow-run")
    playwright_api.expect(run_link).to_have_text("ui-walk")
    snap(page, "job")

    # the run opens in the embedded MLflow UI with the same session: no second login, nothing refused
    refused = []
    page.on("response", lambda r: refused.append(f"{r.status} {r.url}") if "/mlflow" in r.url and r.status in (401, 403) else None)
    page.locator("a.mlflow-run").click()
    page.wait_for_url(re.compile(r".*/mlflow/#/experiments/\d+/runs/[0-9a-f]+"))
    playwright_api.expect(page.get_by_text("ui-walk").first).to_be_visible(timeout=45000)
    playwright_api.expect(page.get_by_text("acc").first).to_be_visible(timeout=15000)
    assert not refused, refused


def test_the_dashboard_shows_who_holds_each_gpu_and_the_queue_with_its_next_start(daemon, context, cleanup):
    alice, a_token, a_password = member(daemon, "alice")
    bob, b_token, _ = member(daemon, "bob")
    a_job = submit_api(daemon, a_token, ["sleep", "120"], gpus=1, time_limit="10m", name="alice-train")
    b_job = submit_api(daemon, b_token, ["sleep", "120"], gpus=1, time_limit="8m", name="bob-train")
    cleanup.extend([(a_token, a_job), (b_token, b_job)])
    wait_for(lambda: job_state(daemon, a_token, a_job) == "running" and job_state(daemon, b_token, b_job) == "running", 60, 0.2, "both jobs to run")
    waiting = submit_api(daemon, a_token, ["sleep", "1"], gpus=1, time_limit="1m", name="alice-next")
    cleanup.append((a_token, waiting))

    page = context.new_page()
    login(page, daemon, alice, a_password)
    rows = page.locator("table.gpus tbody tr")
    playwright_api.expect(rows).to_have_count(2)
    holders = {rows.nth(i).locator("td.holder").text_content().strip() for i in range(2)}
    assert holders == {alice, bob}
    gpu_of = {rows.nth(i).locator("td.holder").text_content().strip(): rows.nth(i) for i in range(2)}
    # alice sees what her GPU is for and until when; bob's job is his: its name, no link
    playwright_api.expect(gpu_of[alice].get_by_role("link", name="alice-train")).to_be_visible()
    assert gpu_of[bob].get_by_role("link").count() == 0
    assert "UTC" in gpu_of[alice].locator("td").nth(5).text_content()
    # the queue: one job waiting, and when the next start is (bob's time limit frees his GPU first)
    playwright_api.expect(page.locator("[data-queue-depth]")).to_have_text("1")
    next_start = page.locator("[data-next-start]").text_content()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC \(in (7|8)m", next_start), next_start
    queue = page.locator("table.queue tbody tr")
    playwright_api.expect(queue).to_have_count(1)
    playwright_api.expect(queue.first.get_by_role("link", name="alice-next")).to_be_visible()
    snap(page, "dashboard")
    # the waiting job's own page: why it waits, and its place in the order (the terms of its score)
    job_page = context.new_page()
    job_page.goto(f"{daemon.url}/ui/jobs/{waiting}")
    priority = job_page.locator("#priority")
    playwright_api.expect(priority).to_contain_text("Priority score")
    text = priority.text_content()
    assert re.fullmatch(r"Priority score -?\d+( = .+)?; it holds the reservation, so it goes first whatever the score\.", text.strip()), text
    job_page.close()

    # live: when bob's job ends, alice's waiting job takes his GPU and the page shows it without a reload
    page.evaluate("() => { window.__same_page = true; }")
    daemon.api("POST", f"/api/v1/jobs/{b_job}/cancel", b_token)
    playwright_api.expect(page.locator("[data-queue-depth]")).to_have_text("0", timeout=20000)
    assert page.evaluate("() => window.__same_page === true")


def test_a_member_cannot_reach_what_is_not_theirs_and_forms_need_their_token(daemon, context, browser):
    owner, o_token, _ = member(daemon, "own")
    secret = f"secret-{uuid.uuid4().hex}"
    other_job = submit_api(daemon, o_token, ["echo", secret])
    wait_for(lambda: job_state(daemon, o_token, other_job) in TERMINAL, 60, 0.2, "the other member's job to end")
    name, token, password = member(daemon, "nosy")
    page = context.new_page()
    login(page, daemon, name, password)

    # another member's job: 404 on every URL of it, and nothing of it on the page
    for path in (f"/ui/jobs/{other_job}", f"/ui/jobs/{other_job}/log", f"/ui/jobs/{other_job}/state"):
        response = page.goto(daemon.url + path)
        assert response.status == 404, path
        assert secret not in page.content() and owner not in page.content()
    # every admin page: 403, no data
    for path in ("/ui/admin/", "/ui/admin/users", "/ui/admin/tokens", "/ui/admin/teams", "/ui/admin/quotas", "/ui/admin/gpus",
                 "/ui/admin/events", f"/ui/admin/events?object_id={other_job}"):
        response = page.goto(daemon.url + path)
        assert response.status == 403, path
        assert owner not in page.content() and "mlpd_" not in page.content()
    assert page.get_by_role("link", name="Admin").count() == 0
    # even with a valid form token a member's admin post is refused, and makes nothing
    page.goto(daemon.url + "/ui/jobs/new")
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    intruder = f"x{uuid.uuid4().hex[:8]}"
    response = page.request.post(daemon.url + "/ui/admin/users", form={"csrf": csrf, "action": "add", "name": intruder, "admin": "1"})
    assert response.status == 403
    assert intruder not in str(daemon.api("GET", "/api/v1/users", daemon.admin_token).json())
    # someone else's job cannot be cancelled or rerun through the form either
    for action in ("cancel", "rerun"):
        assert page.request.post(daemon.url + f"/ui/jobs/{other_job}/{action}", form={"csrf": csrf}).status == 404

    # a form post without its CSRF token (or with a wrong one) is refused and creates nothing
    form = {"image": "mlpd/train:latest", "gpus": "0", "command": "echo hi"}
    assert page.request.post(daemon.url + "/ui/jobs/new", form=form).status == 403
    assert page.request.post(daemon.url + "/ui/jobs/new", form={**form, "csrf": "forged"}).status == 403
    assert my_jobs(daemon, token) == []
    assert page.request.post(daemon.url + "/ui/jobs/new", form={**form, "csrf": csrf}, max_redirects=0).status == 303
    assert len(my_jobs(daemon, token)) == 1
    # the MLflow UI's session takes no change from another site's page
    response = page.request.post(daemon.url + "/mlflow/ajax-api/2.0/mlflow/experiments/create", data='{"name": "x-site"}',
                                 headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    assert response.status == 403
    # logging out ends the session on the server, not only in this browser
    cookie = next(c for c in context.cookies() if c["name"] == "mlpd_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.goto(daemon.url + "/ui/")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/ui/login"))
    replay = browser.new_context()
    replay.add_cookies([cookie])
    assert replay.request.get(daemon.url + "/ui/jobs", max_redirects=0).status == 302
    replay.close()


def test_five_wrong_passwords_lock_the_account(daemon, context):
    name, _, password = member(daemon, "lock")
    page = context.new_page()
    page.goto(daemon.url + "/ui/login")
    for attempt in range(1, 6):
        page.get_by_label("User name").fill(name)
        page.get_by_label("Password", exact=True).fill(f"wrong-{attempt}")
        page.get_by_role("button", name="Log in", exact=True).click()
        page.wait_for_load_state()
        alert = page.get_by_role("alert").text_content()
        assert ("locked" in alert) == (attempt == 5), (attempt, alert)
    # now even the right password is refused, and an admin sees the lock
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in", exact=True).click()
    playwright_api.expect(page.get_by_role("alert")).to_contain_text("locked")
    assert "/ui/login" in page.url
    events = daemon.api("GET", f"/api/v1/events?object_id={name}", daemon.admin_token).json()["events"]
    assert [e["action"] for e in events if e["action"] == "user.locked"] == ["user.locked"]
    # an admin setting a new password lifts the lock
    fresh = f"pw-{uuid.uuid4().hex}"
    assert daemon.api("POST", f"/api/v1/users/{name}/password", daemon.admin_token, json={"password": fresh}).status_code == 200
    login(page, daemon, name, fresh)


BAD_INPUT = [
    ("gpus", "-1", "expected a whole number >= 0"),
    ("gpus", "64", "asks for 64 GPUs but this host has 2"),
    ("image", "nosuch/image:1", "no image 'nosuch/image:1' on this host"),
    ("command", "", "enter the command to run"),
    ("time_limit", "soon", "cannot read 'soon' as a duration"),
]


def test_bad_form_input_shows_a_message_next_to_the_field_and_creates_nothing(daemon, context):
    name, token, password = member(daemon, "form")
    page = context.new_page()
    login(page, daemon, name, password)
    good = {"image": "mlpd/train:latest", "gpus": "0", "command": "echo hello", "time_limit": "5m"}
    for field, value, expected in BAD_INPUT:
        page.goto(daemon.url + "/ui/jobs/new")
        for key, text in {**good, field: value}.items():
            page.locator(f"#{key}").fill(text)
        page.get_by_role("button", name="Submit job").click()
        page.wait_for_load_state()
        message = page.locator(f"#{field}-error")
        playwright_api.expect(message).to_contain_text(expected)
        # the message sits with its field, and is tied to it for screen readers
        assert page.locator(f"#{field}").get_attribute("aria-invalid") == "true", field
        assert f"{field}-error" in page.locator(f"#{field}").get_attribute("aria-describedby")
        assert page.locator(f".field:has(#{field}) #{field}-error").count() == 1
        assert page.locator(".field-error").count() == 1, field
        playwright_api.expect(page.get_by_role("alert")).to_contain_text("Nothing was submitted")
        assert page.locator("#command").input_value() == ({**good, field: value})["command"]
        assert my_jobs(daemon, token) == [], (field, value)


def test_pages_have_labels_and_keyboard_reach_and_screenshots_show_no_broken_layout(daemon, browser, cleanup):
    name, token, password = member(daemon, "kbd")
    admin_name, _, admin_password = member(daemon, "adm", admin=True)
    job_id = submit_api(daemon, token, ["sh", "-c", "echo started; sleep 30"], time_limit="2m", name="kbd-job")
    cleanup.append((token, job_id))
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.goto(daemon.url + "/ui/login")
    check_accessibility(page, "login")
    login(page, daemon, name, password)
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job_id}", "/ui/jobs/new", "/ui/usage", "/ui/account"):
        page.goto(daemon.url + path)
        check_accessibility(page, path)

    # keyboard only: fill the submit form and send it with Enter
    page.goto(daemon.url + "/ui/jobs/new")
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "command":
            break
    page.keyboard.type("echo typed")
    while page.evaluate("() => document.activeElement.textContent.trim()") != "Submit job":
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/ui/jobs/[0-9a-f]{12}$"))
    cleanup.append((token, page.url.rsplit("/", 1)[1]))

    page.goto(daemon.url + "/ui/usage")
    snap(page, "usage-member")
    ctx.close()

    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    login(page, daemon, admin_name, admin_password)
    for path in ("/ui/admin/", "/ui/admin/users", "/ui/admin/tokens", "/ui/admin/teams", "/ui/admin/quotas", "/ui/admin/gpus", "/ui/admin/events"):
        page.goto(daemon.url + path)
        check_accessibility(page, path)
    page.goto(daemon.url + "/ui/usage")
    check_accessibility(page, "usage (admin)")
    snap(page, "usage")
    page.goto(daemon.url + "/ui/admin/users")
    snap(page, "admin-users")
    ctx.close()


def test_a_member_runs_a_workspace_from_its_page_and_nobody_else_can_open_it(daemon, browser):
    name, token, password = member(daemon, "wsp")
    other, other_token, other_password = member(daemon, "wso")
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    login(page, daemon, name, password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workspaces").click()
    page.wait_for_url(re.compile(r".*/ui/workspaces$"))
    check_accessibility(page, "/ui/workspaces")
    page.get_by_label("Name").fill("Bad Name")
    page.get_by_role("button", name="Create and start").click()
    assert "Nothing was created" in page.locator("#form-error").inner_text()
    assert page.locator("#name-error").is_visible()
    assert daemon.api("GET", "/api/v1/workspaces", token).json()["workspaces"] == []
    page.get_by_label("Name").fill("nb")
    page.get_by_role("button", name="Create and start").click()
    page.wait_for_url(re.compile(r".*/ui/workspaces/nb$"))

    def running():
        page.goto(daemon.url + "/ui/workspaces/nb")
        return page.locator("#ws-state").inner_text() == "running" and "answering" in page.content()
    wait_for(running, 120, 1.0, "the workspace to answer")
    ws = daemon.api("GET", "/api/v1/workspaces/nb", token).json()["workspace"]
    assert page.locator("#ws-tunnel-cli").inner_text() == "mlpd ws tunnel nb --run"
    assert f"127.0.0.1:{ws['port']}" in page.locator("#ws-tunnel").inner_text() and ws["token"] in page.locator("#ws-url").inner_text()
    check_accessibility(page, "/ui/workspaces/nb")
    snap(page, "workspace")

    # Another member: no page, no actions, by any URL.
    octx = browser.new_context(viewport={"width": 1280, "height": 800})
    opage = octx.new_page()
    login(opage, daemon, other, other_password)
    for path in ("/ui/workspaces/nb", f"/ui/workspaces/nb?owner={name}"):
        resp = opage.goto(daemon.url + path)
        assert resp.status == 404 and ws["token"] not in opage.content(), path
    opage.goto(daemon.url + "/ui/workspaces")
    assert "nb" not in opage.locator("main").inner_text().split()
    csrf = opage.evaluate("() => document.querySelector('input[name=csrf]').value")
    resp = octx.request.post(daemon.url + f"/ui/workspaces/nb/stop?owner={name}", form={"csrf": csrf})
    assert resp.status == 404
    resp = ctx.request.post(daemon.url + "/ui/workspaces/nb/stop", form={"csrf": "wrong"})
    assert resp.status == 403  # the owner's own session, without its CSRF token
    assert daemon.api("GET", "/api/v1/workspaces/nb", token).json()["workspace"]["state"] == "running"
    octx.close()

    with page.expect_navigation():
        page.get_by_role("button", name="Stop").click()  # a form post, answered with a redirect to the page

    def stopped():
        page.goto(daemon.url + "/ui/workspaces/nb")
        return page.locator("#ws-state").inner_text() == "stopped"
    wait_for(stopped, 60, 1.0, "stopped")
    assert page.locator("#ws-reason").inner_text() == f"stopped by {name}"
    page.get_by_role("button", name="Remove").click()
    page.wait_for_url(re.compile(r".*/ui/workspaces$"))
    assert daemon.api("GET", "/api/v1/workspaces/nb", token).status_code == 404
    ctx.close()


def test_the_models_served_page_refuses_a_bad_model_uri_next_to_the_field(daemon, browser):
    name, token, password = member(daemon, "dep")
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    login(page, daemon, name, password)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models served").click()
    page.wait_for_url(re.compile(r".*/ui/deployments$"))
    check_accessibility(page, "/ui/deployments")
    page.get_by_label("Model URI").fill("s3://bucket/model")
    page.get_by_role("button", name="Serve").click()
    assert "Nothing was created" in page.locator("#form-error").inner_text()
    assert page.locator("#model-error").is_visible()
    assert daemon.api("GET", "/api/v1/deployments", token).json()["deployments"] == []
    assert page.goto(daemon.url + "/ui/deployments/nosuch").status == 404
    snap(page.goto(daemon.url + "/ui/deployments") and page, "deployments")
    ctx.close()


def test_a_jobs_colour_codes_reach_no_page_or_api_text_field(daemon, context):
    """Issue 23 item 7 / issue 22 break 11: escape sequences from job output showed in pages (as boxes) and reasons."""
    name, token, password = member(daemon, "colour")
    script = ("import sys, time; print('\\x1b[31mred live\\x1b[0m\\x1b]0;title\\x07', flush=True); time.sleep(4); "
              "print('\\x1b[32mgreen saved\\x1b[0m', flush=True); sys.exit('\\x1b[91mERROR: it failed\\x1b[0m')")
    job_id = submit_api(daemon, token, ["python3", "-c", script])
    page = context.new_page()
    login(page, daemon, name, password)
    wait_for(lambda: job_state(daemon, token, job_id) == "running", 60, 0.2, "the job to run")
    page.goto(f"{daemon.url}/ui/jobs/{job_id}")
    page.wait_for_function("document.getElementById('log').textContent.includes('red live')", timeout=20000)
    assert "\x1b" not in page.eval_on_selector("#log", "e => e.textContent")  # the live log, as the page's script shows it
    wait_for(lambda: job_state(daemon, token, job_id) == "failed", 60, 0.2, "the job to end")
    page.close()  # its own script reloads it when the job ends: a navigation of ours would race that reload
    page = context.new_page()
    page.goto(f"{daemon.url}/ui/jobs/{job_id}")
    text = page.eval_on_selector("#log", "e => e.textContent")
    assert "green saved" in text and "\x1b" not in text and "\x1b" not in page.content()  # the saved log
    job = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]
    assert "\x1b" not in json.dumps(job, ensure_ascii=False)
    page.close()
