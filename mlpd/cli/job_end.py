"""How a job ended, for the commands that follow one: one line on stderr and an exit status.

`mlpd run -f`, `submit -f`, `logs -f`, `jobs rerun -f` and `mlpd wait` end with a line such as
`mlpd: job 8e946a85c1d2 failed: exited with code 1` and exit with the status below, so that
`mlpd run -f -- python train.py && mlpd run -f -- python eval.py` does what it says. A job's own
exit code (1-255) passes through; what has no exit code of its own gets a fixed status from the
sysexits range (70-76), which programs rarely exit with (signals give 128+N, shells 126 and 127,
`timeout` 124, Python 1 and 2).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import click

EXIT_SUCCEEDED = 0
EXIT_NEVER_RAN = 70  # failed with no exit code of its own: the image was not found, the container could not start
EXIT_ENV_BUILD = 71  # building its environment (its requirements) failed
EXIT_CANCELLED = 72
EXIT_TIMED_OUT = 73
EXIT_LOST = 74  # its container vanished
EXIT_PREEMPTED = 75  # preempted and waiting in the queue for its next attempt when mlpd stopped waiting (EX_TEMPFAIL)
EXIT_NOT_ENDED = 76  # still queued, starting or running when `mlpd wait --timeout` ran out
EXIT_INTERRUPTED = 130  # Ctrl-C stopped the following (not the job), as shells report an interrupted command

# The table the README and `mlpd wait --help` give; a unit test keeps both in step with the constants.
EXIT_STATUS_TABLE = (
    ("0", "the job succeeded"),
    ("1-255", "the job failed with this exit code of its own (137: killed, e.g. out of memory)"),
    (str(EXIT_NEVER_RAN), "the job failed without running (image not found, its container could not start)"),
    (str(EXIT_ENV_BUILD), "building the job's environment (its requirements) failed"),
    (str(EXIT_CANCELLED), "the job was cancelled"),
    (str(EXIT_TIMED_OUT), "the job was stopped after its time limit"),
    (str(EXIT_LOST), "the job was lost (its container vanished)"),
    (str(EXIT_PREEMPTED), "mlpd wait --timeout: the job was preempted and waits for its next attempt"),
    (str(EXIT_NOT_ENDED), "mlpd wait --timeout: the job is still queued or running"),
    (str(EXIT_INTERRUPTED), "Ctrl-C stopped the waiting or following; the job goes on"),
)

ENV_BUILD_FAILED = "building its environment failed"  # how mlpd.runtime.environments begins the reason of a failed build

# Which status `mlpd wait` exits with when jobs ended differently: the worst, by this rank.
_RANK = {"succeeded": 0, "cancelled": 1, "preempted": 2, "not_ended": 3, "timed_out": 4, "lost": 5, "failed": 6}


@dataclass(frozen=True)
class Outcome:
    """A job's end as a command reports it: the exit status and the line for stderr."""

    job_id: str
    state: str  # a job state, or "not_ended" (queued, starting or running)
    status: int
    line: str


def outcome(job: dict) -> Outcome:
    """The exit status and the stderr line for a job as the API shows it (any state)."""
    state, reason, code = job["state"], " ".join((job.get("reason") or "").split()), job.get("exit_code")  # one line, whatever pip wrote

    def said(what: str, detail: str = reason) -> str:
        return f"mlpd: job {job['id']} {what}" + (f": {detail}" if detail else "")

    if state == "succeeded":
        return Outcome(job["id"], state, EXIT_SUCCEEDED, said("succeeded", ""))
    if state == "failed":
        if reason.startswith(ENV_BUILD_FAILED):
            return Outcome(job["id"], state, EXIT_ENV_BUILD, said("failed"))
        if isinstance(code, int) and 1 <= code <= 255:
            detail = reason if str(code) in reason else f"{reason} (exit code {code})".lstrip()
            return Outcome(job["id"], state, code, said("failed", detail))
        return Outcome(job["id"], state, EXIT_NEVER_RAN, said("failed", reason or "it did not run"))
    if state == "cancelled":
        return Outcome(job["id"], state, EXIT_CANCELLED, said("was cancelled"))
    if state == "timed_out":
        return Outcome(job["id"], state, EXIT_TIMED_OUT, said("timed out"))
    if state == "lost":
        return Outcome(job["id"], state, EXIT_LOST, said("was lost"))
    if state == "preempted" or (state == "queued" and (job.get("attempt") or 1) > 1):
        return Outcome(job["id"], "preempted", EXIT_PREEMPTED, said("was preempted and has not ended", f"attempt {job.get('attempt') or 1} waits to run"))
    return Outcome(job["id"], "not_ended", EXIT_NOT_ENDED, said("has not ended", f"it is {state}"))


def worst(outcomes: list[Outcome]) -> Outcome | None:
    """The outcome a command waiting for several jobs exits with: the worst end (failed, lost, timed
    out, not ended, preempted, cancelled, succeeded); among equals the first."""
    best = None
    for o in outcomes:
        if best is None or _RANK[o.state] > _RANK[best.state]:
            best = o
    return best


def wait_for_end(client, job_id: str, timeout: float | None = None, interval: float = 0.5,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll the job until it has ended (or timeout seconds passed); its last view."""
    from mlpd.jobs import TERMINAL_STATES  # here, not at the top: `mlpd run` without -f needs no state table

    deadline = None if timeout is None else clock() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}")["job"]
        if job["state"] in TERMINAL_STATES or (deadline is not None and clock() >= deadline):
            return job
        sleep(interval)


def finish(client, job_id: str) -> None:
    """After following a job's output: wait for its final state, say how it ended on stderr and exit
    with its status (the module's table). The log stream ends when the job does; if it broke off
    early (a daemon restart), the job is waited for all the same."""
    import sys

    from mlpd.jobs import TERMINAL_STATES

    sys.stdout.flush()
    job = wait_for_end(client, job_id, timeout=10, interval=0.2)
    if job["state"] not in TERMINAL_STATES:
        click.echo(f"mlpd: the output of job {job_id} ended before the job ({job['state']}); waiting for it to end "
                   f"(Ctrl-C stops waiting; the job goes on)", err=True)
        job = wait_for_end(client, job_id, interval=1.0)
    end = outcome(job)
    click.echo(end.line, err=True)
    raise click.exceptions.Exit(end.status)
