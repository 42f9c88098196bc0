"""The worker process: ``python -m mlpd.workers`` (started by ``mlpd daemon``)."""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time

from mlpd.config import Config, load_config
from mlpd.wakeup import WakeListener
from mlpd.workers import loop


def hold_controller_lock(state_dir: str, wait: float = 30.0):
    """The worker's own lock: one controller per state directory, even for a worker started by hand."""
    fh = open(os.path.join(state_dir, "worker.lock"), "a+")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() > deadline:
                fh.close()
                return None
            time.sleep(0.2)


def main() -> int:
    path = os.environ.get("MLPD_RESOLVED_CONFIG")
    if path:
        with open(path) as fh:
            config = Config.from_json(fh.read())
    else:
        config = load_config()
    logging.basicConfig(level=config["server.log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    lock = hold_controller_lock(config.state_dir)
    if lock is None:
        logging.getLogger("mlpd.workers").error("another worker still acts on %s; not starting a second controller", config.state_dir)
        return 1
    controller_loop = loop.ControllerLoop(config)
    listener = WakeListener(config.state_dir, controller_loop.wake)
    listener.start()  # the API's wake-ups after a submit or a cancel (mlpd.wakeup)
    controller_loop.start()
    # huey's consumer owns the main thread and its signal handling; SIGTERM stops both.
    consumer = controller_loop.tasks.consumer()
    try:
        consumer.run()
    finally:
        listener.close()
        controller_loop.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
