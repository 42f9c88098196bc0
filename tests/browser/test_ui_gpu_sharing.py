"""The dashboard's GPU table with shared GPUs, in a real browser against a real daemon and Docker:
two half-GPU jobs on one GPU are shown as one shared GPU with both holders and their shares."""

from __future__ import annotations

from helpers import wait_for
from test_ui_browser import browser, cleanup, context, pytestmark  # noqa: F401  (the module's fixtures and its skips)
from test_ui_browser import job_state, login, member, playwright_api, submit_api


def test_the_dashboard_shows_a_shared_gpu_with_each_holder_and_share(daemon, context, cleanup):  # noqa: F811
    ann, token, password = member(daemon, "ann")
    halves = [submit_api(daemon, token, ["sleep", "120"], gpus=0.5, time_limit="10m", name=f"small-{i}") for i in range(2)]
    cleanup.extend((token, j) for j in halves)
    wait_for(lambda: all(job_state(daemon, token, j) == "running" for j in halves), 60, 0.2, "both halves to run")

    page = context.new_page()
    login(page, daemon, ann, password)
    rows = page.locator("table.gpus tbody tr")
    playwright_api.expect(rows).to_have_count(2)
    shared = page.locator("table.gpus tbody tr:has(td.holder.shared)")
    playwright_api.expect(shared).to_have_count(1)  # both halves on one GPU; the other GPU stays whole and free
    playwright_api.expect(shared.locator(".tag", has_text="shared")).to_be_visible()
    sharers = shared.locator(".sharer")
    playwright_api.expect(sharers).to_have_count(2)
    for i in range(2):
        playwright_api.expect(shared.get_by_role("link", name=f"small-{i}")).to_be_visible()
        assert "0.5 GPU, running since" in sharers.nth(i).text_content()
    playwright_api.expect(page.locator("table.gpus tbody tr td.holder.free")).to_have_count(1)
