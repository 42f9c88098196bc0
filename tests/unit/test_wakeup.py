"""mlpd.wakeup: the API's wake-up reaches the worker in one datagram, and nothing breaks when nobody listens."""

from __future__ import annotations

import threading

from mlpd.wakeup import WakeListener, wake


def test_a_wake_reaches_the_listener_and_a_missing_listener_is_no_error(tmp_path):
    assert wake(str(tmp_path), "nobody listens") is False
    got, arrived = [], threading.Event()
    listener = WakeListener(str(tmp_path), lambda reason: (got.append(reason), arrived.set()))
    assert listener.start()
    try:
        assert wake(str(tmp_path), "submitted abc")
        assert arrived.wait(5)
        assert got == ["submitted abc"]
    finally:
        listener.close()
    # a killed worker leaves its socket file; the next one binds over it
    again = WakeListener(str(tmp_path), lambda reason: None)
    assert again.start()
    again.close()


def test_a_state_dir_too_long_for_a_socket_falls_back_to_the_periodic_pass(tmp_path):
    deep = tmp_path / ("d" * 120)
    listener = WakeListener(str(deep), lambda reason: None)
    assert listener.start() is False
    assert wake(str(deep), "x") is False
