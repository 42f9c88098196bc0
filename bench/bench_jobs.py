#!/usr/bin/env python3
"""Benchmark: job submit-to-running latency (mlpd vs plain `docker run`) and submit throughput.

    .venv/bin/python bench/bench_jobs.py [--runs 20] [--quiet-below 1.5] [--busy-ok]

The load average is printed before and after. A latency ratio taken while other work shares the CPUs
says little, so the benchmark refuses to start when the 1-minute load average is at or above
--quiet-below (default 1.5), unless --busy-ok, and then its report says it was not run quiet.

Everything runs in this one process against a daemon of its own (temporary state
directory, a free loopback port, 2 declared GPUs); only loopback traffic. At the end
(also on error) the daemon is stopped and every container labelled with its
instance id, and every baseline container this script started, is removed.

Latency (interleaved rounds; each round runs every kind once, in a shuffled order):
  mlpd CLI     launch `mlpd run --no-code --image IMG -- sleep 30` (MLPD_URL/MLPD_TOKEN env),
               take the job id from its last stdout line, poll GET /api/v1/jobs/ID every 10 ms;
               end = the GET response that says `running`.
  mlpd API     POST /api/v1/jobs from this process (no CLI start-up), then the same polling.
  docker       `docker run -d --rm IMG sleep 30`; end = `docker run -d` returning (it returns once
               the container has started: no `docker inspect` process is added to the baseline).
  docker+flags the same, with the container options mlpd's runtime sets (its isolated network,
               CPU and memory limits, init, user, cap-drop, bind mount, ...): how much of mlpd's
               container start is Docker's own cost for what mlpd asks of it.
Each job/container is cancelled/removed right after it is measured, and the next run
starts only when the job has ended and its container is gone.

Breakdown (daemon timestamps; same host clock): launch -> submitted_at (client start-up +
HTTP), submitted_at -> `job.starting` event (wake + scheduling), `job.starting` -> Docker's
StartedAt (container create + start), StartedAt -> `job.running` event (recording), and
`job.running` -> observed by the poll.

Throughput: a 2-GPU `sleep 600` holder runs, 100 jobs asking for 2 GPUs wait behind it, then
200 more such jobs are POSTed from 8 threads (a requests.Session each); jobs/s, compared with
authenticated GET /api/v1/whoami from the same 8 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchlib import BIN, IMAGE, TERMINAL, Daemon, JobClient, docker, image_missing, log, median, ms, p90, parallel, print_table, ratio, times

# ---------------------------------------------------------------- the daemon under test


def reconcile_passes(d: Daemon) -> int | None:
    """The worker's pass counter, from its heartbeat row (read-only)."""
    try:
        rows = d.query("SELECT value FROM daemon_status WHERE key = 'worker.heartbeat'")
        return json.loads(rows[0][0])["passes"] if rows else None
    except (sqlite3.Error, ValueError, KeyError):
        return None


# ---------------------------------------------------------------- latency


class Latency(JobClient):
    def __init__(self, d: Daemon, bench_label: str, outputs_dir: Path):
        super().__init__(d)
        self.label = bench_label
        self.outputs_dir = outputs_dir
        self.results: dict[str, list[dict]] = {"cli": [], "api": [], "docker": [], "docker_flags": []}

    def poll_running(self, job_id: str, timeout: float = 60) -> tuple[float, float, int]:
        """GET the job every 10 ms until it is running; (perf_counter, time.time) when the answer came, and #polls."""
        deadline = time.perf_counter() + timeout
        polls = 0
        while True:
            job = self.job(job_id)
            polls += 1
            now_p, now_w = time.perf_counter(), time.time()
            if job["state"] == "running":
                return now_p, now_w, polls
            if job["state"] in TERMINAL:
                raise RuntimeError(f"job {job_id} ended ({job['state']}: {job['reason']}) before running")
            if now_p > deadline:
                raise RuntimeError(f"job {job_id} not running after {timeout}s (state {job['state']})")
            time.sleep(0.01)

    def finish_job(self, job_id: str, timeout: float = 60) -> dict:
        """Cancel, wait until the job has ended and its container is gone; return the job with its history."""
        self.s.post(f"{self.d.api}/jobs/{job_id}/cancel", timeout=30).raise_for_status()
        return self.wait_ended(job_id, timeout, poll=0.02, container_poll=0.05)

    @staticmethod
    def stamps(job: dict) -> dict:
        """submitted_at, the starting/running event times and Docker's StartedAt, from the daemon's records."""
        out = {"submitted": job["submitted_at"], "starting": None, "running": None, "docker_started": None}
        for ev in job["history"]:
            if ev["action"] == "job.starting" and out["starting"] is None:
                out["starting"] = ev["at"]
            elif ev["action"] == "job.running" and out["running"] is None:
                out["running"] = ev["at"]
                out["docker_started"] = ev["detail"].get("started_at")
        if out["docker_started"] is None:
            out["docker_started"] = job["started_at"]
        return out

    def run_cli(self) -> dict:
        argv = [CLI, "run", "--no-code", "--image", IMAGE, "--", "sleep", "30"]
        env = self.d.env(self.d.token)
        t0w, t0 = time.time(), time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        t_exit = time.perf_counter()
        if result.returncode != 0:
            raise RuntimeError(f"mlpd run failed ({result.returncode}): {result.stderr}")
        job_id = result.stdout.strip().splitlines()[-1].strip()
        t_end, t_end_w, polls = self.poll_running(job_id)
        job = self.finish_job(job_id)
        return {"total": t_end - t0, "t0w": t0w, "endw": t_end_w, "client_done": t_exit - t0, "polls": polls, **self.stamps(job)}

    def run_api(self) -> dict:
        spec = {"command": ["sleep", "30"], "gpus": 0, "image": IMAGE}
        t0w, t0 = time.time(), time.perf_counter()
        r = self.s.post(f"{self.d.api}/jobs", json=spec, timeout=30)
        t_resp = time.perf_counter()
        r.raise_for_status()
        job_id = r.json()["job"]["id"]
        t_end, t_end_w, polls = self.poll_running(job_id)
        job = self.finish_job(job_id)
        return {"total": t_end - t0, "t0w": t0w, "endw": t_end_w, "client_done": t_resp - t0, "polls": polls, **self.stamps(job)}

    def docker_flags(self) -> list[str]:
        """The container options mlpd's DockerRuntime.start_job sets for a 0-GPU job without code."""
        # mlpd's isolated network (the daemon made it at start) and the default CPU and memory limits
        # (jobs.default_cpus 2, jobs.default_memory 8g): attaching to a user-defined network is most of the difference.
        return ["--network", "mlpd-isolated", "--cpus", "2", "--memory", "8g", "--memory-swap", "8g",
                "--init", "--user", "1000:1000", "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
                "--pids-limit", "4096", "--add-host", "host.docker.internal:host-gateway",
                "--log-driver", "json-file", "--log-opt", "max-size=50m", "--log-opt", "max-file=2",
                "-e", "PYTHONUNBUFFERED=1", "-e", "HOME=/tmp", "-e", "CUDA_VISIBLE_DEVICES=", "-e", "NVIDIA_VISIBLE_DEVICES=void",
                "-e", "MLPD_JOB_ID=bench", "-e", "MLPD_OUTPUTS=/outputs", "-w", "/outputs", "-v", f"{self.outputs_dir}:/outputs"]

    def run_docker(self, with_flags: bool = False) -> dict:
        # The label only lets the cleanup find these containers; it is not one mlpd or its event watcher filters on.
        argv = ["docker", "run", "-d", "--rm", "--label", f"mlpd-bench={self.label}", *(self.docker_flags() if with_flags else []), IMAGE, "sleep", "30"]
        t0 = time.perf_counter()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        t_ret = time.perf_counter()
        if result.returncode != 0:
            raise RuntimeError(f"docker run failed: {result.stderr}")
        cid = result.stdout.strip().splitlines()[-1]
        # Outside the timing: that it did start (`run -d` returns after the start; this only checks it).
        running = docker("inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", cid, check=False).stdout.strip()
        docker("rm", "-f", cid, check=False)
        if not running.startswith(("true", "false 0")):
            raise RuntimeError(f"container {cid} did not start: {running}")
        return {"total": t_ret - t0, "client_done": t_ret - t0, "polls": 0}

    def run_kind(self, kind: str) -> dict:
        return {"cli": self.run_cli, "api": self.run_api, "docker": self.run_docker,
                "docker_flags": lambda: self.run_docker(True)}[kind]()

    def measure(self, runs: int, warmup: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        kinds = list(self.results)
        for i in range(-warmup, runs):
            order = kinds[:]
            rng.shuffle(order)
            for kind in order:
                r = self.run_kind(kind)
                if i >= 0:
                    self.results[kind].append(r)
            if i >= 0 and (i + 1) % 5 == 0:
                log(f"latency round {i + 1}/{runs}: " + ", ".join(f"{k} {ms(median([x['total'] for x in v]))}" for k, v in self.results.items()))


def breakdown(rows: list[dict]) -> dict[str, list[float]]:
    """Per-run segments from the daemon's timestamps (seconds)."""
    out: dict[str, list[float]] = {k: [] for k in ("client", "wake", "launch", "record", "observe")}
    for r in rows:
        if None in (r["starting"], r["running"], r["docker_started"]):
            continue
        out["client"].append(r["submitted"] - r["t0w"])
        out["wake"].append(r["starting"] - r["submitted"])
        out["launch"].append(r["docker_started"] - r["starting"])
        out["record"].append(r["running"] - r["docker_started"])
        out["observe"].append(r["endw"] - r["running"])
    return out


# ---------------------------------------------------------------- throughput


def post_job(d: Daemon, spec: dict):
    def call(s: requests.Session) -> str:
        r = s.post(f"{d.api}/jobs", json=spec, timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"POST /jobs answered {r.status_code}: {r.text[:200]}")
        return r.json()["job"]["id"]
    return call


def throughput(d: Daemon, queued: int, n: int, threads: int) -> dict:
    s = d.session()
    holder = s.post(f"{d.api}/jobs", json={"command": ["sleep", "600"], "gpus": 2, "image": IMAGE, "name": "holder"}, timeout=30)
    holder.raise_for_status()
    holder_id = holder.json()["job"]["id"]
    deadline = time.monotonic() + 60
    while s.get(f"{d.api}/jobs/{holder_id}", timeout=30).json()["job"]["state"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("the 2-GPU holder job did not start")
        time.sleep(0.05)
    blocked = {"command": ["sleep", "600"], "gpus": 2, "image": IMAGE}
    ids = [holder_id]
    try:
        ids += parallel(d, queued, threads, post_job(d, blocked), check=True)["results"]
        n_queued = len(s.get(f"{d.api}/jobs", params={"all": 1, "state": "queued"}, timeout=60).json()["jobs"])
        if n_queued != queued:
            raise RuntimeError(f"expected {queued} queued jobs before timing, found {n_queued}")
        log(f"holder {holder_id} running, {n_queued} jobs queued behind it; submitting {n} more from {threads} threads")

        passes0 = reconcile_passes(d)
        log_offset = d.log_path.stat().st_size
        timed = parallel(d, n, threads, post_job(d, blocked), check=True)
        elapsed, lat = timed["elapsed"], timed["latencies"]
        ids += timed["results"]
        passes1 = reconcile_passes(d)
        time.sleep(0.5)  # let the reconcile passes that the submits woke finish
        passes2 = reconcile_passes(d)
        new_log = d.log_path.read_bytes()[log_offset:].decode(errors="replace")
        server_ms = [float(m) for m in re.findall(r"POST /api/v1/jobs 201 ([0-9.]+)ms", new_log)]
        counts = d.state_counts()
        api_listed = len(s.get(f"{d.api}/jobs", params={"all": 1, "state": "queued"}, timeout=60).json()["jobs"])

        # baseline: the same threads doing the cheapest authenticated call
        whoami = parallel(d, n, threads, lambda sess: sess.get(f"{d.api}/whoami", timeout=30).raise_for_status(), check=True)
        w_elapsed, w_lat = whoami["elapsed"], whoami["latencies"]
        return {
            "n": n, "queued": queued, "threads": threads, "elapsed": elapsed, "rate": n / elapsed, "lat": lat, "server_ms": server_ms,
            "passes": (passes1 - passes0) if None not in (passes0, passes1) else None,
            "passes_after": (passes2 - passes0) if None not in (passes0, passes2) else None,
            "queued_after": counts.get("queued", 0), "running_after": counts.get("running", 0), "api_listed": api_listed,
            "whoami_rate": n / w_elapsed, "whoami_lat": w_lat,
        }
    finally:
        # queued jobs first, the holder last: cancelling it first would let a queued job start on the freed GPUs
        t = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda jid: d.session().post(f"{d.api}/jobs/{jid}/cancel", timeout=60), ids[1:]))
        s.post(f"{d.api}/jobs/{holder_id}/cancel", timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = d.state_counts()
            left = sum(counts.get(k, 0) for k in ("queued", "starting", "running"))
            if not left:
                break
            time.sleep(0.1)
        log(f"cancelled {len(ids)} jobs in {time.perf_counter() - t:.1f}s; {left} still active; states {counts}")


# ---------------------------------------------------------------- report


def report(lat: Latency, tp: dict | None, cli_startup: list[float], runs: int, warmup: int) -> None:
    R = lat.results
    tot = {k: [r["total"] for r in v] for k, v in R.items()}
    dock_m, dock_p = median(tot["docker"]), p90(tot["docker"])
    bc, ba = breakdown(R["cli"]), breakdown(R["api"])

    rows = [
        (f"mlpd run (CLI) submit→running, median (n={len(tot['cli'])})", ms(median(tot["cli"])), f"docker run -d: {ms(dock_m)}", times(ratio(median(tot["cli"]), dock_m))),
        ("mlpd run (CLI) submit→running, p90", ms(p90(tot["cli"])), f"docker run -d: {ms(dock_p)}", times(ratio(p90(tot["cli"]), dock_p))),
        (f"mlpd API POST→running, median (n={len(tot['api'])})", ms(median(tot["api"])), f"docker run -d: {ms(dock_m)}", times(ratio(median(tot["api"]), dock_m))),
        ("mlpd API POST→running, p90", ms(p90(tot["api"])), f"docker run -d: {ms(dock_p)}", times(ratio(p90(tot["api"]), dock_p))),
        ("docker run -d with mlpd's container flags →running, median", ms(median(tot["docker_flags"])), f"docker run -d: {ms(dock_m)}", times(ratio(median(tot["docker_flags"]), dock_m))),
        ("docker run -d with mlpd's container flags →running, p90", ms(p90(tot["docker_flags"])), f"docker run -d: {ms(dock_p)}", times(ratio(p90(tot["docker_flags"]), dock_p))),
        ("  CLI: `mlpd run` process launch→exit (median)", ms(median([r["client_done"] for r in R["cli"]])), f"`mlpd -V` launch→exit: {ms(median(cli_startup))}", times(ratio(median([r["client_done"] for r in R["cli"]]), median(cli_startup)))),
        ("  CLI: launch → submitted_at (CLI start-up + HTTP)", ms(median(bc["client"])), f"API: POST → submitted_at {ms(median(ba['client']))}", "—"),
        ("  queue → scheduled (submitted_at → job.starting; wake), CLI / API", f"{ms(median(bc['wake']))} / {ms(median(ba['wake']))}", "—", "—"),
        ("  wake, p90 / max (CLI+API runs)", f"{ms(p90(bc['wake'] + ba['wake']))} / {ms(max(bc['wake'] + ba['wake'], default=float('nan')))}", "—", "—"),
        ("  container create+start (job.starting → Docker StartedAt), CLI / API", f"{ms(median(bc['launch']))} / {ms(median(ba['launch']))}", f"docker run -d (+flags) returns: {ms(median([r['client_done'] for r in R['docker_flags']]))}", times(ratio(median(bc["launch"] + ba["launch"]), median([r["client_done"] for r in R["docker_flags"]])))),
        ("  StartedAt → job.running recorded, CLI / API", f"{ms(median(bc['record']))} / {ms(median(ba['record']))}", "—", "—"),
        ("  job.running → seen by the 10 ms poll, CLI / API", f"{ms(median(bc['observe']))} / {ms(median(ba['observe']))}", "—", "—"),
    ]
    if tp:
        rows += [
            (f"submit throughput, {tp['n']} POST /jobs from {tp['threads']} threads, {tp['queued']} queued", f"{tp['rate']:.1f} jobs/s", f"GET /whoami: {tp['whoami_rate']:.1f} req/s", times(ratio(tp["rate"], tp["whoami_rate"]))),
            ("  POST /jobs latency at the client, median / p90", f"{ms(median(tp['lat']))} / {ms(p90(tp['lat']))}", f"GET /whoami: {ms(median(tp['whoami_lat']))} / {ms(p90(tp['whoami_lat']))}", times(ratio(median(tp["lat"]), median(tp["whoami_lat"])))),
            ("  POST /jobs time in Flask (daemon log), median / p90", f"{median(tp['server_ms']):.1f} / {p90(tp['server_ms']):.1f} ms" if tp["server_ms"] else "n/a", "—", "—"),
            ("  reconcile passes run during the timed submits (+0.5 s after)", f"{tp['passes']} ({tp['passes_after']})", "—", "—"),
            ("  after: queued / running (state DB); queued jobs GET /jobs?state=queued lists", f"{tp['queued_after']} / {tp['running_after']}; {tp['api_listed']}", f"{tp['queued'] + tp['n']} / 1; {tp['queued'] + tp['n']}", "—"),
        ]
    print()
    print(f"## mlpd job benchmark ({runs} interleaved rounds after {warmup} warm-up, image {IMAGE}, loopback)")
    print()
    print_table(rows)
    print()
    cm, am = median(tot["cli"]), median(tot["api"])
    print(
        f"Breakdown: `mlpd run` reaches running in {ms(cm)} (median) against {ms(dock_m)} for `docker run -d` ({times(ratio(cm, dock_m))}); "
        f"through the API alone it is {ms(am)} ({times(ratio(am, dock_m))}), so the CLI process costs about {ms(cm - am)} "
        f"(launch → submitted_at {ms(median(bc['client']))} vs {ms(median(ba['client']))} for a POST from a warm Python process; "
        f"`mlpd -V` alone takes {ms(median(cli_startup))}). "
        f"Inside the daemon the job then waits {ms(median(bc['wake'] + ba['wake']))} (median, p90 {ms(p90(bc['wake'] + ba['wake']))}) from submitted_at to the "
        f"scheduler's job.starting — the API sends one datagram to the worker (mlpd.wakeup) and the reconcile loop runs a pass as soon as the one in progress ends "
        f"— and {ms(median(bc['launch'] + ba['launch']))} from job.starting to Docker's StartedAt "
        f"(create + start through docker-py; plain `docker run -d` with the same flags returns in {ms(median([r['client_done'] for r in R['docker_flags']]))}), "
        f"then {ms(median(bc['record'] + ba['record']))} to record running and {ms(median(bc['observe'] + ba['observe']))} until the poll sees it. "
        "Segment medians do not add up exactly to the total median."
    )


# ---------------------------------------------------------------- main


def fmt_load(avg: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in avg)


CLI = BIN  # the mlpd executable timed (--cli)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="measured rounds (each runs every kind once; at least 20 recommended)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--queued", type=int, default=100, help="jobs queued before the throughput timing")
    ap.add_argument("--submit", type=int, default=200, help="jobs submitted in the throughput timing")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--cli", default=BIN, metavar="PATH",
                    help="the mlpd executable to time (default: this venv's). install.sh installs mlpd as a regular "
                         "package (/opt/mlpd/venv/bin/mlpd); a development venv's editable install (pip install -e) "
                         "adds its import finder, about 20 ms, to every start")
    ap.add_argument("--quiet-below", type=float, default=1.5, metavar="LOAD",
                    help="refuse to start at this 1-minute load average or above (default 1.5)")
    ap.add_argument("--busy-ok", action="store_true", help="run anyway on a busy machine (the report says so)")
    args = ap.parse_args()
    global CLI
    CLI = args.cli
    load0 = os.getloadavg()
    quiet = load0[0] < args.quiet_below
    log(f"load average {fmt_load(load0)} ({'quiet' if quiet else 'NOT quiet'}: the bar is {args.quiet_below})")
    if not quiet and not args.busy_ok:
        log(f"not run: the machine is busy (1-minute load {load0[0]:.2f} >= {args.quiet_below}); rerun when idle, or --busy-ok")
        return 3
    log(f"timing the CLI {CLI}")

    if image_missing():
        return 2
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-"))
    outputs = base / "outputs"
    outputs.mkdir()
    os.chmod(outputs, 0o777)
    bench_label = base.name
    d = Daemon(base, daemon_args=("--declare-gpus", "2"))
    t_start = time.monotonic()
    with d.running(labels=(f"mlpd-bench={bench_label}",)):
        d.token = d.add_user("bench", admin=True)
        log(f"daemon ready, instance {d.instance}")
        cli_startup = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([CLI, "-V"], capture_output=True, env=d.env(), check=True)
            cli_startup.append(time.perf_counter() - t)
        lat = Latency(d, bench_label, outputs)
        lat.measure(args.runs, args.warmup)
        log("latency done; throughput next")
        tp = throughput(d, args.queued, args.submit, args.threads)
        report(lat, tp, cli_startup, args.runs, args.warmup)
        load1 = os.getloadavg()
        print(f"\nload average before {fmt_load(load0)}, after {fmt_load(load1)}"
              + ("" if quiet and load1[0] < args.quiet_below else " -- NOT run quiet: the ratios are not the idle machine's"))
        print(f"\n(total benchmark time {time.monotonic() - t_start:.0f} s; daemon {d.url}, instance {d.instance})")
        return 0


if __name__ == "__main__":
    sys.exit(main())
