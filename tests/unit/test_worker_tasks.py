"""Launches and stops run as huey tasks on the worker's consumer, and are idempotent.

The worker's real pieces (ControllerLoop, its huey instance on a SQLite file, huey's consumer
threads) around the controller on the in-memory runtime (no Docker): a placement becomes a `launch`
task, a cancel a `stop` task; the same task run again, or one left in the queue by a worker that died,
changes nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.workers.loop import ControllerLoop
from mlpd.workers.tasks import WakingSqliteStorage

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")


def wait_for(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class CountingRuntime(MemoryRuntime):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.starts: list[str] = []
        self.stops: list[str] = []

    def start_job(self, req):
        self.starts.append(req.job_id)
        return super().start_job(req)

    def stop(self, job_id, timeout=10):
        self.stops.append(job_id)
        return super().stop(job_id, timeout)


@pytest.fixture
def worker(tmp_path):
    config = load_config(SHIPPED, {"server.state_dir": str(tmp_path), "server.container_listen": "", "gpus.declare": 1,
                                   "scheduler.reconcile_interval": 3600})
    loop = ControllerLoop(config)
    loop.store.migrate()
    runtime = CountingRuntime("test")
    loop.controller = JobController(loop.store, config, runtime, loop.inventory, lambda reason: None, dispatch=loop.tasks.dispatch)
    consumer = loop.tasks.consumer()
    yield loop, runtime, consumer
    consumer.stop(graceful=True)


def submit(loop, command):
    spec, _ = parse_spec({"command": command})
    return jobs.submit(loop.store, "alice", spec)["id"]


def state(loop, job_id):
    return jobs.get(loop.store, job_id)["state"]


def test_a_placement_is_launched_by_a_huey_task_once_however_often_it_is_asked(worker):
    loop, runtime, consumer = worker
    job = submit(loop, ["sleep", "600"])
    loop.controller.reconcile()
    assert state(loop, job) == "starting" and runtime.starts == []  # the pass enqueued the launch; it did not start it
    assert len(loop.tasks.huey.pending()) == 1
    loop.tasks.launch(job)  # a second launch of the same job waiting in the queue (e.g. left by a worker that died)
    consumer.start()
    wait_for(lambda: state(loop, job) == "running", "the launch task")
    wait_for(lambda: not loop.tasks.huey.pending() and not loop.controller.launching, "the queue to drain")
    loop.tasks.launch(job)  # and one more, after it runs
    wait_for(lambda: not loop.tasks.huey.pending() and not loop.controller.launching, "the queue to drain")
    loop.controller.reconcile()
    assert runtime.starts == [job] and len(runtime.list_jobs()) == 1


def test_a_cancel_is_carried_out_by_a_stop_task_and_a_repeated_stop_changes_nothing(worker):
    loop, runtime, consumer = worker
    consumer.start()
    job = submit(loop, ["sleep", "600"])
    loop.controller.reconcile()
    wait_for(lambda: state(loop, job) == "running", "the launch task")
    assert jobs.request_cancel(loop.store, job, "alice")
    loop.controller.reconcile()  # asks for the stop and returns; the task does it
    wait_for(lambda: state(loop, job) == "cancelled", "the stop task")
    ended = jobs.get(loop.store, job)
    loop.tasks.stop(job, 5)
    wait_for(lambda: not loop.tasks.huey.pending() and not loop.controller.launching, "the queue to drain")
    assert runtime.stops == [job] and jobs.get(loop.store, job) == ended and runtime.list_jobs() == {}


def test_the_storage_hands_a_task_enqueued_in_this_process_to_a_waiting_consumer_thread(tmp_path):
    """A waiting dequeue returns the task enqueued meanwhile (woken, not polled), and an empty queue
    returns None after the fallback wait rather than blocking for ever."""
    import threading

    storage = WakingSqliteStorage("t", filename=str(tmp_path / "q.db"))
    got: list = []
    reader = threading.Thread(target=lambda: got.append(storage.dequeue()))
    reader.start()
    storage.enqueue(b"task")
    reader.join(10)
    assert got == [b"task"]
    assert storage.dequeue() is None
