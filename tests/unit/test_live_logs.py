"""Live logs (issue 22, break 5): the worker copies running output to a file; followers poll it,
never Docker; each user follows a bounded number of streams; a gone client is seen without a write."""

from __future__ import annotations

import socket

import pytest

from mlpd.controller import keep_live_logs
from mlpd.logtext import live_log_path
from mlpd.web.api_jobs import client_gone
from mlpd.web.log_streams import StreamSlots, StreamsBusy
from mlpd.workers.live_logs import LiveLogs, copy_stream


def test_a_copier_appends_the_stream_and_after_a_restart_skips_what_the_file_holds(tmp_path):
    path = str(tmp_path / "job" / "live-1.log")
    assert copy_stream([b"a\n", b"bc\n"], path) == 5
    # a restarted worker reads the same stream from its start: only what is new is appended
    assert copy_stream([b"a\nb", b"c\nd", b"e\n"], path) == 3
    assert open(path, "rb").read() == b"a\nbc\nde\n"


def test_a_copier_never_writes_through_a_link(tmp_path):
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / "live-1.log").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        copy_stream([b"x\n"], str(tmp_path / "live-1.log"))
    assert (tmp_path / "elsewhere").read_bytes() == b""


def test_one_copier_per_running_attempt(tmp_path):
    import threading

    gate = threading.Event()

    def logs(job_id, follow, timestamps):
        assert follow and timestamps
        yield f"{job_id} out\n".encode()
        gate.wait(5)

    live = LiveLogs(str(tmp_path))
    rows = [{"id": "j1", "attempts": 1}, {"id": "j2", "attempts": 2}]
    live.ensure(rows, logs)
    live.ensure(rows, logs)  # a second pass starts none while they run
    assert live.running() == 2
    gate.set()
    for t in list(live._threads.values()):
        t.join(5)
    assert (tmp_path / "jobs" / "j2" / "live-2.log").read_bytes() == b"j2 out\n"


def test_the_saved_log_replaces_the_running_copies(tmp_path):
    (tmp_path / "log").write_bytes(b"saved\n")
    (tmp_path / "live-1.log").write_bytes(b"saved\n")
    keep_live_logs(str(tmp_path), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log"]
    # Docker had nothing to give (the container vanished): this attempt's copy becomes the saved log
    (tmp_path / "log").unlink()
    (tmp_path / "live-2.log").write_bytes(b"copied\n")
    keep_live_logs(str(tmp_path), 2)
    assert (tmp_path / "log").read_bytes() == b"copied\n"
    assert live_log_path(str(tmp_path), 3) == str(tmp_path / "live-3.log")


def test_streams_are_capped_per_user_and_per_process_and_come_back(tmp_path):
    slots = StreamSlots(str(tmp_path), per_process=3)
    other_process = StreamSlots(str(tmp_path), per_process=3)
    first = slots.acquire("ann", 2)
    held = [other_process.acquire("ann", 2)]  # a slot is held while its release is (the response keeps it)
    with pytest.raises(StreamsBusy, match=r"2 log streams.*server.log_streams_per_user"):
        slots.acquire("ann", 2)  # the cap holds across web processes (flocks on shared slot files)
    held.append(slots.acquire("bob", 2))
    first()
    first()  # releasing twice is harmless
    again = slots.acquire("ann", 2)
    held.append(slots.acquire("cid", 2))
    with pytest.raises(StreamsBusy, match="half of server.threads"):
        slots.acquire("dee", 2)
    again()
    held.append(slots.acquire("dee", 2))


def test_a_client_that_has_gone_is_seen_without_writing_to_it():
    ours, theirs = socket.socketpair()
    assert not client_gone(ours)
    theirs.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is a live client, and is left unread
    assert not client_gone(ours)
    assert ours.recv(100)
    theirs.close()
    assert client_gone(ours)
    ours.close()
    assert client_gone(ours)
    assert not client_gone(None)
