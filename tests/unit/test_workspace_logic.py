"""The pure parts of workspaces: the culling decision, the view, what a workspace may ask for."""

from __future__ import annotations

import pytest

from mlpd.kinds import workspace as workspaces
from mlpd.kinds.workspace import Activity, WorkspaceError, cull_decision


def test_idle_past_the_timeout_is_culled_and_activity_moves_the_clock():
    assert cull_decision(None, 1000.0, None, 60, 1059.0) == (1000.0, False)
    assert cull_decision(None, 1000.0, None, 60, 1060.0) == (1000.0, True)  # no answer: judged from the session's start
    assert cull_decision(None, 1000.0, Activity(1050.0, False), 60, 1100.0) == (1050.0, False)
    assert cull_decision(1050.0, 1000.0, Activity(None, False), 60, 1110.0) == (1050.0, True)


def test_a_busy_kernel_or_gpu_is_never_culled_whatever_the_last_activity():
    assert cull_decision(None, 0.0, Activity(1.0, True), 60, 10_000.0) == (10_000.0, False)


def test_activity_from_the_future_counts_as_now_not_later():
    last, cull = cull_decision(None, 0.0, Activity(5_000.0, False), 60, 1_000.0)
    assert last == 1_000.0 and not cull


def test_the_view_shows_idle_time_and_time_until_culling_only_while_running():
    ws = {"id": "w1", "name": "lab", "owner": "alice", "spec": {"gpus": 1, "image": "img"}, "port": 20001, "ssh_port": 20002, "token": "t",
          "session": "s1", "last_activity": 1030.0, "created_at": 900.0}
    running = {"id": "s1", "state": "running", "reason": "", "gpu_indices": [0], "gpu_uuids": ["GPU-0"], "started_at": 1000.0, "ended_at": None}
    v = workspaces.view(ws, running, 3600, 1100.0)
    assert (v["state"], v["idle_seconds"], v["cull_in_seconds"], v["gpus"]["indices"]) == ("running", 70.0, 3530.0, [0])
    assert v["url"] == "http://127.0.0.1:20001/lab?token=t"
    ended = dict(running, state="cancelled", reason="culled: idle 1h", ended_at=1200.0)
    v = workspaces.view(ws, ended, 3600, 1300.0)
    assert (v["state"], v["reason"], v["idle_seconds"], v["cull_in_seconds"], v["gpus"]["indices"]) == ("stopped", "culled: idle 1h", None, None, [])


@pytest.mark.parametrize("body, field", [({"mounts": ["/:/x"]}, "mounts"), ({"volumes": {}}, "volumes"), ({"user": "0"}, "user"),
                                         ({"command": ["sh"]}, "command"), ({"gpus": -1}, "gpus"), ({"env": {"A": "b"}}, "env")])
def test_a_workspace_may_ask_only_for_resources_and_an_image(body, field):
    with pytest.raises(WorkspaceError) as info:
        workspaces.parse_workspace_spec(body, "mlpd/workspace:latest")
    assert info.value.message.startswith(field)


def test_names_are_plain():
    assert workspaces.check_name("lab-2") == "lab-2"
    for bad in ("", "Lab", "-x", "a/b", "a" * 41, 3):
        with pytest.raises(WorkspaceError):
            workspaces.check_name(bad)


def test_jupyter_timestamps():
    assert workspaces.parse_jupyter_time("1970-01-01T00:01:00.000000Z") == 60.0
    assert workspaces.parse_jupyter_time("garbage") is None and workspaces.parse_jupyter_time(None) is None


def test_an_open_ssh_session_is_told_from_the_listening_sshd():
    assert workspaces.ssh_session_open(["sshd: mlpd@notty", "jupyter lab"])
    assert workspaces.ssh_session_open(["sshd: mlpd@pts/0"])
    assert not workspaces.ssh_session_open(["sshd: /usr/sbin/sshd -f /tmp/mlpd-sshd_config [listener] 0 of 10-100 startups", "bash"])


def test_a_port_something_else_took_is_replaced_at_launch_and_the_replacement_recorded(tmp_path):
    """Issue 22, break 7: a stopped workspace's port taken by another local account is replaced, not failed on."""
    import socket

    from mlpd.config import load_config
    from mlpd.store import Store

    cfg = load_config(None, {"server.state_dir": str(tmp_path), "workspaces.port_range": "41000-41999"})
    store = Store(cfg.db_path)
    store.migrate()
    port = workspaces.allocate_port(store, "41000-41999")
    ssh_port = workspaces.allocate_port(store, "41000-41999", exclude=[port])
    ws = workspaces.create(store, "alice", "lab", {"gpus": 0, "image": "img"}, port, ssh_port)
    assert workspaces._ports_still_free(store, cfg, ws) == ws  # both free: nothing changes
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", port))
    squatter.listen()
    try:
        moved = workspaces._ports_still_free(store, cfg, ws)
    finally:
        squatter.close()
    assert moved["port"] != port and 41000 <= moved["port"] <= 41999 and moved["ssh_port"] == ssh_port
    assert workspaces.by_id(store, ws["id"])["port"] == moved["port"]
    assert store.query("SELECT action FROM events WHERE action = 'workspace.port_replaced'")


def test_a_start_during_a_stop_waits_for_the_stop_then_starts_a_new_session(tmp_path):
    """Issue 23: `mlpd ws stop lab && mlpd ws start lab` — a start that found the stopping session would keep it, and it ended as stopped."""
    from mlpd import jobs
    from mlpd.config import load_config
    from mlpd.jobs import JobState
    from mlpd.store import Store

    cfg = load_config(None, {"server.state_dir": str(tmp_path), "workspaces.port_range": "42000-42999"})
    store = Store(cfg.db_path)
    store.migrate()
    ws = workspaces.create(store, "alice", "lab", {"gpus": 0, "image": "img"}, 42001, 42002)
    first = ws["session"]
    jobs.transition(store, first, JobState.STARTING, actor="mlpd")
    jobs.transition(store, first, JobState.RUNNING, actor="mlpd", started_at=1.0)
    assert not workspaces.stopping(store, ws)
    assert workspaces.start(store, ws, "alice")["session"] == first  # running and not stopping: nothing to do
    workspaces.stop(store, ws, "alice", "stopped by alice")
    assert workspaces.stopping(store, workspaces.by_id(store, ws["id"]))

    def controller_stops_it(seconds):  # the controller ends the session while the start waits
        jobs.transition(store, first, JobState.CANCELLED, actor="mlpd", reason="stopped by alice", ended_at=2.0)

    started = workspaces.start(store, workspaces.wait_stopped(store, ws, sleep=controller_stops_it), "alice", port_range="42000-42999")
    assert started["session"] != first and jobs.get(store, started["session"])["state"] == "queued"
    assert jobs.get(store, first)["state"] == "cancelled"
    # a stop that does not end in time is a clear 409, not a start that ends as stopped
    workspaces.stop(store, started, "alice", "stopped by alice")
    second = workspaces.by_id(store, ws["id"])
    assert not workspaces.stopping(store, second)  # a queued session is cancelled at once: nothing to wait for
    again = workspaces.start(store, second, "alice")
    jobs.transition(store, again["session"], JobState.STARTING, actor="mlpd")
    workspaces.stop(store, again, "alice", "stopped by alice")
    clock = iter([0.0, 0.0, 100.0, 100.0])
    with pytest.raises(WorkspaceError) as exc:
        workspaces.wait_stopped(store, again, timeout=60, clock=lambda: next(clock), sleep=lambda s: None)
    assert exc.value.code == "stopping" and exc.value.status == 409 and "still stopping" in exc.value.message
