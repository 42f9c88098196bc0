#!/usr/bin/env python3
"""Benchmark: workspaces (JupyterLab in a container) against a plain `docker run` of the same server.

    .venv/bin/python bench/bench_workspaces.py [--rounds 8] [--warmup 1] [--idle 10] [--cull-n 20] [--cull-passes 5] [--keep]

Everything runs in this one process against a daemon of its own (temporary state directory,
a free loopback port, built-in defaults plus `[workspaces] idle_timeout = "4h"` and
`cull_interval = 60.0`, the shipped one, stated: its own idle checks run but never cull); only
loopback traffic. One member user, `bench`, owns every workspace. At the end (also on error)
the daemon is stopped (SIGTERM), every container labelled with its instance id and every
baseline container this script started (label mlpd-bench=<temp dir name>) is removed, and the
temporary directory deleted (--keep keeps it, with the daemon log). Needs the image
mlpd/workspace:latest (`mlpd images build`).

1. Create → JupyterLab answers (--rounds interleaved rounds after --warmup unmeasured ones; each
   round runs every kind once, in a shuffled order; --no-cli leaves out cli):
     api     POST /api/v1/workspaces {"name": N, "gpus": 0}; its answer carries the port and token.
     cli     launch `mlpd ws create N --json` (MLPD_URL/MLPD_TOKEN env), which waits for ready by
             itself (it polls GET /api/v1/workspaces/N every 0.3 s until the daemon says `ready`);
             meanwhile this process polls GET /api/v1/workspaces/N every 20 ms until it exists,
             to learn the port and token.
     docker  `docker run -d -p 127.0.0.1:P:8888 -e JUPYTER_TOKEN=T --user 1000:1000
             mlpd/workspace:latest jupyter lab <the same arguments as mlpd.kinds.workspace.jupyter_command()>`
             (P a free port, T a random token; no home mount, no --init or other mlpd flags).
   The clock starts just before the POST / the CLI launch / `docker run`; end = the first
   `GET http://127.0.0.1:P/api/status` with `Authorization: token T` that answers 200, polled
   every 20 ms (a new connection each, 1 s timeout). For cli, also the CLI's exit (what its user
   waits for). Breakdown: start → Docker's StartedAt (the workspace's started_at; for docker,
   `docker inspect`), and StartedAt → answers (JupyterLab's own start-up).
   After each run the workspace is deleted (DELETE /api/v1/workspaces/N) and the next run starts
   only when `docker ps -a --filter label=mlpd.instance=INSTANCE` lists nothing; a baseline
   container is `docker rm -f`'d.

2. Idle memory: one workspace (API) and one baseline container are started together, both
   polled until they answer, then left alone --idle seconds; then `docker stats --no-stream
   --format {{.MemUsage}}` for both, 3 samples; the median of each, and their ratio.

3. One idle-culling pass with --cull-n running workspaces: they are created through the API
   (distinct names), then polled until every server answers and GET /api/v1/workspaces says
   all are running, and then until the daemon's own pass has checked every one of them (each
   has a last_activity in the state database; that pass ran every 60 s meanwhile), so the timed
   passes start right after it and do not overlap the next one. Then
   mlpd.kinds.workspace.cull_pass(Store(db), config, now=time.time()) runs --cull-passes times in this process (config = mlpd.config.load_config of the daemon's file
   with its --state-dir, i.e. the daemon's resolved configuration; the real jupyter_activity:
   GET /api/status, /api/kernels, /api/terminals per workspace, plus its database reads and
   the last_activity write). Reported: the median pass, per workspace, against a baseline of
   --cull-n plain sequential `GET /api/status` (one per server, the same header, a new
   connection each), and the same with the 3 GETs per server that the pass makes. Checks: no
   timed pass culled anything, and the daemon's own pass did not either: all --cull-n are still
   running afterwards and no workspace.stopped event by `mlpd` exists.

Medians, p90s and ratios of medians are printed as a Markdown table (the aim for 1. is a
median ratio under 1.1); a JSON line with every figure ends the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from benchlib import BIN, Daemon, docker, free_port, log, median, ms, p90, print_table, ratio, times

WS_IMAGE = "mlpd/workspace:latest"
JUPYTER_ARGS = ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/home/mlpd",
                "--ServerApp.allow_remote_access=True", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=False"]
CONFIG = '[workspaces]\nidle_timeout = "4h"\ncull_interval = 60.0\n'
POLL = 0.02
KINDS = ("api", "cli", "docker")


# ---------------------------------------------------------------- helpers


def answers(port: int, token: str) -> bool:
    """Whether GET /api/status on this loopback port answers 200 with this token (a new connection)."""
    try:
        return requests.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def wait_answers(port: int, token: str, t0: float, timeout: float, what: str) -> float:
    """Poll every 20 ms until the server answers; the perf_counter time it did."""
    while True:
        if answers(port, token):
            return time.perf_counter()
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{what}: JupyterLab on 127.0.0.1:{port} did not answer within {timeout:.0f} s")
        time.sleep(POLL)


def docker_time(stamp: str) -> float | None:
    """Docker's RFC 3339 time with nanoseconds ('2026-12-01T02:51:09.123456789Z') as epoch seconds."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp.strip())
    if not m or stamp.startswith("0001-"):
        return None
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.fromisoformat(m.group(1) + zone).astimezone(timezone.utc).timestamp()
    return base + float("0." + (m.group(2) or "0"))


UNITS = {"b": 1, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def mem_bytes(usage: str) -> float:
    """The used part of docker stats' MemUsage ('70.62MiB / 23.54GiB') in bytes."""
    m = re.match(r"\s*([0-9.]+)\s*([a-zA-Z]+)", usage.split("/")[0])
    if not m or m.group(2).lower() not in UNITS:
        raise RuntimeError(f"cannot read docker stats MemUsage {usage!r}")
    return float(m.group(1)) * UNITS[m.group(2).lower()]


def mib(x: float) -> str:
    return "n/a" if x != x else f"{x / 1024 ** 2:.1f} MiB"


# ---------------------------------------------------------------- the runs


class Bench:
    def __init__(self, d: Daemon, label: str):
        self.d = d
        self.s = d.session()
        self.label = label
        self.seq = 0

    def name(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def create(self, name: str) -> dict:
        r = self.s.post(f"{self.d.api}/workspaces", json={"name": name, "gpus": 0}, timeout=60)
        if r.status_code != 201:
            raise RuntimeError(f"POST /workspaces {name} answered {r.status_code}: {r.text[:300]}")
        return r.json()["workspace"]

    def get(self, name: str) -> requests.Response:
        return self.s.get(f"{self.d.api}/workspaces/{name}", timeout=30)

    def remove(self, name: str, timeout: float = 90) -> None:
        """DELETE the workspace; wait until no container of the instance is left."""
        r = self.s.delete(f"{self.d.api}/workspaces/{name}", timeout=60)
        if r.status_code != 200:
            raise RuntimeError(f"DELETE /workspaces/{name} answered {r.status_code}: {r.text[:300]}")
        deadline = time.monotonic() + timeout
        while docker("ps", "-aq", "--filter", f"label=mlpd.instance={self.d.instance}").stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the container of workspace {name} is still there {timeout:.0f} s after DELETE")
            time.sleep(0.1)

    def started_at(self, name: str) -> float | None:
        return self.get(name).json()["workspace"].get("started_at")

    def run_api(self, timeout: float) -> dict:
        name = self.name("api")
        t0w, t0 = time.time(), time.perf_counter()
        w = self.create(name)
        t_post = time.perf_counter()
        t_end = wait_answers(w["port"], w["token"], t0, timeout, f"workspace {name}")
        started = self.started_at(name)
        self.remove(name)
        return {"total": t_end - t0, "post": t_post - t0, "to_started": started - t0w if started else None,
                "started_to_answer": (t0w + (t_end - t0)) - started if started else None}

    def run_cli(self, timeout: float) -> dict:
        name = self.name("cli")
        t0w, t0 = time.time(), time.perf_counter()
        proc = subprocess.Popen([BIN, "ws", "create", name, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.d.env(self.d.token))
        try:
            while True:  # the port and token, as soon as the workspace exists
                r = self.get(name)
                if r.status_code == 200:
                    w = r.json()["workspace"]
                    break
                if proc.poll() is not None or time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"mlpd ws create {name}: no workspace ({proc.poll()}, GET {r.status_code})")
                time.sleep(POLL)
            t_end = wait_answers(w["port"], w["token"], t0, timeout, f"workspace {name} (CLI)")
            out, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
            t_exit = time.perf_counter()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            raise RuntimeError(f"mlpd ws create {name} exited {proc.returncode}: {err.strip()[-500:]}")
        cli_w = json.loads(out)["workspace"]
        if not (cli_w["state"] == "running" and cli_w.get("ready")):
            raise RuntimeError(f"mlpd ws create {name} returned a workspace that is not ready: {cli_w}")
        if not answers(w["port"], w["token"]):
            raise RuntimeError(f"workspace {name}: the CLI said ready but its server does not answer")
        started = cli_w.get("started_at")
        self.remove(name)
        return {"total": t_end - t0, "exit": t_exit - t0, "to_started": started - t0w if started else None,
                "started_to_answer": (t0w + (t_end - t0)) - started if started else None}

    def docker_start(self) -> tuple[str, int, str]:
        """`docker run -d` of the baseline server; (container id, port, token)."""
        port, token = free_port(), secrets.token_urlsafe(24)
        # The label only lets the cleanup find it; mlpd filters on mlpd.instance, never on this.
        cid = docker("run", "-d", "--label", f"mlpd-bench={self.label}", "-p", f"127.0.0.1:{port}:8888",
                     "-e", f"JUPYTER_TOKEN={token}", "--user", "1000:1000", WS_IMAGE, *JUPYTER_ARGS).stdout.strip().splitlines()[-1]
        return cid, port, token

    def run_docker(self, timeout: float) -> dict:
        t0w, t0 = time.time(), time.perf_counter()
        cid, port, token = self.docker_start()
        t_ret = time.perf_counter()
        try:
            t_end = wait_answers(port, token, t0, timeout, f"baseline container {cid[:12]}")
            started = docker_time(docker("inspect", "-f", "{{.State.StartedAt}}", cid).stdout)
        finally:
            docker("rm", "-f", cid, check=False)
        return {"total": t_end - t0, "run_returns": t_ret - t0, "to_started": started - t0w if started else None,
                "started_to_answer": (t0w + (t_end - t0)) - started if started else None}

    # ------------------------------------------------------------ 1.
    def latency(self, rounds: int, warmup: int, seed: int, timeout: float, kinds: tuple[str, ...] = KINDS) -> dict[str, list[dict]]:
        rng = random.Random(seed)
        results: dict[str, list[dict]] = {k: [] for k in KINDS}
        run = {"api": self.run_api, "cli": self.run_cli, "docker": self.run_docker}
        for i in range(-warmup, rounds):
            order = list(kinds)
            rng.shuffle(order)
            for kind in order:
                r = run[kind](timeout)
                if i >= 0:
                    results[kind].append(r)
            label = "warm-up" if i < 0 else f"round {i + 1}/{rounds}"
            log(f"{label}: " + ", ".join(f"{k} {ms(median([x['total'] for x in v]))}" for k, v in results.items() if v)
                if i >= 0 else f"{label} done")
        return results

    # ------------------------------------------------------------ 2.
    def memory(self, idle: float, timeout: float, samples: int = 3) -> dict:
        name = self.name("mem")
        t0 = time.perf_counter()
        w = self.create(name)
        cid, port, token = self.docker_start()
        try:
            wait_answers(w["port"], w["token"], t0, timeout, f"workspace {name}")
            wait_answers(port, token, t0, timeout, f"baseline container {cid[:12]}")
            ws_cid = docker("ps", "-q", "--no-trunc", "--filter", f"label=mlpd.instance={self.d.instance}").stdout.split()
            if len(ws_cid) != 1:
                raise RuntimeError(f"expected one workspace container, found {ws_cid}")
            log(f"workspace {name} and the baseline container answer; idle {idle:.0f} s")
            time.sleep(idle)
            ws_mem, base_mem = [], []
            for _ in range(samples):
                out = docker("stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", ws_cid[0], cid).stdout
                by_id = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.strip().splitlines()}
                for short, usage in by_id.items():
                    (ws_mem if ws_cid[0].startswith(short) else base_mem).append(mem_bytes(usage))
        finally:
            docker("rm", "-f", cid, check=False)
        self.remove(name)
        return {"ws": ws_mem, "base": base_mem}

    # ------------------------------------------------------------ 3.
    def cull(self, n: int, passes: int, config_file: Path, timeout: float) -> dict:
        from mlpd.config import load_config
        from mlpd.store import Store
        from mlpd.kinds.workspace import cull_pass

        names = [f"cull-{i:02d}" for i in range(n)]
        t0 = time.perf_counter()
        spaces = {name: self.create(name) for name in names}
        t_created = time.perf_counter()
        pending = set(names)
        while pending:
            pending = {nm for nm in pending if not answers(spaces[nm]["port"], spaces[nm]["token"])}
            if pending and time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"{len(pending)} of {n} workspaces do not answer after {timeout:.0f} s")
            if pending:
                time.sleep(0.2)
        t_all = time.perf_counter()
        listed = {w["name"]: w for w in self.s.get(f"{self.d.api}/workspaces", timeout=60).json()["workspaces"]}
        not_running = [nm for nm in names if listed.get(nm, {}).get("state") != "running"]
        if not_running:
            raise RuntimeError(f"workspaces not running although their servers answer: {not_running}")
        log(f"{n} workspaces created in {t_created - t0:.1f} s, all answering after {t_all - t0:.1f} s")

        config = load_config(str(config_file), {"server.state_dir": str(self.d.state_dir)})
        store = Store(config.db_path)
        interval = float(config["workspaces.cull_interval"])
        checked = f"SELECT COUNT(*) FROM workspaces WHERE name IN ({','.join('?' * n)}) AND last_activity IS NOT NULL"
        t_wait = time.perf_counter()
        while (seen_by_daemon := self.d.query(checked, names)[0][0]) < n:
            if time.perf_counter() - t_wait > 2 * interval + 30:
                raise RuntimeError(f"the daemon's own idle check has looked at {seen_by_daemon} of {n} workspaces after {2 * interval + 30:.0f} s")
            time.sleep(0.05)
        daemon_wait = time.perf_counter() - t_wait
        log(f"the daemon's own idle check has seen all {n} (waited {daemon_wait:.1f} s); timing {passes} passes")
        pass_times, culled = [], []
        for _ in range(passes):
            t = time.perf_counter()
            culled += cull_pass(store, config, time.time())
            pass_times.append(time.perf_counter() - t)
        targets = [(spaces[nm]["port"], spaces[nm]["token"]) for nm in names]
        status_times, three_times = [], []
        for _ in range(passes):
            t = time.perf_counter()
            for port, token in targets:
                requests.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}, timeout=3).raise_for_status()
            status_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            for port, token in targets:
                for path in ("status", "kernels", "terminals"):
                    requests.get(f"http://127.0.0.1:{port}/api/{path}", headers={"Authorization": f"token {token}"}, timeout=3)
            three_times.append(time.perf_counter() - t)

        listed = {w["name"]: w for w in self.s.get(f"{self.d.api}/workspaces", timeout=60).json()["workspaces"]}
        still = sum(listed.get(nm, {}).get("state") == "running" for nm in names)
        culled_events = self.d.query("SELECT COUNT(*) FROM events WHERE action = 'workspace.stopped' AND actor = 'mlpd'")[0][0]
        return {"n": n, "passes": pass_times, "status": status_times, "three": three_times, "culled_by_bench": len(culled),
                "still_running": still, "culled_events": culled_events, "seen_by_daemon": seen_by_daemon,
                "create_s": t_created - t0, "all_answer_s": t_all - t0, "daemon_wait_s": daemon_wait}


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=8, help="measured rounds of 1. (each starts one workspace by API, one by CLI, one plain container)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--idle", type=float, default=10, help="seconds a server is left idle before its memory is read")
    ap.add_argument("--cull-n", type=int, default=20, help="running workspaces during the culling pass")
    ap.add_argument("--cull-passes", type=int, default=5, help="timed culling passes")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a server may take to answer (the --cull-n together: 3x)")
    ap.add_argument("--no-cli", action="store_true", help="leave out the CLI path of 1. (a third of its time)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the per-round order")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (state and daemon log)")
    args = ap.parse_args()

    if docker("image", "inspect", WS_IMAGE, check=False).returncode != 0:
        print(f"error: image {WS_IMAGE} is missing (mlpd images build)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-ws-"))
    label = base.name
    d = Daemon(base, CONFIG)
    t_start = time.monotonic()
    with d.running(keep=args.keep, labels=(f"mlpd-bench={label}",)):
        d.token = d.add_user("bench")
        log(f"daemon ready, instance {d.instance}")
        b = Bench(d, label)
        lat = b.latency(args.rounds, args.warmup, args.seed, args.timeout, tuple(k for k in KINDS if not (args.no_cli and k == "cli")))
        log("latency done; idle memory next")
        mem = b.memory(args.idle, args.timeout)
        log(f"memory done; culling pass with {args.cull_n} workspaces next")
        cull = b.cull(args.cull_n, args.cull_passes, base / "mlpd.toml", 3 * args.timeout)

        tot = {k: [r["total"] for r in v] for k, v in lat.items()}
        seg = {k: {s: [r[s] for r in v if r.get(s) is not None] for s in ("to_started", "started_to_answer")} for k, v in lat.items()}
        cli_exit = [r["exit"] for r in lat["cli"]]
        dm, dp = median(tot["docker"]), p90(tot["docker"])
        wm, bm = median(mem["ws"]), median(mem["base"])
        pm, sm, tm = median(cull["passes"]), median(cull["status"]), median(cull["three"])
        n = cull["n"]
        f = {
            "rounds": args.rounds, "warmup": args.warmup, "cpus": os.cpu_count(), "image": WS_IMAGE,
            **{f"{k}_median_ms": median(tot[k]) * 1000 for k in KINDS}, **{f"{k}_p90_ms": p90(tot[k]) * 1000 for k in KINDS},
            "api_median_ratio": ratio(median(tot["api"]), dm), "api_p90_ratio": ratio(p90(tot["api"]), dp),
            "cli_median_ratio": ratio(median(tot["cli"]), dm), "cli_p90_ratio": ratio(p90(tot["cli"]), dp),
            "cli_exit_median_ms": median(cli_exit) * 1000, "cli_exit_p90_ms": p90(cli_exit) * 1000,
            "cli_exit_median_ratio": ratio(median(cli_exit), dm),
            "api_post_median_ms": median([r["post"] for r in lat["api"]]) * 1000,
            "docker_run_returns_median_ms": median([r["run_returns"] for r in lat["docker"]]) * 1000,
            **{f"{k}_to_started_median_ms": median(seg[k]["to_started"]) * 1000 for k in KINDS},
            **{f"{k}_started_to_answer_median_ms": median(seg[k]["started_to_answer"]) * 1000 for k in KINDS},
            "idle_s": args.idle, "ws_mem_mib": wm / 1024 ** 2, "docker_mem_mib": bm / 1024 ** 2, "mem_ratio": ratio(wm, bm),
            "cull_n": n, "cull_passes": len(cull["passes"]), "cull_pass_median_ms": pm * 1000, "cull_pass_p90_ms": p90(cull["passes"]) * 1000,
            "cull_per_ws_ms": pm / n * 1000, "status_gets_median_ms": sm * 1000, "status_get_per_ws_ms": sm / n * 1000,
            "cull_ratio": ratio(pm, sm), "three_gets_median_ms": tm * 1000, "cull_ratio_three_gets": ratio(pm, tm),
            "cull_create_s": cull["create_s"], "cull_all_answer_s": cull["all_answer_s"],
            "culled_by_bench_passes": cull["culled_by_bench"], "culled_events_by_daemon": cull["culled_events"],
            "still_running_after": cull["still_running"], "checked_by_daemon_before_timing": cull["seen_by_daemon"],
            "waited_for_daemon_check_s": cull["daemon_wait_s"],
        }
        violations = f["culled_by_bench_passes"] + f["culled_events_by_daemon"] + (n - f["still_running_after"])

        rows = [
            (f"API: POST /workspaces → JupyterLab answers /api/status, median (n={len(tot['api'])})", ms(median(tot["api"])), f"docker run: {ms(dm)}", times(f["api_median_ratio"])),
            ("API: POST /workspaces → JupyterLab answers, p90", ms(p90(tot["api"])), f"docker run: {ms(dp)}", times(f["api_p90_ratio"])),
            (f"CLI: `mlpd ws create` launch → JupyterLab answers, median (n={len(tot['cli'])})", ms(median(tot["cli"])), f"docker run: {ms(dm)}", times(f["cli_median_ratio"])),
            ("CLI: `mlpd ws create` launch → JupyterLab answers, p90", ms(p90(tot["cli"])), f"docker run: {ms(dp)}", times(f["cli_p90_ratio"])),
            ("CLI: `mlpd ws create` launch → exits, ready (median / p90)", f"{ms(median(cli_exit))} / {ms(p90(cli_exit))}", f"docker run: {ms(dm)} / {ms(dp)}", times(f["cli_exit_median_ratio"])),
            ("  start → Docker StartedAt, API / CLI (median)", f"{ms(median(seg['api']['to_started']))} / {ms(median(seg['cli']['to_started']))}", f"docker run: {ms(median(seg['docker']['to_started']))}", times(ratio(median(seg["api"]["to_started"]), median(seg["docker"]["to_started"])))),
            ("  StartedAt → JupyterLab answers, API / CLI (median)", f"{ms(median(seg['api']['started_to_answer']))} / {ms(median(seg['cli']['started_to_answer']))}", f"docker run: {ms(median(seg['docker']['started_to_answer']))}", times(ratio(median(seg["api"]["started_to_answer"]), median(seg["docker"]["started_to_answer"])))),
            ("  POST /workspaces answered (median)", ms(f["api_post_median_ms"] / 1000), f"`docker run -d` returns: {ms(f['docker_run_returns_median_ms'] / 1000)}", "—"),
            (f"idle workspace container memory after {args.idle:.0f} s idle (docker stats, median of {len(mem['ws'])})", mib(wm), f"docker run: {mib(bm)}", times(f["mem_ratio"])),
            (f"one culling pass, {n} running workspaces, median of {len(cull['passes'])}", ms(pm), f"{n} sequential GET /api/status: {ms(sm)}", times(f["cull_ratio"])),
            ("  per workspace", f"{pm / n * 1000:.1f} ms", f"{sm / n * 1000:.1f} ms", times(f["cull_ratio"])),
            (f"  against the 3 GETs a pass makes per workspace ({3 * n} sequential GETs)", ms(pm), ms(tm), times(f["cull_ratio_three_gets"])),
            ("  culled by the timed passes / by the daemon's own pass (cull_interval 60 s)", f"{f['culled_by_bench_passes']} / {f['culled_events_by_daemon']}", "0 / 0", "—"),
            ("  still running afterwards; checked by the daemon's own pass before the timing", f"{f['still_running_after']} / {n}; {f['checked_by_daemon_before_timing']} / {n}", f"{n} / {n}", "—"),
            (f"  {n} workspaces: POSTs done / all answering", f"{cull['create_s']:.1f} s / {cull['all_answer_s']:.1f} s", "—", "—"),
        ]
        if not lat["cli"]:  # --no-cli
            rows = [r for r in rows if not r[0].startswith("CLI")]
        print()
        print(f"## mlpd workspaces benchmark ({args.rounds} interleaved rounds after {args.warmup} warm-up, {os.cpu_count()} CPUs, "
              f"image {WS_IMAGE}, loopback)")
        print()
        print_table(rows)
        print()
        aim = "met" if f["api_median_ratio"] < 1.1 else "NOT met"
        print(f"Aim (median create → answers under 1.1x `docker run`, API path): {aim} ({times(f['api_median_ratio'])}; "
              f"CLI {times(f['cli_median_ratio'])}, CLI exit {times(f['cli_exit_median_ratio'])}). "
              "Segment medians do not add up exactly to the total median.")
        if violations:
            print(f"CHECK FAILED: {violations} workspaces culled or not running after the culling passes.")
        print(f"\n(total benchmark time {time.monotonic() - t_start:.0f} s; daemon {d.url}, instance {d.instance}"
              + (f", kept {base}" if args.keep else "") + ")")
        print(json.dumps({k: ((None if math.isnan(v) else round(v, 3)) if isinstance(v, float) else v) for k, v in f.items()}))
        return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
