"""How a followed job's end becomes a line on stderr and an exit status (mlpd.cli.job_end)."""

from __future__ import annotations

from click.testing import CliRunner

from mlpd.cli import job_end, main
from mlpd.cli.job_end import Outcome, outcome, wait_for_end, worst


def job(state, reason="", exit_code=None, attempt=1):
    return {"id": "8e946a85c1d2", "state": state, "reason": reason, "exit_code": exit_code, "attempt": attempt}


def test_each_end_has_its_status_and_one_line():
    cases = [
        (job("succeeded", "exited with code 0", 0), 0, "mlpd: job 8e946a85c1d2 succeeded"),
        (job("failed", "exited with code 1", 1), 1, "mlpd: job 8e946a85c1d2 failed: exited with code 1"),
        (job("failed", "out of memory: the container was OOM-killed (limit 64 MiB)", 137), 137,
         "mlpd: job 8e946a85c1d2 failed: out of memory: the container was OOM-killed (limit 64 MiB) (exit code 137)"),
        (job("failed", "image 'x' not found"), 70, "mlpd: job 8e946a85c1d2 failed: image 'x' not found"),
        (job("failed", "building its environment failed: ERROR: No matching distribution found for nope"), 71,
         "mlpd: job 8e946a85c1d2 failed: building its environment failed: ERROR: No matching distribution found for nope"),
        (job("cancelled", "cancelled by nina", 143), 72, "mlpd: job 8e946a85c1d2 was cancelled: cancelled by nina"),
        (job("timed_out", "stopped after its time limit of 2h", 143), 73, "mlpd: job 8e946a85c1d2 timed out: stopped after its time limit of 2h"),
        (job("failed", "building its environment failed: ERROR: a\n / ERROR: b\n (see the build log)"), 71,
         "mlpd: job 8e946a85c1d2 failed: building its environment failed: ERROR: a / ERROR: b (see the build log)"),
        (job("lost", "its container vanished"), 74, "mlpd: job 8e946a85c1d2 was lost: its container vanished"),
        (job("queued", "", None, attempt=2), 75, "mlpd: job 8e946a85c1d2 was preempted and has not ended: attempt 2 waits to run"),
        (job("running"), 76, "mlpd: job 8e946a85c1d2 has not ended: it is running"),
    ]
    for j, status, line in cases:
        assert (outcome(j).status, outcome(j).line) == (status, line), j


def test_the_fixed_statuses_are_distinct_and_clear_of_common_exit_codes():
    fixed = [job_end.EXIT_NEVER_RAN, job_end.EXIT_ENV_BUILD, job_end.EXIT_CANCELLED, job_end.EXIT_TIMED_OUT, job_end.EXIT_LOST,
             job_end.EXIT_PREEMPTED, job_end.EXIT_NOT_ENDED]
    assert len(set(fixed)) == len(fixed)
    assert not set(fixed) & {0, 1, 2, 124, 125, 126, 127} and all(64 <= code <= 78 for code in fixed)


def test_the_environment_build_reason_is_the_one_mlpd_environments_writes():
    import inspect

    from mlpd.runtime import environments

    assert f'"{job_end.ENV_BUILD_FAILED}: ' in inspect.getsource(environments)


def test_wait_exits_with_the_worst_end_the_first_among_equals():
    def o(state, status):
        return Outcome("x" + str(status), state, status, "")

    assert worst([o("succeeded", 0), o("cancelled", 72), o("failed", 3), o("timed_out", 73), o("failed", 1)]).status == 3
    assert worst([o("succeeded", 0), o("lost", 74), o("timed_out", 73)]).status == 74
    assert worst([o("succeeded", 0), o("not_ended", 76), o("cancelled", 72)]).status == 76
    assert worst([o("succeeded", 0)]).status == 0


def test_wait_for_end_polls_until_the_job_ended_or_the_time_is_up():
    class Client:
        def __init__(self, states):
            self.states = list(states)

        def get(self, path):
            return {"job": job(self.states.pop(0) if len(self.states) > 1 else self.states[0])}

    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    assert wait_for_end(Client(["running", "running", "failed"]), "x", clock=lambda: now[0], sleep=sleep)["state"] == "failed"
    assert len(slept) == 2
    assert wait_for_end(Client(["running"]), "x", timeout=2, interval=0.5, clock=lambda: now[0], sleep=sleep)["state"] == "running"


def test_wait_help_gives_the_whole_table():
    text = CliRunner().invoke(main, ["wait", "--help"], terminal_width=200).output
    for code, meaning in job_end.EXIT_STATUS_TABLE:
        assert f"{code:>6}  {meaning}" in text
