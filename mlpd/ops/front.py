"""The front: nginx takes the daemon's network connections and hands whole requests to gunicorn.

gunicorn's threaded workers give a connection a thread as soon as its first byte arrives and
keep it until the request is read: a hundred connections that send one byte each held every
thread of the daemon, from the host or from any container through the bridge address (issue 22).
nginx reads each request's headers within HEADER_TIMEOUT and its body (buffered, to disk when
large) with at most BODY_TIMEOUT between reads before it connects to gunicorn's Unix socket, so a
web thread only ever sees a complete request. Responses are not buffered: log streams, progress
streams and the serving proxy go out as they are written. Why nginx: it is one Debian package
(nginx-light), it buffers whole request bodies (HAProxy buffers only what fits one buffer), and it
closes the upstream connection when a client leaves, which ends a log stream at once.

This module writes the configuration and names the command; mlpd.ops.daemon supervises the process.
"""

from __future__ import annotations

import json
import os
import shutil

HEADER_TIMEOUT = 10  # seconds for a client to send a request's headers
BODY_TIMEOUT = 30  # seconds allowed between two reads of a request body
SEND_TIMEOUT = 60  # seconds allowed between two writes a client accepts
KEEPALIVE = "60s:10s:3"  # idle time, interval and count of TCP keepalive probes on client connections
UPSTREAM_IDLE = 2  # seconds nginx keeps an idle connection to gunicorn (gunicorn's --keep-alive is longer)
GUNICORN_KEEPALIVE = 10
MAX_CONNECTIONS = 4096  # connections the front holds at once (more wait in the kernel's backlog)
SOCKET_NAME = "web.sock"
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


class FrontError(Exception):
    """The front cannot run as configured; the message names the setting or the package."""


def find_nginx() -> str | None:
    """The nginx binary, or None."""
    return shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)


def choose(setting: str) -> str | None:
    """The nginx binary to run for server.front, or None for no front; FrontError when nginx is asked for but missing."""
    if setting == "none":
        return None
    binary = find_nginx()
    if binary is None and setting == "nginx":
        raise FrontError("server.front is \"nginx\" but no nginx is installed: install it (apt-get install nginx-light) "
                         "or set server.front = \"none\" (then slow clients can hold every web thread)")
    return binary


def socket_path(run_dir: str) -> str:
    """gunicorn's Unix socket, which only the front (and the daemon's user) can reach."""
    path = os.path.join(run_dir, SOCKET_NAME)
    if len(path.encode()) > 100:  # sun_path holds 108 bytes
        raise FrontError(f"the web socket path {path} is too long for a Unix socket; choose a shorter server.state_dir")
    return path


def _listen_line(address: str) -> str:
    # TCP keepalive probes find a client that vanished without closing (its machine gone): nginx
    # then closes the connection to gunicorn too, and a silent log stream ends within ~90 s.
    return f"    listen {address} so_keepalive={KEEPALIVE};"


def _json_error(code: str, message: str, mlflow_code: str = "") -> str:
    payload: dict = {"error": {"code": code, "message": message}}
    if mlflow_code:  # MLflow's own fields beside mlpd's, as mlpd.web.mlflow_mount answers, so MLflow clients read it too
        payload.update(error_code=mlflow_code, message=message)
    text = json.dumps(payload)
    assert "'" not in text and "$" not in text, text  # nginx quotes it in single quotes and expands $variables
    return text


def _proxied(run_dir: str, body_mb: int, too_large: str) -> list[str]:
    """The lines of a location that passes whole requests to gunicorn and streams what comes back."""
    return [
        f"      client_max_body_size {body_mb}m;",
        "      proxy_pass http://mlpd_web;",  # no URI part: the request URI goes on as sent
        "      proxy_http_version 1.1;",
        "      proxy_set_header Connection \"\";",
        "      proxy_set_header Host $http_host;",
        "      proxy_set_header X-Real-IP $remote_addr;",
        "      proxy_request_buffering on;",
        "      proxy_buffering off;",
        "      proxy_redirect off;",
        "      proxy_connect_timeout 10s;",
        "      proxy_send_timeout 60s;",
        "      proxy_read_timeout 1d;",
        f"      error_page 413 {too_large};",
        "      error_page 502 504 @unavailable;",
    ]


def config_text(run_dir: str, listens: list[str], max_body_mb: int, log_level: str = "info", max_artifact_mb: int | None = None) -> str:
    """nginx.conf for the front: listen on the given HOST:PORTs, pass whole requests to the socket.

    /mlflow takes bodies up to max_artifact_mb (mlflow.max_artifact_mb) and refuses a chunked one
    (411): the front buffers every body before the daemon sees it, so only a length said up front
    lets an upload be refused before it is written (mlpd.web.mlflow_mount does the same).
    """
    temp = os.path.join(run_dir, "nginx")
    level = {"debug": "info", "info": "warn", "warning": "warn", "error": "error"}.get(log_level, "warn")
    user = ""
    if os.geteuid() == 0:
        import pwd

        user = f"user {pwd.getpwuid(0).pw_name};"  # its workers reach the daemon's 0700 state directory as the daemon does
    too_large = _json_error("too_large", f"the request body is over {max_body_mb} MiB")
    unavailable = _json_error("unavailable", "the web processes of the daemon are not answering; try again in a moment "
                                             "(an admin sees why in the daemon log)")
    mlflow: list[str] = []
    if max_artifact_mb is not None:
        artifact_too_large = _json_error("too_large", f"an upload to MLflow is over the {max_artifact_mb} MiB limit of one upload "
                                                      "(mlflow.max_artifact_mb); split it, or ask an admin to raise it", "RESOURCE_EXHAUSTED")
        length_required = _json_error("length_required", "an artifact upload must say its size (Content-Length); "
                                                         "MLflow clients do, a chunked upload is refused", "INVALID_PARAMETER_VALUE")
        mlflow = [
            "    location /mlflow {",
            "      if ($http_transfer_encoding) {",
            "        return 411;",
            "      }",
            "      error_page 411 @length_required;",
            *_proxied(run_dir, max(max_body_mb, max_artifact_mb), "@artifact_too_large"),
            "    }",
            "    location @artifact_too_large {",
            "      default_type application/json;",
            f"      return 413 '{artifact_too_large}';",
            "    }",
            "    location @length_required {",
            "      default_type application/json;",
            f"      return 411 '{length_required}';",
            "    }",
        ]
    lines = [
        "daemon off;",
        "worker_processes 1;",
        f"worker_rlimit_nofile {MAX_CONNECTIONS * 2 + 64};",
        f"pid {os.path.join(run_dir, 'nginx.pid')};",
        f"error_log stderr {level};",
        user,
        "events {",
        f"  worker_connections {MAX_CONNECTIONS};",
        "}",
        "http {",
        "  access_log off;",
        "  server_tokens off;",
        *(f"  {kind}_temp_path {os.path.join(temp, kind)};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        f"  client_header_timeout {HEADER_TIMEOUT}s;",
        f"  client_body_timeout {BODY_TIMEOUT}s;",
        f"  send_timeout {SEND_TIMEOUT}s;",
        "  keepalive_timeout 30s;",
        "  reset_timedout_connection on;",
        "  client_body_buffer_size 1m;",
        "  large_client_header_buffers 4 32k;",
        "  underscores_in_headers on;",
        # Kept-alive connections to gunicorn: one that answered before it read a body (a refusal by
        # size or disk) reads and drops the rest before the next request, so nginx can send it all
        # and pass the answer on; on a closed connection nginx would answer 502 instead. nginx lets
        # an idle one go before gunicorn would (--keep-alive), so it never sends on one being closed.
        "  upstream mlpd_web {",
        f"    server unix:{socket_path(run_dir)};",
        "    keepalive 32;",
        f"    keepalive_timeout {UPSTREAM_IDLE}s;",
        "  }",
        "  server {",
        *(_listen_line(address) for address in listens),
        "    location / {",
        *_proxied(run_dir, max_body_mb, "@too_large"),
        "    }",
        *mlflow,
        "    location @too_large {",
        "      default_type application/json;",
        f"      return 413 '{too_large}';",
        "    }",
        "    location @unavailable {",
        "      default_type application/json;",
        f"      return 503 '{unavailable}';",
        "    }",
        "  }",
        "}",
        "",
    ]
    return "\n".join(line for line in lines if line)


def write_config(run_dir: str, listens: list[str], max_body_mb: int, log_level: str = "info", max_artifact_mb: int | None = None) -> str:
    """Write run/nginx.conf (and its temp directories); return its path."""
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(run_dir, "nginx", kind), mode=0o700, exist_ok=True)
    path = os.path.join(run_dir, "nginx.conf")
    with open(path + ".tmp", "w") as fh:
        fh.write(config_text(run_dir, listens, max_body_mb, log_level, max_artifact_mb))
    os.replace(path + ".tmp", path)
    return path


def command(binary: str, run_dir: str, conf: str) -> list[str]:
    """The front's command line (foreground; its prefix the run directory)."""
    return [binary, "-e", "stderr", "-p", run_dir, "-c", conf]
