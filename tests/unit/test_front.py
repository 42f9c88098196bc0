"""The front (issue 22, break 6): nginx reads whole requests before a web thread sees them."""

from __future__ import annotations

import os
import subprocess

import pytest

from mlpd.ops import front


def test_the_configuration_buffers_requests_times_out_slow_clients_and_streams_responses(tmp_path):
    text = front.config_text(str(tmp_path), ["127.0.0.1:8470", "172.17.0.1:8470"], 201)
    for line in ("listen 127.0.0.1:8470 so_keepalive=60s:10s:3;", "listen 172.17.0.1:8470 so_keepalive=60s:10s:3;", f"client_header_timeout {front.HEADER_TIMEOUT}s;",
                 f"client_body_timeout {front.BODY_TIMEOUT}s;", "proxy_request_buffering on;", "proxy_buffering off;",
                 "client_max_body_size 201m;", f"server unix:{tmp_path / 'web.sock'};", "proxy_pass http://mlpd_web;", "proxy_set_header Host $http_host;"):
        assert line in text
    # the request URI goes to the app as the client sent it (no URI part in proxy_pass: nothing re-normalised)
    assert "web.sock:/" not in text
    assert '{"error": {"code": "too_large"' in text
    assert "location /mlflow" not in text


def test_mlflow_takes_artifacts_up_to_their_cap_and_refuses_a_chunked_body_before_writing_it(tmp_path):
    text = front.config_text(str(tmp_path), ["127.0.0.1:8470"], 201, max_artifact_mb=1024)
    mlflow = text[text.index("location /mlflow {"):text.index("location @artifact_too_large")]
    assert "client_max_body_size 1024m;" in mlflow and "if ($http_transfer_encoding)" in mlflow and "return 411;" in mlflow
    assert '"code": "length_required"' in text and "(mlflow.max_artifact_mb)" in text and '"error_code": "RESOURCE_EXHAUSTED"' in text


def test_nginx_accepts_the_configuration(tmp_path):
    binary = front.find_nginx()
    if binary is None:  # under CI it must be there: tests/run.sh and install.sh install it
        if os.environ.get("CI") == "true":
            pytest.fail("nginx is not installed though CI=true (tests/run.sh installs nginx-light)")
        pytest.skip("needs nginx, the daemon's front (apt-get install nginx-light)")
    run = tmp_path / "run"
    conf = front.write_config(str(run), ["127.0.0.1:1"], 10, max_artifact_mb=1024)
    out = subprocess.run([*front.command(binary, str(run), conf), "-t"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert oct(os.stat(run / "nginx" / "client_body").st_mode & 0o777) == "0o700"


def test_the_setting_chooses_the_front(monkeypatch):
    assert front.choose("none") is None
    monkeypatch.setattr(front, "find_nginx", lambda: None)
    assert front.choose("auto") is None
    with pytest.raises(front.FrontError, match="apt-get install nginx-light.*server.front"):
        front.choose("nginx")
    monkeypatch.setattr(front, "find_nginx", lambda: "/usr/sbin/nginx")
    assert front.choose("auto") == "/usr/sbin/nginx"


def test_a_socket_path_too_long_is_refused_naming_the_setting(tmp_path):
    with pytest.raises(front.FrontError, match="server.state_dir"):
        front.socket_path(str(tmp_path / ("x" * 120)))


def test_with_a_front_gunicorn_binds_only_its_socket_and_the_front_takes_both_addresses(tmp_path, monkeypatch):
    from mlpd.config import SETTINGS, Config
    from mlpd.ops.daemon import Daemon

    monkeypatch.setattr(front, "find_nginx", lambda: "/usr/sbin/nginx")
    values = {**{st.key: st.default for st in SETTINGS}, "server.state_dir": str(tmp_path), "server.listen": "127.0.0.1:8470", "server.container_listen": "172.17.0.1:8470"}
    d = Daemon(Config(values, "test"))
    run = tmp_path / "run"
    run.mkdir()
    d.prepare_front(str(run))
    commands = d._commands()
    web = commands["web"]
    assert [web[i + 1] for i, a in enumerate(web) if a == "--bind"] == [f"unix:{run / 'web.sock'}"] and "--keep-alive" in web
    assert commands["front"][0] == "/usr/sbin/nginx"
    conf = (run / "nginx.conf").read_text()
    assert "listen 127.0.0.1:8470 " in conf and "listen 172.17.0.1:8470 " in conf
    # without one, gunicorn binds both addresses itself, as before
    d = Daemon(Config({**values, "server.front": "none"}, "test"))
    d.prepare_front(str(run))
    web = d._commands()["web"]
    assert [web[i + 1] for i, a in enumerate(web) if a == "--bind"] == ["127.0.0.1:8470", "172.17.0.1:8470"] and "front" not in d._commands()
