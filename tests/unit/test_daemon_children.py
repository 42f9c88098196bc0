"""The daemon's children as others see them: `mlpd daemon --status` lines and /healthz, from a real SQLite store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlpd.ops import supervision
from mlpd.config import load_config
from mlpd.ops.daemon import children_lines, children_status
from mlpd.store import Store, set_status

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
NOW = 1_800_000_000.0


@pytest.fixture
def config(tmp_path):
    cfg = load_config(SHIPPED, {"server.state_dir": str(tmp_path / "state")})
    os.makedirs(cfg.state_dir)
    Store(cfg.db_path).migrate()
    return cfg


def publish(cfg, worker: dict, daemon_pid: int = 4242) -> None:
    running = {"state": "RUNNING", "quick_exits": 0, "last_exit": None, "since": NOW - 300, "restart_at": None}
    set_status(Store(cfg.db_path), supervision.STATUS_KEY, {"daemon_pid": daemon_pid, "children": {"web": running, "worker": worker}})


FATAL_WORKER = {"state": "FATAL", "quick_exits": 5, "last_exit": -9, "since": None, "restart_at": None}


def test_status_lines_say_each_state_and_the_last_exit(config):
    publish(config, {"state": "BACKOFF", "quick_exits": 2, "last_exit": 3, "since": None, "restart_at": NOW + 4})
    lines = children_lines(children_status(config, 4242), NOW)
    assert lines[0].split() == ["web", "RUNNING", "up", "5m00s"]
    assert lines[1].split()[:2] == ["worker", "BACKOFF"] and "exit status 3" in lines[1] and "restarting in 4s" in lines[1]
    publish(config, FATAL_WORKER)
    fatal = children_lines(children_status(config, 4242), NOW)[1]
    assert fatal.split()[:2] == ["worker", "FATAL"] and "5 times in a row" in fatal and "killed by SIGKILL" in fatal
    assert "pid " not in " ".join(lines)  # scripts take the daemon's pid from the first line ('running, pid N')


def test_status_ignores_what_another_daemon_published_and_an_unreadable_store(config, tmp_path):
    publish(config, FATAL_WORKER, daemon_pid=1)
    assert children_status(config, 4242) is None
    elsewhere = load_config(SHIPPED, {"server.state_dir": str(tmp_path / "none")})
    assert children_status(elsewhere, 4242) is None


def test_healthz_says_fatal_for_a_fatal_worker_and_lists_the_children(config):
    from mlpd.web import create_app

    client = create_app(config).test_client()
    body = client.get("/healthz").get_json()
    assert body["worker"] == "starting" and "children" not in body  # no daemon published anything
    set_status(Store(config.db_path), "worker.heartbeat", {"passes": 1})
    publish(config, {"state": "RUNNING", "quick_exits": 0, "last_exit": None, "since": NOW, "restart_at": None})
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["worker"] == "ok" and body["children"] == {"web": "running", "worker": "running"}
    publish(config, FATAL_WORKER)
    body = client.get("/healthz").get_json()
    assert body["worker"] == "fatal" and body["children"]["worker"] == "fatal", json.dumps(body)
