"""The huey instance (SQLite-backed, in the state directory) and its tasks.

huey's periodic tasks have a one-minute minimum, so the every-few-seconds
reconcile loop is a thread in the worker process (see __main__); huey carries
the work that is asked for: waking that loop when a job is submitted or
cancelled, so the scheduler reacts at once instead of at the next tick.
"""

from __future__ import annotations

import os
import threading
from typing import Callable

from huey import SqliteHuey

from mlpd.config import Config

_lock = threading.Lock()
_instances: dict[str, "Tasks"] = {}
# Set in the worker process to the running loop's wake(); None elsewhere.
wake_hook: Callable[[str], None] | None = None


class Tasks:
    """The huey instance for one state directory and the task handles."""

    def __init__(self, config: Config):
        self.huey = SqliteHuey("mlpd", filename=os.path.join(config.state_dir, "huey.db"), results=False)

        @self.huey.task()
        def wake_controller(reason: str) -> None:
            if wake_hook is not None:
                wake_hook(reason)

        self.wake_controller = wake_controller


def tasks_for(config: Config) -> Tasks:
    """One Tasks per state directory per process."""
    with _lock:
        if config.state_dir not in _instances:
            _instances[config.state_dir] = Tasks(config)
        return _instances[config.state_dir]
