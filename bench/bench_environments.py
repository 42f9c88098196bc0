#!/usr/bin/env python3
"""Benchmark: submit-to-running of a job that reuses its environment (image + requirements) against a plain job.

    .venv/bin/python bench/bench_environments.py [--runs 20] [--warmup 2] [--keep]

Everything runs in this one process against a daemon of its own (temporary state
directory, a free loopback port, the shipped mlpd.toml); only loopback traffic, plain
HTTP (requests) against the API. At the end (also on error) the daemon is stopped
(SIGTERM), every container labelled with its instance id removed, and the temporary
directory deleted (--keep keeps it, with the daemon log). No image is removed: the
environment built here (mlpd/env:HASH) stays, as environments do.

First the environment is made to exist: one job with requirements unique to this run (a
comment line with a random marker, then `humanize==4.17.0`) is submitted and waited for
until it has succeeded; its submit → running is the first build (reported, not compared).

Then --runs interleaved rounds (after --warmup unmeasured ones); each round runs, in a
shuffled order, one of each kind:
  plain  POST {"command": ["python", "-c", "pass"]} (the default image, no requirements)
  env    POST {"command": ["python", "-c", "import humanize"], "requirements": <the same text>}
Each job: the clock starts just before the POST, then GET /api/v1/jobs/ID every 10 ms;
end = the response that says running or any later state. The daemon's own view of the same
span is the job's `job.running` event time minus its submitted_at. The next job is submitted
only when this one has ended and its container is gone.

Reported: median and p90 of both kinds, by client polling and by the daemon's events, and
the ratio of the medians env/plain (the aim is under 1.05). A job whose container has
already ended when its launch returns has no job.running event (starting → succeeded), so
the daemon's view is also given as submitted_at → Docker's StartedAt (the job's started_at),
which every job has. Also the daemon's segments
(submitted_at → job.starting, job.starting → the environment event, → job.running); every
measured env job must have `job.environment_reused` and no `job.environment_built` in its
history, and every job must succeed (violations are counted). A JSON line with every figure
ends the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from benchlib import IMAGE, SHIPPED_CONFIG, TERMINAL, Daemon, JobClient, image_missing, log, median, ms, p90, print_table, ratio, times

PACKAGE = "humanize==4.17.0"
PLAIN_COMMAND = ["python", "-c", "pass"]
ENV_COMMAND = ["python", "-c", "import humanize"]
RUNNING_OR_LATER = TERMINAL | {"running"}


# ---------------------------------------------------------------- one job


class Runner(JobClient):
    def __init__(self, d: Daemon, requirements: str):
        super().__init__(d)
        self.requirements = requirements

    def spec(self, kind: str) -> dict:
        if kind == "plain":
            return {"command": PLAIN_COMMAND}
        return {"command": ENV_COMMAND, "requirements": self.requirements}

    def run(self, kind: str, timeout: float = 120, poll: float = 0.01) -> dict:
        """Submit one job of this kind; time POST → first GET that says running or later; wait until it
        has ended and its container is gone; return the timings and the daemon's records."""
        spec = self.spec(kind)
        t0w, t0 = time.time(), time.perf_counter()
        r = self.s.post(f"{self.d.api}/jobs", json=spec, timeout=30)
        t_resp = time.perf_counter()
        if r.status_code >= 300:
            raise RuntimeError(f"POST /jobs ({kind}) answered {r.status_code}: {r.text[:300]}")
        job_id = r.json()["job"]["id"]
        polls = 0
        while True:
            job = self.job(job_id)
            polls += 1
            now_p, now_w = time.perf_counter(), time.time()
            if job["state"] in RUNNING_OR_LATER:
                seen_state = job["state"]
                break
            if now_p - t0 > timeout:
                raise RuntimeError(f"{kind} job {job_id} not running after {timeout}s (state {job['state']}, reason {job.get('reason')!r})")
            time.sleep(poll)
        total = now_p - t0
        job = self.wait_ended(job_id, timeout, poll=0.05, container_poll=0.1)
        return {"kind": kind, "id": job_id, "total": total, "t0w": t0w, "endw": now_w, "post": t_resp - t0,
                "polls": polls, "seen_state": seen_state, "state": job["state"], "reason": job.get("reason"),
                **self.stamps(job)}

    @staticmethod
    def stamps(job: dict) -> dict:
        """The daemon's timestamps: submitted_at, job.starting, the environment event, job.running (and Docker's StartedAt)."""
        out = {"submitted": job["submitted_at"], "starting": None, "env_event": None, "env_at": None, "env_image": None,
               "running": None, "docker_started": None, "actions": [ev["action"] for ev in job["history"]]}
        for ev in job["history"]:
            action = ev["action"]
            if action == "job.starting" and out["starting"] is None:
                out["starting"] = ev["at"]
            elif action in ("job.environment_built", "job.environment_reused") and out["env_event"] is None:
                out["env_event"], out["env_at"] = action, ev["at"]
                out["env_image"] = (ev.get("detail") or {}).get("image")
            elif action == "job.running" and out["running"] is None:
                out["running"] = ev["at"]
                out["docker_started"] = (ev.get("detail") or {}).get("started_at")
        if out["docker_started"] is None:
            out["docker_started"] = job.get("started_at")
        out["daemon_total"] = out["running"] - out["submitted"] if out["running"] is not None else None
        # A job whose container has already ended when its launch returns goes starting → succeeded with no
        # job.running event; Docker's StartedAt (the job's started_at) is there for every job that ran.
        out["daemon_started"] = out["docker_started"] - out["submitted"] if out["docker_started"] is not None else None
        return out


def segments(rows: list[dict]) -> dict[str, list[float]]:
    """Per-job segments from the daemon's timestamps (seconds): wake = submitted_at → job.starting;
    env = job.starting → the environment event (env jobs only); launch = the environment event (or
    job.starting) → job.running; observe = job.running → seen by the poll."""
    out: dict[str, list[float]] = {k: [] for k in ("client", "wake", "env", "launch", "docker_start", "record", "observe")}
    for r in rows:
        if r["starting"] is None or r["running"] is None:
            continue
        out["client"].append(r["submitted"] - r["t0w"])
        out["wake"].append(r["starting"] - r["submitted"])
        launch_from = r["starting"]
        if r["env_at"] is not None:
            out["env"].append(r["env_at"] - r["starting"])
            launch_from = r["env_at"]
        out["launch"].append(r["running"] - launch_from)
        if r["docker_started"] is not None:
            out["docker_start"].append(r["docker_started"] - launch_from)
            out["record"].append(r["running"] - r["docker_started"])
        out["observe"].append(r["endw"] - r["running"])
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="measured rounds (each runs one plain and one env job)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--build-timeout", type=float, default=900, help="seconds the first job may take to build its environment and succeed")
    ap.add_argument("--seed", type=int, default=1, help="seed of the per-round order")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (state and daemon log)")
    args = ap.parse_args()

    if image_missing():
        return 2
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-env-"))
    d = Daemon(base, SHIPPED_CONFIG.read_text())
    marker = f"{random.SystemRandom().getrandbits(64):016x}"
    requirements = f"# mlpd bench_environments {marker}\n{PACKAGE}\n"
    t_start = time.monotonic()
    with d.running(keep=args.keep):
        d.token = d.add_user("bench")
        log(f"daemon ready, instance {d.instance}; building the environment (marker {marker})")
        runner = Runner(d, requirements)

        first = runner.run("env", timeout=args.build_timeout, poll=0.05)
        if first["state"] != "succeeded" or first["env_event"] != "job.environment_built":
            raise RuntimeError(f"the first env job {first['id']} ended {first['state']} ({first['reason']}), "
                               f"environment event {first['env_event']}; events {first['actions']}")
        env_image = first["env_image"]
        log(f"environment {env_image} built: submit → running {first['total']:.1f} s "
            f"(daemon: job.starting → built {first['env_at'] - first['starting']:.1f} s)")

        rng = random.Random(args.seed)
        results: dict[str, list[dict]] = {"plain": [], "env": []}
        for i in range(-args.warmup, args.runs):
            order = ["plain", "env"]
            rng.shuffle(order)
            for kind in order:
                r = runner.run(kind)
                if i >= 0:
                    results[kind].append(r)
            if i >= 0 and (i + 1) % 5 == 0:
                log(f"round {i + 1}/{args.runs}: median plain {ms(median([x['total'] for x in results['plain']]))}, "
                    f"env {ms(median([x['total'] for x in results['env']]))}")

        plain, env = results["plain"], results["env"]
        not_reused = [r["id"] for r in env if r["env_event"] != "job.environment_reused" or "job.environment_built" in r["actions"]]
        other_image = [r["id"] for r in env if r["env_image"] and r["env_image"] != env_image]
        failed = [f"{r['id']} ({r['kind']}: {r['state']}, {r['reason']})" for r in plain + env if r["state"] != "succeeded"]
        no_running_event = [r["id"] for r in plain + env if r["running"] is None]
        if failed:
            log(f"jobs that did not succeed: {failed[:5]}")
        if not_reused:
            log(f"env jobs without job.environment_reused (or with a build): {not_reused[:5]}")

        cp, ce = [r["total"] for r in plain], [r["total"] for r in env]
        dp = [r["daemon_total"] for r in plain if r["daemon_total"] is not None]
        de = [r["daemon_total"] for r in env if r["daemon_total"] is not None]
        sap = [r["daemon_started"] for r in plain if r["daemon_started"] is not None]
        sae = [r["daemon_started"] for r in env if r["daemon_started"] is not None]
        sp, se = segments(plain), segments(env)
        figures = {
            "runs": args.runs, "warmup": args.warmup, "cpus": os.cpu_count(), "image": IMAGE, "env_image": env_image,
            "first_build_submit_to_running_s": first["total"],
            "first_build_daemon_build_s": first["env_at"] - first["starting"],
            "plain_client_median_ms": median(cp) * 1000, "plain_client_p90_ms": p90(cp) * 1000,
            "env_client_median_ms": median(ce) * 1000, "env_client_p90_ms": p90(ce) * 1000,
            "client_median_ratio": ratio(median(ce), median(cp)), "client_p90_ratio": ratio(p90(ce), p90(cp)),
            "plain_daemon_median_ms": median(dp) * 1000, "plain_daemon_p90_ms": p90(dp) * 1000,
            "env_daemon_median_ms": median(de) * 1000, "env_daemon_p90_ms": p90(de) * 1000,
            "daemon_median_ratio": ratio(median(de), median(dp)), "daemon_p90_ratio": ratio(p90(de), p90(dp)),
            "plain_with_running_event": len(dp), "env_with_running_event": len(de),
            "plain_started_median_ms": median(sap) * 1000, "plain_started_p90_ms": p90(sap) * 1000,
            "env_started_median_ms": median(sae) * 1000, "env_started_p90_ms": p90(sae) * 1000,
            "started_median_ratio": ratio(median(sae), median(sap)), "started_p90_ratio": ratio(p90(sae), p90(sap)),
            "wake_median_ms_plain": median(sp["wake"]) * 1000, "wake_median_ms_env": median(se["wake"]) * 1000,
            "env_step_median_ms": median(se["env"]) * 1000, "env_step_p90_ms": p90(se["env"]) * 1000,
            "launch_median_ms_plain": median(sp["launch"]) * 1000, "launch_median_ms_env": median(se["launch"]) * 1000,
            "env_not_reused": len(not_reused), "env_other_image": len(other_image),
            "jobs_not_succeeded": len(failed), "jobs_without_running_event": len(no_running_event),
            "seen_already_ended": sum(r["seen_state"] != "running" for r in plain + env),
        }
        f = figures

        rows = [
            ("first env job (builds mlpd/env), submit → running", ms(first["total"]), "—", "—"),
            ("  of which job.starting → job.environment_built (the build)", ms(f["first_build_daemon_build_s"]), "—", "—"),
            (f"env job (reused) submit → running, client poll, median (n={len(ce)})", ms(median(ce)), f"plain: {ms(median(cp))}", times(f["client_median_ratio"])),
            ("env job (reused) submit → running, client poll, p90", ms(p90(ce)), f"plain: {ms(p90(cp))}", times(f["client_p90_ratio"])),
            (f"env job (reused) submitted_at → job.running event, median (n={len(de)}; plain n={len(dp)})", ms(median(de)), f"plain: {ms(median(dp))}", times(f["daemon_median_ratio"])),
            ("env job (reused) submitted_at → job.running event, p90", ms(p90(de)), f"plain: {ms(p90(dp))}", times(f["daemon_p90_ratio"])),
            (f"env job (reused) submitted_at → Docker StartedAt, every job, median (n={len(sae)}; plain n={len(sap)})", ms(median(sae)), f"plain: {ms(median(sap))}", times(f["started_median_ratio"])),
            ("env job (reused) submitted_at → Docker StartedAt, every job, p90", ms(p90(sae)), f"plain: {ms(p90(sap))}", times(f["started_p90_ratio"])),
            ("  POST → submitted_at (client + HTTP), env / plain", ms(median(se["client"])), f"plain: {ms(median(sp['client']))}", times(ratio(median(se["client"]), median(sp["client"])))),
            ("  submitted_at → job.starting (wake + scheduling), env / plain", ms(median(se["wake"])), f"plain: {ms(median(sp['wake']))}", times(ratio(median(se["wake"]), median(sp["wake"])))),
            ("  job.starting → job.environment_reused (env step), median / p90", f"{ms(median(se['env']))} / {ms(p90(se['env']))}", "plain: none", "—"),
            ("  → Docker StartedAt (container create + start), env / plain", ms(median(se["docker_start"])), f"plain: {ms(median(sp['docker_start']))}", times(ratio(median(se["docker_start"]), median(sp["docker_start"])))),
            ("  StartedAt → job.running recorded, env / plain", ms(median(se["record"])), f"plain: {ms(median(sp['record']))}", "—"),
            ("  job.running → seen by the 10 ms poll, env / plain", ms(median(se["observe"])), f"plain: {ms(median(sp['observe']))}", "—"),
            ("env jobs without job.environment_reused (or with a build)", str(len(not_reused)), "0", "—"),
            ("jobs that did not succeed / without a job.running event", f"{len(failed)} / {len(no_running_event)}", "0 / 0", "—"),
        ]
        print()
        print(f"## mlpd environment-reuse benchmark ({args.runs} interleaved rounds after {args.warmup} warm-up, "
              f"{os.cpu_count()} CPUs, base {IMAGE}, env {env_image}, loopback)")
        print()
        print_table(rows)
        print()
        aim = "met" if f["client_median_ratio"] < 1.05 and f["daemon_median_ratio"] < 1.05 else "NOT met"
        print(f"Aim (median env/plain under 1.05, by client poll and by the daemon's events): {aim} "
              f"({times(f['client_median_ratio'])} / {times(f['daemon_median_ratio'])}). "
              "Segment medians do not add up exactly to the total median.")
        if len(dp) < len(plain) or len(de) < len(env):
            print(f"{len(plain) - len(dp)} plain and {len(env) - len(de)} env jobs had ended before their launch returned, so their "
                  "history goes job.starting → job.succeeded with no job.running event; the job.running rows leave them out "
                  "(not the same jobs in both kinds), the StartedAt rows do not.")
        print(f"\n(total benchmark time {time.monotonic() - t_start:.0f} s; daemon {d.url}, instance {d.instance}"
              + (f", kept {base}" if args.keep else "") + ")")
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) and not math.isnan(v) else v) for k, v in figures.items()}))
        return 1 if (not_reused or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
