"""A burst of submissions: every job accepted runs exactly once and succeeds, also across a SIGKILL.

16 client threads POST short jobs through the HTTP API as fast as the daemon answers,
against a daemon of the test's own that reconciles every 0.1 s (the shipped mlpd.toml
with `scheduler.reconcile_interval = 0.1`), so reconcile passes overlap the launches.
Each job appends its id to /outputs/ran: one line means it ran once, none that it never
ran, two that two containers ran it. The second test SIGKILLs the daemon in the middle
of the burst and restarts it on the same state directory and port one second later.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import re
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import requests
import urllib3

from helpers import needs_docker

pytestmark = needs_docker

JOBS = 300          # submissions in one burst
CLIENTS = 16        # client threads, each with its own requests.Session
USERS = 4           # the clients submit as USERS users, CLIENTS // USERS threads each
KILL_AFTER = 100    # test b: SIGKILL once this many submissions have returned 2xx
RECONCILE = 0.1     # scheduler.reconcile_interval of the test's daemon
COMMAND = ["sh", "-c", "echo $MLPD_JOB_ID >> /outputs/ran; echo ok"]
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition
SHIPPED = Path(__file__).resolve().parents[2] / "mlpd.toml"


# ---------------------------------------------------------------- set-up


def burst_config(tmp_path: Path) -> Path:
    """The shipped mlpd.toml with reconcile_interval = RECONCILE in [scheduler]."""
    text, n = re.subn(r"(?m)^reconcile_interval\s*=.*$", f"reconcile_interval = {RECONCILE}", SHIPPED.read_text())
    assert n == 1, "the shipped mlpd.toml has no scheduler.reconcile_interval line"
    path = tmp_path / "mlpd.toml"
    path.write_text(text)
    return path


def start_burst_daemon(make_daemon, tmp_path):
    d = make_daemon(config_file=burst_config(tmp_path))
    tokens = [d.add_user(f"burst{i}{uuid.uuid4().hex[:6]}") for i in range(USERS)]
    return d, tokens


# ---------------------------------------------------------------- the burst


def refused(exc: requests.RequestException) -> bool:
    """True when the connection was refused: nothing reached the daemon (it is down)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError) or "Connection refused" in str(exc)


class Burst:
    """CLIENTS threads submitting JOBS jobs in all; results kept per submission."""

    def __init__(self, daemon, tokens: list[str], retry_refused_until: threading.Event | None = None):
        self.d, self.tokens = daemon, tokens
        self.lock = threading.Lock()
        self.next = 0
        self.accepted: dict[str, int] = {}         # job id -> submission index (2xx)
        self.latencies: list[float] = []
        self.http_errors: list[str] = []           # non-2xx answers
        self.lost_responses: list[str] = []        # sent, but no answer came back (may or may not exist)
        self.refused = 0                           # connection refused (daemon down), retried
        # With retry_refused_until, a refused submission is tried again (it never reached the
        # daemon) until the event is set; the burst thereby goes on across the outage.
        self.retry_until = retry_refused_until
        self.threads = [threading.Thread(target=self._client, args=(i,), name=f"client-{i}", daemon=True) for i in range(CLIENTS)]

    @property
    def ok(self) -> int:
        with self.lock:
            return len(self.accepted)

    def _client(self, n: int) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.tokens[n % len(self.tokens)]}"
        url = self.d.url + "/api/v1/jobs"
        while True:
            with self.lock:
                if self.next >= JOBS:
                    break
                index = self.next
                self.next += 1
            while True:
                started = time.perf_counter()
                try:
                    resp = session.post(url, json={"command": COMMAND}, timeout=60)
                except requests.RequestException as exc:
                    if refused(exc) and self.retry_until is not None and not self.retry_until.is_set():
                        with self.lock:
                            self.refused += 1
                        time.sleep(0.2)
                        continue
                    with self.lock:
                        self.lost_responses.append(f"#{index}: {type(exc).__name__}: {str(exc)[:200]}")
                    break
                took = time.perf_counter() - started
                with self.lock:
                    if 200 <= resp.status_code < 300:
                        self.accepted[resp.json()["job"]["id"]] = index
                        self.latencies.append(took)
                    else:
                        self.http_errors.append(f"#{index}: HTTP {resp.status_code} {resp.text[:300]}")
                break
        session.close()

    def start(self) -> "Burst":
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), f"the clients did not finish in {timeout}s"


# ---------------------------------------------------------------- checking


def all_jobs(d) -> dict[str, dict]:
    resp = d.api("GET", "/api/v1/jobs?all=1&limit=10000", d.admin_token)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert not body["truncated"]
    return {j["id"]: j for j in body["jobs"]}


def wait_all_ended(d, ids, timeout: float) -> dict[str, dict]:
    """Poll the job list until every job in it, and every id in ids, has ended (or timeout); return the last list."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            seen = all_jobs(d)
        except requests.RequestException:
            seen = None
        if seen is not None and all(i in seen for i in ids) and all(j["state"] in TERMINAL for j in seen.values()):
            return seen
        if time.monotonic() > deadline:
            return seen if seen is not None else all_jobs(d)
        time.sleep(1)


def settle(d, timeout: float = 30) -> list[str]:
    """Wait until the daemon's job containers are all gone (a second container of a job that already
    ended may still be running and about to write its ran file); return the names of those left."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}} {{.Status}}", "--filter", f"label=mlpd.instance={d.instance_id()}"],
                             capture_output=True, text=True)
        left = out.stdout.split("\n") if out.stdout.strip() else []
        if not left or time.monotonic() > deadline:
            return [x for x in left if x]
        time.sleep(0.5)


def ran_lines(d, job_id: str) -> list[str] | None:
    """The lines of the job's /outputs/ran file; None when it has none (the job never ran)."""
    path = d.state_dir / "jobs" / job_id / "outputs" / "ran"
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return None


def check_jobs(d, accepted: dict[str, int], seen: dict[str, dict]) -> tuple[list[str], Counter]:
    """Every accepted job present, every job present succeeded with exit code 0 and ran exactly once."""
    problems, counts = [], Counter()   # problems as (severity, text): the worst are listed first
    for name in settle(d):
        counts["container left behind"] += 1
        problems.append((4, f"container {name} still present 30 s after every job ended"))
    for job_id in sorted(set(accepted) - set(seen)):
        counts["missing"] += 1
        problems.append((0, f"{job_id}: accepted (submission #{accepted[job_id]}) but not in the job list"))
    for job_id, j in sorted(seen.items(), key=lambda kv: kv[1]["submitted_at"]):
        where = "" if job_id in accepted else " (not acknowledged to its client)"
        lines = ran_lines(d, job_id)
        bad, severity = [], 9
        if j["state"] != "succeeded":
            counts[j["state"]] += 1
            bad.append(f"state {j['state']} ({j['reason']})")
            severity = min(severity, 1)
        elif j["exit_code"] != 0:
            counts["bad exit code"] += 1
            bad.append(f"exit code {j['exit_code']}")
            severity = min(severity, 1)
        if lines is None:
            if j["state"] == "succeeded":
                counts["succeeded without running"] += 1
                bad.append("succeeded but its ran file is missing (never ran)")
                severity = min(severity, 2)
        elif len(lines) != 1:
            counts["ran twice" if len(lines) == 2 else f"ran {len(lines)} times"] += 1
            bad.append(f"ran {len(lines)} times")
            severity = min(severity, 2)
        elif lines[0] != job_id:
            counts["wrong ran file"] += 1
            bad.append(f"ran file says {lines[0]!r}")
            severity = min(severity, 2)
        if j["state"] == "succeeded" and (j["started_at"] is None or j["ended_at"] is None):
            counts["no start or end time"] += 1
            bad.append(f"started_at {j['started_at']}, ended_at {j['ended_at']}")
            severity = min(severity, 3)
        elif None not in (j["started_at"], j["ended_at"]) and j["started_at"] > j["ended_at"]:
            # Docker itself reports FinishedAt before StartedAt for some very short containers.
            counts["started_at > ended_at"] += 1
            bad.append(f"started_at {j['started_at']} > ended_at {j['ended_at']} (by {(j['started_at'] - j['ended_at']) * 1000:.1f} ms)")
            severity = min(severity, 3)
        if bad:
            problems.append((severity, f"{job_id}{where}: " + "; ".join(bad)))
    return [text for _, text in sorted(problems, key=lambda p: p[0])], counts


def report(title: str, d, burst: Burst, seen: dict, problems: list[str], counts: Counter, extra: str = "") -> str:
    shown = "\n  ".join(problems[:60]) + (f"\n  ... and {len(problems) - 60} more" if len(problems) > 60 else "")
    return (f"{title}: {len(problems)} problems {dict(counts)}; {len(burst.accepted)} accepted, {len(seen)} in the job list, "
            f"{len(burst.http_errors)} HTTP errors, {len(burst.lost_responses)} lost responses{extra}\n  {shown}\n"
            f"HTTP errors: {burst.http_errors[:10]}\nlost responses: {burst.lost_responses[:10]}\n"
            f"--- daemon log (tail) ---\n{d.log_text()}")


def wait_timeout() -> float:
    return 120 + JOBS * 1.0


# ---------------------------------------------------------------- tests


def test_burst_of_submissions_every_job_runs_once_and_succeeds(make_daemon, tmp_path):
    d, tokens = start_burst_daemon(make_daemon, tmp_path)
    t0 = time.monotonic()
    burst = Burst(d, tokens).start()
    burst.join()
    submitted = time.monotonic() - t0
    assert not burst.http_errors and not burst.lost_responses and len(burst.accepted) == JOBS, (
        f"{len(burst.accepted)}/{JOBS} submissions got 2xx; HTTP errors: {burst.http_errors[:10]}; "
        f"no response: {burst.lost_responses[:10]}\n--- daemon log (tail) ---\n{d.log_text()}")

    seen = wait_all_ended(d, burst.accepted, wait_timeout())
    ended = time.monotonic() - t0
    problems, counts = check_jobs(d, burst.accepted, seen)
    print(f"burst: {JOBS} jobs accepted in {submitted:.1f}s, all ended after {ended:.1f}s; problems {dict(counts)}")
    assert not problems, report("burst", d, burst, seen, problems, counts)
    assert len(seen) == JOBS  # nothing beyond what was submitted


def test_burst_survives_sigkill_of_the_daemon_and_restart(make_daemon, tmp_path):
    d, tokens = start_burst_daemon(make_daemon, tmp_path)
    restarted = threading.Event()          # set when the restart is over (done or failed): stop retrying refused submissions
    outage: dict[str, object] = {}

    def killer() -> None:
        try:
            deadline = time.monotonic() + 120
            while burst.ok < KILL_AFTER and time.monotonic() < deadline and any(t.is_alive() for t in burst.threads):
                time.sleep(0.01)
            outage["killed_after"] = burst.ok
            outage["killed_at"] = time.monotonic()
            outage["exit"] = d.stop(signal.SIGKILL)
            outage["down_after"] = time.monotonic() - outage["killed_at"]
            time.sleep(1)
            try:
                d.start()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                outage["restart_error"] = str(exc)
            outage["up_after"] = time.monotonic() - outage["killed_at"]
        finally:
            restarted.set()

    t0 = time.monotonic()
    burst = Burst(d, tokens, retry_refused_until=restarted).start()
    k = threading.Thread(target=killer, name="killer", daemon=True)
    k.start()
    burst.join()
    k.join(120)
    submitted = time.monotonic() - t0
    assert restarted.is_set(), "the kill and restart did not finish"
    assert "restart_error" not in outage, f"the daemon did not come back after SIGKILL: {outage['restart_error']}"

    seen = wait_all_ended(d, burst.accepted, wait_timeout())
    ended = time.monotonic() - t0
    problems, counts = check_jobs(d, burst.accepted, seen)
    summary = (f"; killed after {outage.get('killed_after')} accepted, port free after {outage.get('down_after', 0):.1f}s, "
               f"up again after {outage.get('up_after', 0):.1f}s, {burst.refused} refused (retried)")
    print(f"burst with SIGKILL: {len(burst.accepted)} accepted in {submitted:.1f}s, all ended after {ended:.1f}s{summary}; "
          f"HTTP errors {burst.http_errors[:5]}; problems {dict(counts)}")
    assert not problems, report("burst with SIGKILL", d, burst, seen, problems, counts, summary)
