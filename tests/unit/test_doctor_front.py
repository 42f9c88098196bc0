"""mlpd doctor names a missing web front (nginx) and a child the daemon gave up on (FATAL)."""

from __future__ import annotations

from mlpd.ops.doctor import FAIL, OK, WARN, front_check


def test_the_front_is_ok_with_nginx_and_named_without_it():
    assert front_check("auto", "/usr/sbin/nginx").status == OK
    missing = front_check("auto", None)
    assert missing.status == WARN and "no nginx is installed" in missing.detail and "nginx-light" in missing.fix
    assert front_check("nginx", None).status == FAIL  # the daemon refuses to start so
    assert front_check("none", "/usr/sbin/nginx").status == WARN


def test_a_worker_the_daemon_gave_up_on_fails_the_daemon_check():
    """/healthz says which children are FATAL; doctor makes that a FAIL (it was a WARN: 'worker is fatal')."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from mlpd.ops.doctor import _daemon_check

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"status": "ok", "version": "x", "worker": "fatal", "children": {"web": "running", "worker": "fatal"}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check = _daemon_check({"server.listen": f"127.0.0.1:{server.server_port}", "server.container_listen": ""})
    finally:
        server.shutdown()
    assert check.status == FAIL and "worker kept dying" in check.detail and "FATAL" in check.detail
