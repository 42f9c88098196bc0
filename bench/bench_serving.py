#!/usr/bin/env python3
"""Benchmark: a served model through the stable endpoint (the serving proxy, HAProxy at serving.listen) against the
same replica hit directly,
the time from `mlpd serve` to the first answered prediction, and the rollout's time to switch.

    .venv/bin/python bench/bench_serving.py [--requests 2000] [--clients 1,8] [--keep]

Everything runs against a daemon of its own (temporary state directory, a free loopback port, the
shipped mlpd.toml with serving.drain = "3s" and serving.listen on another free port); at the end (also on error) the daemon is stopped, its
containers removed and the directory deleted (--keep keeps it). Environments built here stay.

1. A job in the default image trains two scikit-learn LinearRegression models (y = 2x, y = 3x),
   registers them as versions 1 and 2 of one model, and points the alias `prod` at version 1.
2. `mlpd serve models:/NAME@prod --no-wait`; the clock runs from just before the command to the first
   200 from POST /serve/NAME/invocations (polled every 50 ms). Done twice: the first may build the
   serving environment (said so), the second (after `mlpd deployments rm`) reuses it.
3. Latency and throughput: for each client count C, C threads each with one kept-alive connection
   (http.client) send --requests / C POSTs of the same small dataframe_split body, first straight to
   the replica's loopback port, then through /serve/NAME/invocations (with the owner's token), then
   both once more in the opposite order; the two runs of each kind are pooled. Reported: requests/s,
   p50 and p99 per kind, the ratio of medians (endpoint/direct), the p50 added, and the throughput
   ratio (endpoint/direct). Also the CPU time (from /proc, user + system) that the proxy (haproxy,
   from its pidfile), the daemon's process tree and the replica spend per request through the
   endpoint: a figure that holds on a busy machine, where latencies mostly measure the wait for a core.
   The load average is printed at the start and the end: figures from a busy machine say little.
4. Rollout: the alias is moved to version 2 while one client sends requests; reported is the time
   from the move to the first answer of version 2, and the failed requests (expected 0).

A JSON line with every figure ends the output.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchlib import SHIPPED_CONFIG, TERMINAL, Daemon, free_port, image_missing, log, median, print_table, ratio, times

import subprocess

BODY = json.dumps({"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}).encode()
TRAIN = """
import mlflow, mlflow.sklearn, numpy as np, pandas as pd
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression
X = pd.DataFrame({"x": np.arange(10, dtype=float)})
for slope in (2.0, 3.0):
    with mlflow.start_run():
        mlflow.sklearn.log_model(LinearRegression().fit(X, slope * X["x"]), name="model", registered_model_name="{name}", input_example=X[:2])
MlflowClient().set_registered_model_alias("{name}", "prod", "1")
"""


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by process root and all its descendants, from /proc."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted, changed = {root}, True
    while changed:
        changed = False
        for pid, (ppid, _) in stats.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    return sum(stats[p][1] for p in wanted if p in stats)


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def post(conn: http.client.HTTPConnection, path: str, headers: dict) -> tuple[int, bytes]:
    conn.request("POST", path, body=BODY, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def load(port: int, path: str, token: str | None, total: int, clients: int) -> dict:
    """total POSTs from `clients` threads, each on one kept-alive connection: latencies, errors, wall time."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(n):
            t0 = time.perf_counter()
            try:
                status, _ = post(conn, path, headers)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 0
            mine.append(time.perf_counter() - t0)
            if status != 200:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(total // clients,)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors[0], "wall": time.perf_counter() - started}


def first_prediction(port: int, d: Daemon, name: str, token: str, timeout: float = 900) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            status, _ = post(conn, f"/serve/{name}/invocations", {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
            if status == 200:
                return time.monotonic()
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise RuntimeError(f"no prediction from {name} within {timeout}s:\n{d.log_tail()}")


def cli(d: Daemon, token: str, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    from benchlib import BIN

    result = subprocess.run([BIN, *args], capture_output=True, text=True, env=d.env(token), cwd=cwd, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"mlpd {' '.join(args)} failed: {result.stderr}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="POSTs per kind and client count (split over the clients)")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and the daemon log")
    args = parser.parse_args()
    if image_missing():
        return 2
    serving_port = free_port()
    config = re.sub(r'^listen = "auto"$', f'listen = "127.0.0.1:{serving_port}"',  # serving.listen, not server.container_listen
                    SHIPPED_CONFIG.read_text().replace('drain = "20s"', 'drain = "3s"'), flags=re.M)
    load_before = os.getloadavg()
    log(f"load average before: {' '.join(f'{x:.2f}' for x in load_before)} ({os.cpu_count()} CPUs)")
    d = Daemon(Path(tempfile.mkdtemp(prefix="mlpd-bench-serving-")), config_text=config)
    figures: dict = {}
    rows: list[tuple[str, ...]] = []
    with d.running(keep=args.keep):
        token = d.add_user("bench")
        model = "bench-model"
        work = d.base / "train"
        work.mkdir()
        (work / "train.py").write_text(TRAIN.replace("{name}", model))
        log("training and registering two versions in a job")
        job = json.loads(cli(d, token, "run", "--json", "--", "python", "train.py", cwd=str(work)).stdout)["job"]["id"]
        s = d.session(token)
        while (state := s.get(f"{d.api}/jobs/{job}", timeout=30).json()["job"]["state"]) not in TERMINAL:
            time.sleep(0.5)
        if state != "succeeded":
            raise RuntimeError(f"the training job {state}: {s.get(f'{d.api}/jobs/{job}/logs').text[-2000:]}")

        for attempt in ("first", "again"):
            built_before = d.query("SELECT COUNT(*) FROM events WHERE action = 'job.environment_built'")[0][0]
            t0 = time.monotonic()
            cli(d, token, "serve", f"models:/{model}@prod", "--name", model, "--no-wait")
            took = first_prediction(serving_port, d, model, token) - t0
            built = d.query("SELECT COUNT(*) FROM events WHERE action = 'job.environment_built'")[0][0] > built_before
            figures[f"serve_to_first_prediction_{attempt}_s"] = took
            figures[f"serve_{attempt}_built_environment"] = built
            rows.append((f"mlpd serve → first prediction ({'environment built' if built else 'environment reused'})", f"{took:.1f} s", "", ""))
            log(f"serve → first prediction ({attempt}): {took:.1f}s (environment {'built' if built else 'reused'})")
            if attempt == "first":
                cli(d, token, "deployments", "rm", model)
                time.sleep(2)

        dep = s.get(f"{d.api}/deployments/{model}", timeout=30).json()["deployment"]
        replica_port = dep["replica_list"][0]["port"]
        replica_pid = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", f"mlpd-job-{dep['replica_list'][0]['job_id']}"],
                                         capture_output=True, text=True).stdout.strip())
        proxy_pid = int((d.state_dir / "run" / "serving" / "haproxy.pid").read_text().split()[0])
        for clients in [int(c) for c in args.clients.split(",")]:
            load(replica_port, "/invocations", None, 200, clients)  # warm-up, both paths
            load(serving_port, f"/serve/{model}/invocations", token, 200, clients)
            runs = {"direct": [], "endpoint": []}
            for order in (("direct", "endpoint"), ("endpoint", "direct")):
                for kind in order:
                    port, path, tok = (replica_port, "/invocations", None) if kind == "direct" else (serving_port, f"/serve/{model}/invocations", token)
                    cpu = (tree_cpu(d.proc.pid), tree_cpu(replica_pid), tree_cpu(proxy_pid))
                    result = load(port, path, tok, args.requests, clients)
                    result["daemon_cpu"] = tree_cpu(d.proc.pid) - cpu[0]
                    result["replica_cpu"] = tree_cpu(replica_pid) - cpu[1]
                    result["proxy_cpu"] = tree_cpu(proxy_pid) - cpu[2]
                    runs[kind].append(result)
            stats = {}
            for kind, results in runs.items():
                lat = [x for r in results for x in r["latencies"]]
                wall = sum(r["wall"] for r in results)
                stats[kind] = {"rps": len(lat) / wall, "p50": median(lat), "p99": quantile(lat, 0.99), "errors": sum(r["errors"] for r in results),
                               "daemon_cpu_ms_per_request": 1000 * sum(r["daemon_cpu"] for r in results) / len(lat),
                               "proxy_cpu_ms_per_request": 1000 * sum(r["proxy_cpu"] for r in results) / len(lat),
                               "replica_cpu_ms_per_request": 1000 * sum(r["replica_cpu"] for r in results) / len(lat)}
            e, dr = stats["endpoint"], stats["direct"]
            figures[f"c{clients}"] = stats
            figures[f"c{clients}_p50_ratio"] = ratio(e["p50"], dr["p50"])
            figures[f"c{clients}_p50_added_ms"] = (e["p50"] - dr["p50"]) * 1000
            figures[f"c{clients}_throughput_ratio"] = ratio(e["rps"], dr["rps"])
            rows += [(f"{clients} client(s): requests/s, endpoint vs direct", f"{e['rps']:.0f}", f"{dr['rps']:.0f}", times(ratio(e["rps"], dr["rps"]))),
                     (f"{clients} client(s): p50 latency", f"{e['p50'] * 1000:.2f} ms", f"{dr['p50'] * 1000:.2f} ms", times(ratio(e["p50"], dr["p50"]))),
                     (f"{clients} client(s): p99 latency", f"{e['p99'] * 1000:.2f} ms", f"{dr['p99'] * 1000:.2f} ms", times(ratio(e["p99"], dr["p99"]))),
                     (f"{clients} client(s): CPU per request, the proxy (haproxy) vs the replica",
                      f"{e['proxy_cpu_ms_per_request']:.3f} ms", f"{e['replica_cpu_ms_per_request']:.2f} ms",
                      times(ratio(e["proxy_cpu_ms_per_request"], e["replica_cpu_ms_per_request"]))),
                     (f"{clients} client(s): CPU per request, the daemon's processes (not on the request path)",
                      f"{e['daemon_cpu_ms_per_request']:.3f} ms", "", ""),
                     (f"{clients} client(s): failed requests", str(e["errors"]), str(dr["errors"]), "")]
            log(f"{clients} clients: endpoint {e['rps']:.0f}/s p50 {e['p50'] * 1000:.2f} ms; direct {dr['rps']:.0f}/s p50 {dr['p50'] * 1000:.2f} ms")

        # the rollout: move the alias under a client, time to the first answer of version 2
        answers: list[tuple[float, int, float | None]] = []
        stop = threading.Event()

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", serving_port, timeout=30)
            while not stop.is_set():
                try:
                    status, body = post(conn, f"/serve/{model}/invocations", {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
                    answers.append((time.monotonic(), status, json.loads(body)["predictions"][0] if status == 200 else None))
                except (OSError, http.client.HTTPException, ValueError):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", serving_port, timeout=30)
                    answers.append((time.monotonic(), 0, None))
                time.sleep(0.005)

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(1)
        moved = time.monotonic()
        r = s.post(f"{d.url}/mlflow/api/2.0/mlflow/registered-models/alias", json={"name": model, "alias": "prod", "version": "2"}, timeout=30)
        r.raise_for_status()
        deadline = time.monotonic() + 600
        while not any(a[2] is not None and round(a[2], 6) == 3.0 for a in answers[-5:]) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(5)
        stop.set()
        thread.join()
        first_v2 = next((a[0] for a in answers if a[2] is not None and round(a[2], 6) == 3.0), None)
        switched = d.query("SELECT at FROM events WHERE action = 'deployment.switched' ORDER BY id DESC LIMIT 1")[0][0]
        noticed = d.query("SELECT at FROM events WHERE action = 'deployment.alias_moved' ORDER BY id DESC LIMIT 1")[0][0]
        failed = sum(1 for a in answers if a[1] != 200)
        figures.update(rollout_move_to_v2_s=(first_v2 - moved) if first_v2 else None, rollout_requests=len(answers), rollout_failed=failed,
                       rollout_noticed_to_switch_s=switched - noticed)
        rows += [("alias moved → first answer of version 2", f"{figures['rollout_move_to_v2_s']:.1f} s" if first_v2 else "never", "", ""),
                 ("  of which: alias noticed → traffic switched (daemon events)", f"{switched - noticed:.1f} s", "", ""),
                 ("requests during the rollout / failed", f"{len(answers)} / {failed}", "", "")]
    load_after = os.getloadavg()
    figures.update(load_before=load_before, load_after=load_after)
    rows.append(("load average before / after (1, 5, 15 min)", " ".join(f"{x:.2f}" for x in load_before), " ".join(f"{x:.2f}" for x in load_after), ""))
    print_table(rows)
    print(json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
