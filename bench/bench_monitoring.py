#!/usr/bin/env python3
"""Benchmark: what monitoring (mlpd.serving.monitoring) costs the daemon's /serve path per request.

    .venv/bin/python bench/bench_monitoring.py [--requests 2000] [--rows 1,100]

In this process: the daemon's serving WSGI layer (mlpd.web.serving_proxy.ServeMount, with a real SQLite
state database holding one deployment) in front of a stand-in replica in a subprocess (an HTTP server
that answers MLflow's shape, {"predictions": [...]}, one per row). For each body size (rows of two
numeric features), rounds alternate between monitoring off (serving.monitor_reference = 0, the
baseline: what the path cost before) and on (1000), four rounds each, interleaved; each round sends
--requests POSTs through the WSGI layer (werkzeug's test client) and then adds what it saw to the
state database (the flush a web worker does every 2 s). Reported: this process's CPU time (user +
system) per request, median over rounds, for each, and the ratio; the replica's CPU is not in it.
The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPLICA = r'''
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = json.dumps({"predictions": [2 * r[0] - 3 * r[1] for r in req["dataframe_split"]["data"]]}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
'''


def main() -> None:
    from werkzeug.test import Client

    from mlpd.config import load_config
    from mlpd.store import Store
    from mlpd.web.serving_proxy import Monitor, ServeMount

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", default="1,100", help="rows per request, comma-separated")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    replica = subprocess.Popen([sys.executable, "-c", REPLICA], stdout=subprocess.PIPE, text=True)
    try:
        port = int(replica.stdout.readline())
        tmp = tempfile.mkdtemp(prefix="mlpd-bench-monitoring-")
        shipped = str(Path(__file__).resolve().parents[1] / "mlpd.toml")
        cfg = load_config(shipped, overrides={"server.state_dir": tmp + "/state", "server.container_listen": ""})
        store = Store(cfg.db_path)
        store.migrate()
        now = time.time()
        with store.write() as db:
            db.execute("""INSERT INTO deployments (id, owner, name, model_uri, spec, key_hash, created_at, updated_at, current)
                          VALUES ('d1', 'bench', 'bench', 'models:/bench/1', '{"auth": "none"}', 'x', ?, ?, 'r1')""", [now, now])
            db.execute("""INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_name, model_version, location, state,
                          created_at) VALUES ('r1', 'd1', 1, 'models:/bench/1', 'bench', '1', 'mlflow-artifacts:/1', 'serving', ?)""", [now])
            db.execute("""INSERT INTO jobs (id, owner, state, spec, kind, submitted_at, updated_at)
                          VALUES ('j1', 'bench', 'running', '{}', 'deployment', ?, ?)""", [now, now])
            db.execute("""INSERT INTO deployment_replicas (job_id, deployment, revision, slot, port, healthy, created_at)
                          VALUES ('j1', 'd1', 'r1', 0, ?, 1, ?)""", [port, now])
        mount = ServeMount(lambda environ, start: [], cfg, store)
        client = Client(mount)
        rng = random.Random(1)
        results = []
        for rows in [int(r) for r in args.rows.split(",")]:
            body = json.dumps({"dataframe_split": {"columns": ["a", "b"], "data": [[rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(rows)]}})
            per: dict[str, list[float]] = {"off": [], "on": []}
            for _ in range(4):
                for mode, reference in (("off", 0), ("on", 1000)):
                    mount.monitor = Monitor(store, reference)
                    mount.monitor.thread = object()  # type: ignore[assignment]  # flushed below, in the timed round
                    started = time.process_time()
                    for _ in range(args.requests):
                        answer = client.post("/serve/bench/invocations", data=body, content_type="application/json")
                        assert answer.status_code == 200, answer.get_data()
                    mount.monitor.flush()
                    mount.counts.flush()
                    per[mode].append((time.process_time() - started) / args.requests * 1e6)
            off, on = statistics.median(per["off"]), statistics.median(per["on"])
            results.append({"rows": rows, "off_us": round(off, 1), "on_us": round(on, 1), "ratio": round(on / off, 3)})
            print(f"{rows:>4} rows/request: CPU per request {off:7.1f} us without monitoring, {on:7.1f} us with it "
                  f"(+{on - off:.1f} us, {on / off:.2f}x)")
        print(f"load average at end: {os.getloadavg()}")
        print(json.dumps({"bench": "monitoring", "results": results}))
    finally:
        replica.terminate()
        replica.wait()


if __name__ == "__main__":
    main()
