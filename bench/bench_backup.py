#!/usr/bin/env python3
"""Benchmark: `mlpd admin backup` of a big state dir (time, size) and the daemon's latency while it runs.

    .venv/bin/python bench/bench_backup.py [--runs 10000] [--artifact-mb 1024] [--artifact-files 64]
                                           [--probe-interval 0.02] [--repeats 5] [--threads 6] [--keep]

Everything runs in this one process against a daemon of its own (temporary directory, a
free loopback port, the shipped mlpd.toml); only loopback traffic. At the end (also on
error) every daemon this script started is stopped (SIGTERM), any container labelled with
its instance id removed (none is started), and the temporary directory deleted (--keep
keeps it, with the daemon logs).

The state (all of it through the daemon's HTTP API, as clients make it; nothing is
written into the state dir behind the daemon's back):
  - one experiment (POST /mlflow/api/2.0/mlflow/experiments/create) and --runs runs in it,
    each POST .../runs/create then POST .../runs/log-batch with 3 params and a 10-step
    "loss" curve (--metric-steps); --threads threads, a requests.Session each, against the
    daemon's gunicorn workers (about 25-40 runs/s on 2 cores: the setup is most of the
    benchmark's time; the runs are left RUNNING, a third request each to end them would
    cost a third more setup time and change nothing the backup sees but a status column);
  - --artifact-mb MiB of artifacts: --artifact-files files of random (incompressible)
    bytes, one per run in the first --artifact-files runs, each uploaded with
    PUT /mlflow/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/model/weights.bin
    (MLflow's proxied artifact store: <state>/mlflow/artifacts/<exp>/<run>/artifacts/...).
The setup time is reported (not part of the measure).

Measured, in this order (no page-cache dropping, which would disturb the rest of the machine:
the state dir was just written and sits in the page cache for every copy, so a copy's own time
is mostly the write into the page cache; `sync` before each copy so no earlier write-back
overlaps it, and a second figure "+ sync" adds the time an os.sync() right after it takes,
i.e. until the copy is on disk; os.sync() is system-wide, so other writers on the machine
count there too):
  1+2. --repeats rounds (medians reported), each: `cp -a STATE COPY` (a plain file copy, the
     time baseline; NOT a consistent backup while the daemon writes: SQLite's WAL and database
     file are copied at different moments, and a half-written artifact may be copied), then
     `mlpd admin backup B --state-dir STATE` as a subprocess with no other load (CLI start-up
     included; its own "(N.Ns)" line is the time inside backup(): SQLite's online backup of both
     databases, then the file trees). Each copy is deleted (and synced) before the next.
  3. the probe alone, for as long as the backups of 2 took with their syncs (at least
     --min-probe s): one thread with its own warmed Session, every --probe-interval s (start to
     start; a late tick is not made up with a burst) sends authenticated GET /api/v1/whoami and
     then GET /mlflow/api/2.0/mlflow/experiments/search?max_results=10; latency of each recorded.
  4. --repeats backups again, each under a fresh probe that runs from just before the backup
     starts until the sync after it returns (the backup's whole I/O, write-back included). The
     samples are pooled; p50/p99/max of each request kind during the backups against step 3.
Sizes are disk usage (st_blocks, as `du`) of the state dir (the baseline) and of the last backup,
plus the apparent bytes of the two SQLite databases in each.

Verified: `mlpd admin restore LAST --state-dir NEW` (no daemon holds NEW), then in NEW's
mlflow.db the number of runs in the experiment = --runs and the metric rows = runs x steps,
the artifact bytes under NEW/mlflow/artifacts = --artifact-files x file size, and a daemon
started on NEW serves one artifact whose sha256 matches the uploaded bytes, and
experiments/search finds the experiment (same token: the users are restored too).

Prints one Markdown table (metric | value | baseline | ratio) and a JSON line with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from benchlib import BIN, SHIPPED_CONFIG, Daemon, log, median, ms, print_table, ratio, times

MLFLOW = "/mlflow/api/2.0/mlflow"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts"


# ---------------------------------------------------------------- helpers


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile of xs (nearest rank); nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def disk_usage(path: Path) -> tuple[int, int, int]:
    """(bytes on disk as du counts them, apparent bytes, files) under path, links not followed."""
    used = apparent = files = 0
    for root, dirs, names in os.walk(path):
        for name in names + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            used += st.st_blocks * 512
            if name in names:
                apparent += st.st_size
                files += 1
    return used, apparent, files


def db_bytes(state: Path) -> int:
    """Apparent bytes of both SQLite databases with their -wal/-shm files."""
    total = 0
    for db in (state / "mlpd.db", state / "mlflow" / "mlflow.db"):
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(db) + suffix)
            if p.exists():
                total += p.stat().st_size
    return total


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 10 * 2**20 else f"{n / 2**20:.1f} MiB"


def secs(x: float) -> str:
    return "n/a" if x != x else f"{x:.1f} s"


def sync_time() -> float:
    """Seconds an os.sync() takes (the write-back of what was just copied; system-wide)."""
    t = time.perf_counter()
    os.sync()
    return time.perf_counter() - t


def timed(argv: list[str], env: dict[str, str] | None = None, timeout: float = 1800, sync_first: bool = True) -> tuple[float, str]:
    """Run argv (after an os.sync(), unless told not to); its wall time and stdout; raise with its stderr on failure."""
    if sync_first:
        os.sync()
    t = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    dt = time.perf_counter() - t
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
    return dt, result.stdout


def inner_seconds(stdout: str) -> float:
    """The "(N.Ns)" that `mlpd admin backup` ends with: the time inside backup()."""
    m = re.search(r"\((\d+(?:\.\d+)?)s\)\s*$", stdout.strip())
    return float(m.group(1)) if m else float("nan")


# ---------------------------------------------------------------- setup through the API


def create_runs(d: Daemon, n: int, threads: int, steps: int) -> tuple[str, list[str], float]:
    """One experiment with n runs (3 params, a loss curve); (experiment id, run ids, seconds)."""
    s = d.session()
    r = s.post(d.url + MLFLOW + "/experiments/create", json={"name": f"bench-backup-{os.getpid()}"}, timeout=60)
    r.raise_for_status()
    exp = r.json()["experiment_id"]
    local = threading.local()
    t0 = time.perf_counter()

    def one(i: int) -> str:
        if not hasattr(local, "s"):
            local.s = d.session()
        ss = local.s
        now = int(time.time() * 1000)
        r = ss.post(d.url + MLFLOW + "/runs/create", json={"experiment_id": exp, "run_name": f"run-{i}", "start_time": now}, timeout=120)
        r.raise_for_status()
        run_id = r.json()["run"]["info"]["run_id"]
        batch = {
            "run_id": run_id,
            "params": [{"key": "lr", "value": str(10 ** -(1 + i % 4))}, {"key": "batch_size", "value": str(2 ** (4 + i % 4))},
                       {"key": "seed", "value": str(i)}],
            "metrics": [{"key": "loss", "value": 2.0 / (1 + k + i % 7), "timestamp": now + k, "step": k} for k in range(steps)],
        }
        ss.post(d.url + MLFLOW + "/runs/log-batch", json=batch, timeout=120).raise_for_status()
        return run_id

    run_ids: list[str] = []
    with ThreadPoolExecutor(threads) as pool:
        for k, run_id in enumerate(pool.map(one, range(n)), 1):
            run_ids.append(run_id)
            if k % 1000 == 0 or k == n:
                dt = time.perf_counter() - t0
                log(f"{k}/{n} runs ({k / dt:.0f} runs/s)")
    return exp, run_ids, time.perf_counter() - t0


def artifact_bytes(i: int, block: bytes) -> bytes:
    """File i: a distinct 32-byte header, then the shared random block (no two files are alike)."""
    return hashlib.sha256(f"artifact {i}".encode()).digest() + block


def upload_artifacts(d: Daemon, exp: str, run_ids: list[str], files: int, size: int, threads: int) -> tuple[int, str, float]:
    """Upload `files` files of `size` bytes, one per run; (bytes uploaded, sha256 of file 0, seconds)."""
    block = os.urandom(max(0, size - 32))
    sha0 = hashlib.sha256(artifact_bytes(0, block)).hexdigest()
    local = threading.local()
    t0 = time.perf_counter()

    def one(i: int) -> int:
        if not hasattr(local, "s"):
            local.s = d.session()
        data = artifact_bytes(i, block)
        r = local.s.put(f"{d.url}{ARTIFACTS}/{exp}/{run_ids[i]}/artifacts/model/weights.bin", data=data, timeout=600)
        r.raise_for_status()
        return len(data)

    with ThreadPoolExecutor(min(threads, 4)) as pool:
        total = sum(pool.map(one, range(files)))
    return total, sha0, time.perf_counter() - t0


# ---------------------------------------------------------------- the probe


class Probe:
    """A thread that sends whoami and an MLflow read every `interval` s and records latencies."""

    KINDS = ("whoami", "mlflow")

    def __init__(self, d: Daemon, interval: float):
        self.d, self.interval = d, interval
        self.s = d.session()
        self.urls = {"whoami": d.api + "/whoami", "mlflow": d.url + MLFLOW + "/experiments/search?max_results=10"}
        for url in self.urls.values():  # connect and warm both paths before the clock starts
            self.s.get(url, timeout=30).raise_for_status()
        self.lat: dict[str, list[float]] = {k: [] for k in self.KINDS}
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.elapsed = 0.0

    def _loop(self) -> None:
        t0 = time.perf_counter()
        next_tick = t0
        while not self.stop_event.is_set():
            for kind in self.KINDS:
                t = time.perf_counter()
                try:
                    r = self.s.get(self.urls[kind], timeout=60)
                    dt = time.perf_counter() - t
                    if r.status_code != 200:
                        self.errors.append(f"{kind}: HTTP {r.status_code}")
                    else:
                        self.lat[kind].append(dt)
                except requests.RequestException as exc:
                    self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
            next_tick += self.interval
            now = time.perf_counter()
            if next_tick > now:
                self.stop_event.wait(next_tick - now)
            else:
                next_tick = now  # late: go on at once, without a catch-up burst
        self.elapsed = time.perf_counter() - t0

    @classmethod
    def pooled(cls) -> "Probe":
        """An empty probe that only collects the samples of others (add)."""
        p = cls.__new__(cls)
        p.lat, p.errors, p.elapsed = {k: [] for k in cls.KINDS}, [], 0.0
        return p

    def add(self, other: "Probe") -> None:
        for k in self.KINDS:
            self.lat[k] += other.lat[k]
        self.errors += other.errors
        self.elapsed += other.elapsed

    def start(self) -> "Probe":
        self.thread.start()
        return self

    def stop(self) -> "Probe":
        self.stop_event.set()
        self.thread.join()
        self.s.close()
        return self


# ---------------------------------------------------------------- verification


def verify(base: Path, backup_dir: Path, token: str, exp: str, run_ids: list[str], runs: int, steps: int,
           files: int, file_size: int, sha0: str) -> dict:
    """Restore backup_dir onto a fresh state dir, check it there and through a daemon started on it."""
    (base / "restored").mkdir()
    d2 = Daemon(base / "restored", SHIPPED_CONFIG.read_text())
    t_restore, _ = timed([BIN, "admin", "restore", str(backup_dir), "--state-dir", str(d2.state_dir)], env=d2.env())
    con = sqlite3.connect(f"file:{d2.state_dir / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True)
    try:
        n_runs = con.execute("SELECT COUNT(*) FROM runs WHERE experiment_id = ?", (int(exp),)).fetchone()[0]
        n_metrics = con.execute("SELECT COUNT(*) FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid WHERE r.experiment_id = ?",
                                (int(exp),)).fetchone()[0]
    finally:
        con.close()
    _, art_bytes, art_files = disk_usage(d2.state_dir / "mlflow" / "artifacts")
    out = {"restore_s": t_restore, "restored_runs": n_runs, "restored_metric_rows": n_metrics,
           "restored_artifact_bytes": art_bytes, "restored_artifact_files": art_files}
    try:
        d2.token = token
        d2.start()
        s = d2.session()
        r = s.get(f"{d2.url}{ARTIFACTS}/{exp}/{run_ids[0]}/artifacts/model/weights.bin", timeout=120)
        r.raise_for_status()
        out["restored_artifact_sha_ok"] = hashlib.sha256(r.content).hexdigest() == sha0
        r = s.get(f"{d2.url}{MLFLOW}/experiments/get?experiment_id={exp}", timeout=60)
        out["restored_experiment_served"] = r.status_code == 200
        r = s.post(f"{d2.url}{MLFLOW}/runs/search", json={"experiment_ids": [exp], "max_results": 1,
                                                           "filter": f"attributes.run_id = '{run_ids[-1]}'"}, timeout=120)
        out["restored_last_run_served"] = r.status_code == 200 and len(r.json().get("runs", [])) == 1
    finally:
        d2.cleanup(keep=True)
    out["ok"] = (n_runs == runs and n_metrics == runs * steps and art_bytes == files * file_size
                 and art_files == files and out.get("restored_artifact_sha_ok") is True
                 and out.get("restored_experiment_served") is True and out.get("restored_last_run_served") is True)
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10000, help="MLflow runs to create")
    ap.add_argument("--metric-steps", type=int, default=10, help="steps of the loss curve logged per run")
    ap.add_argument("--artifact-mb", type=int, default=1024, help="MiB of artifacts in all")
    ap.add_argument("--artifact-files", type=int, default=64, help="artifact files (one per run; at most --runs)")
    ap.add_argument("--threads", type=int, default=6, help="client threads for the setup")
    ap.add_argument("--probe-interval", type=float, default=0.02, help="seconds between probe ticks (start to start)")
    ap.add_argument("--repeats", type=int, default=5, help="backups (and copies) per measured kind; medians are reported")
    ap.add_argument("--min-probe", type=float, default=5.0, help="the no-backup probe runs at least this long")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (state, backups, logs)")
    args = ap.parse_args()
    files = max(1, min(args.artifact_files, args.runs))
    file_size = args.artifact_mb * 2**20 // files

    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-backup-"))
    d = Daemon(base, SHIPPED_CONFIG.read_text())
    t_start = time.monotonic()
    with d.running(keep=args.keep):
        d.token = d.add_user("bench", admin=True)
        log(f"daemon ready, instance {d.instance}; creating {args.runs} runs with {args.threads} threads")
        exp, run_ids, t_runs = create_runs(d, args.runs, args.threads, args.metric_steps)
        log(f"runs created in {t_runs:.0f} s; uploading {files} x {mib(file_size)} of artifacts")
        art_total, sha0, t_art = upload_artifacts(d, exp, run_ids, files, file_size, args.threads)
        log(f"artifacts uploaded in {t_art:.1f} s ({art_total / 2**20 / t_art:.0f} MiB/s)")
        state_used, state_apparent, state_files = disk_usage(d.state_dir)
        state_db = db_bytes(d.state_dir)
        log(f"state dir: {mib(state_used)} on disk, {state_files} files, databases {mib(state_db)}")

        backup_argv = lambda dest: [BIN, "admin", "backup", str(dest), "--state-dir", str(d.state_dir)]  # noqa: E731
        # 1 and 2, interleaved: the plain copy and the backup alone, each then synced to disk
        cp_t, cp_sync, b_t, b_inner, b_sync = [], [], [], [], []
        for i in range(args.repeats):
            t, _ = timed(["cp", "-a", str(d.state_dir), str(base / "cp-copy")])
            cp_t.append(t)
            cp_sync.append(t + sync_time())
            shutil.rmtree(base / "cp-copy")
            t, out = timed(backup_argv(base / "backup1"), env=d.env())
            b_t.append(t)
            b_inner.append(inner_seconds(out))
            b_sync.append(t + sync_time())
            shutil.rmtree(base / "backup1")
            log(f"round {i + 1}/{args.repeats}: cp -a {cp_t[-1]:.1f} s (+sync {cp_sync[-1]:.1f} s), "
                f"backup {b_t[-1]:.1f} s (+sync {b_sync[-1]:.1f} s)")
        # 3. the probe alone, for as long as the backups and their syncs took together
        os.sync()
        idle = Probe(d, args.probe_interval).start()
        time.sleep(max(sum(b_sync), args.min_probe))
        idle.stop()
        log(f"probe without backup: {len(idle.lat['whoami'])} ticks in {idle.elapsed:.1f} s")
        # 4. the backups under the probe: each window = the backup and the sync of what it wrote
        busy = Probe.pooled()
        u_t, u_inner, u_sync = [], [], []
        for i in range(args.repeats):
            dest = base / f"backup2-{i}"
            os.sync()
            probe = Probe(d, args.probe_interval).start()
            try:
                t, out = timed(backup_argv(dest), env=d.env(), sync_first=False)
                u_sync.append(t + sync_time())
            finally:
                probe.stop()
            u_t.append(t)
            u_inner.append(inner_seconds(out))
            busy.add(probe)
            if i < args.repeats - 1:
                shutil.rmtree(dest)
        last = base / f"backup2-{args.repeats - 1}"
        log(f"backups under the probe: median {median(u_t):.1f} s (+sync {median(u_sync):.1f} s); "
            f"{len(busy.lat['whoami'])} ticks in {busy.elapsed:.1f} s")
        b_used, b_apparent, b_files = disk_usage(last)
        b_db = db_bytes(last)

        log("verifying: restore onto a fresh state dir, then a daemon on it")
        v = verify(base, last, d.token, exp, run_ids, args.runs, args.metric_steps, files, file_size, sha0)
        log(f"verification: {v}")
        t_cp, t_cps, t_b1, inner1, t_b1s = median(cp_t), median(cp_sync), median(b_t), median(b_inner), median(b_sync)
        t_b2, inner2, t_b2s = median(u_t), median(u_inner), median(u_sync)

        rows = [
            ("state: runs / metric rows / artifacts", f"{args.runs} / {args.runs * args.metric_steps} / {files} x {mib(file_size)}", "", ""),
            ("setup: create runs (API, %d threads)" % args.threads, f"{t_runs:.0f} s ({args.runs / t_runs:.0f} runs/s)", "", ""),
            ("setup: upload artifacts (API)", f"{t_art:.1f} s ({art_total / 2**20 / t_art:.0f} MiB/s)", "", ""),
            (f"backup wall time, no load (`mlpd admin backup`; median of {args.repeats})", secs(t_b1), f"{secs(t_cp)} (`cp -a`)",
             times(ratio(t_b1, t_cp))),
            ("  of which inside backup() (its own timer)", secs(inner1), f"{secs(t_cp)} (`cp -a`)", times(ratio(inner1, t_cp))),
            ("backup + `sync` (on disk), no load", secs(t_b1s), f"{secs(t_cps)} (`cp -a` + `sync`)", times(ratio(t_b1s, t_cps))),
            ("backup wall time under the probe", secs(t_b2), f"{secs(t_b1)} (no load)", times(ratio(t_b2, t_b1))),
            ("backup + `sync` under the probe", secs(t_b2s), f"{secs(t_b1s)} (no load)", times(ratio(t_b2s, t_b1s))),
            ("backup size on disk", mib(b_used), f"{mib(state_used)} (state dir)", times(ratio(b_used, state_used))),
            ("backup files", str(b_files), f"{state_files} (state dir)", times(ratio(b_files, state_files))),
            ("databases (mlpd.db + mlflow.db, with -wal/-shm)", mib(b_db), f"{mib(state_db)} (state dir)", times(ratio(b_db, state_db))),
        ]
        figures: dict = {
            "runs": args.runs, "metric_steps": args.metric_steps, "artifact_files": files, "artifact_file_bytes": file_size,
            "cpus": os.cpu_count(), "setup_runs_s": t_runs, "setup_artifacts_s": t_art,
            "repeats": args.repeats, "cp_a_s": t_cp, "cp_a_sync_s": t_cps, "backup_s": t_b1, "backup_inner_s": inner1, "backup_sync_s": t_b1s,
            "backup_under_probe_s": t_b2, "backup_under_probe_inner_s": inner2, "backup_under_probe_sync_s": t_b2s,
            "cp_a_all_s": [round(x, 3) for x in cp_t], "backup_all_s": [round(x, 3) for x in b_t],
            "backup_under_probe_all_s": [round(x, 3) for x in u_t],
            "state_disk_bytes": state_used, "state_apparent_bytes": state_apparent, "state_files": state_files, "state_db_bytes": state_db,
            "backup_disk_bytes": b_used, "backup_apparent_bytes": b_apparent, "backup_files": b_files, "backup_db_bytes": b_db,
            "probe_interval_s": args.probe_interval, "probe_idle_s": idle.elapsed, "probe_busy_s": busy.elapsed,
        }
        for kind, label in (("whoami", "GET /api/v1/whoami"), ("mlflow", "GET mlflow experiments/search")):
            a, b = busy.lat[kind], idle.lat[kind]
            for name, p in (("p50", 50), ("p99", 99)):
                rows.append((f"{label} {name} during backup", ms(pct(a, p)), f"{ms(pct(b, p))} (no backup)", times(ratio(pct(a, p), pct(b, p)))))
                figures[f"{kind}_{name}_backup_s"], figures[f"{kind}_{name}_idle_s"] = pct(a, p), pct(b, p)
            rows.append((f"{label} max during backup", ms(max(a, default=float('nan'))), f"{ms(max(b, default=float('nan')))} (no backup)",
                         times(ratio(max(a, default=float('nan')), max(b, default=float('nan'))))))
            figures[f"{kind}_n_backup"], figures[f"{kind}_n_idle"] = len(a), len(b)
            figures[f"{kind}_max_backup_s"], figures[f"{kind}_max_idle_s"] = max(a, default=None), max(b, default=None)
        errors = busy.errors + idle.errors
        rows.append(("probe requests (during / without backup), errors", f"{len(busy.lat['whoami']) + len(busy.lat['mlflow'])}",
                     f"{len(idle.lat['whoami']) + len(idle.lat['mlflow'])}", f"{len(errors)} errors"))
        rows.append(("restore (`mlpd admin restore`) wall time", secs(v["restore_s"]), f"{secs(t_b1)} (backup)", times(ratio(v["restore_s"], t_b1))))
        rows.append(("restored: runs / metric rows / artifact bytes / sha256 / served",
                     f"{v['restored_runs']} / {v['restored_metric_rows']} / {v['restored_artifact_bytes']} / "
                     f"{'ok' if v.get('restored_artifact_sha_ok') else 'MISMATCH'} / "
                     f"{'ok' if v.get('restored_last_run_served') and v.get('restored_experiment_served') else 'NO'}",
                     f"{args.runs} / {args.runs * args.metric_steps} / {files * file_size}", "ok" if v["ok"] else "FAILED"))
        figures.update(v)
        figures["probe_errors"] = errors[:5]
        figures["probe_error_count"] = len(errors)
        print_table(rows)
        total = time.monotonic() - t_start
        print(f"\n(total benchmark time {total:.0f} s; {os.cpu_count()} CPUs; daemon {d.url}, instance {d.instance})")
        figures["total_s"] = total
        print(json.dumps({k: ((None if math.isnan(v_) else round(v_, 4)) if isinstance(v_, float) else v_) for k, v_ in figures.items()}))
        return 0 if v["ok"] and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
