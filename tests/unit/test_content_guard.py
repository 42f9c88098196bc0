"""Every route that returns bytes a member controls is sandboxed, inert or an attachment, and sets nothing."""

import pytest

from mlpd.web.content_guard import guarded_headers, member_content

MEMBER_ROUTES = [
    "/serve/churn/ping", "/serve/churn/invocations",
    "/api/v1/jobs/abc123/logs", "/api/v1/jobs/abc123/outputs", "/api/v1/workspaces/lab/logs", "/api/v1/deployments/d/logs",
    "/mlflow/get-artifact", "/mlflow/model-versions/get-artifact", "/mlflow/get-trace-artifact",
    "/mlflow/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/page.html",
    "/mlflow/ajax-api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/page.html",
    "/mlflow/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files",
]


@pytest.mark.parametrize("path", MEMBER_ROUTES)
def test_member_content_is_sandboxed_sets_nothing_and_html_is_an_attachment(path):
    assert member_content(path)
    out = dict(guarded_headers(path, [("Content-Type", "text/html"), ("Set-Cookie", "mlpd_session=x"), ("Location", "/ui/admin"),
                                      ("Refresh", "0"), ("Link", "<x>"), ("Content-Security-Policy", "default-src *"),
                                      ("Content-Disposition", "inline")]))
    assert out["Content-Security-Policy"] == "sandbox"
    assert out["X-Content-Type-Options"] == "nosniff" and out["X-Frame-Options"] == "DENY"
    assert out["Content-Disposition"] == "attachment"
    assert not {"Set-Cookie", "Location", "Refresh", "Link"} & set(out)


@pytest.mark.parametrize("ctype", ["application/json", "text/plain; charset=utf-8", "image/png"])
def test_inert_member_content_is_shown_inline_but_still_sandboxed(ctype):
    out = dict(guarded_headers("/mlflow/get-artifact", [("Content-Type", ctype)]))
    assert "Content-Disposition" not in out and out["Content-Security-Policy"] == "sandbox"


def test_the_daemons_own_pages_keep_their_policy_and_other_answers_are_sandboxed():
    ui = dict(guarded_headers("/ui/jobs", [("Content-Type", "text/html"), ("Content-Security-Policy", "default-src 'self'"),
                                           ("Set-Cookie", "mlpd_session=x")]))
    assert ui["Content-Security-Policy"] == "default-src 'self'" and ui["Set-Cookie"] == "mlpd_session=x"
    assert "Content-Security-Policy" not in dict(guarded_headers("/mlflow/", [("Content-Type", "text/html")]))
    for path in ("/api/v1/whoami", "/healthz", "/ui/../serve/x/ping", "/mlflow/api/2.0/mlflow/runs/get"):
        assert dict(guarded_headers(path, [("Content-Type", "application/json")]))["Content-Security-Policy"] == "sandbox", path
