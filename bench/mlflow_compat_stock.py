"""The MLflow compatibility checks against a stock `mlflow server` and mlpd's embedded server, side by side.

    .venv/bin/python bench/mlflow_compat_stock.py [--keep]

Runs the member checks of tests/integration/test_mlflow_compat.py (plain MLflow client code:
experiments, runs, logging, artifacts, search, autolog, evaluate, models, the registry, logged
models, traces over OTLP and as an artifact, assessments, prompts, datasets) against:

- a stock `mlflow server --backend-store-uri sqlite:///... --host 127.0.0.1` (proxied artifacts,
  the default; MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false), and
- an mlpd daemon, as a member with a token.

Prints each check's outcome on both and how many behave the same. (The second member's checks
need mlpd's users; a stock server has none.) Loopback only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "bench"), os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "integration")]

from bench_mlflow import start_mlpd, start_stock, stop  # noqa: E402
from test_mlflow_compat import ARTIFACT_UPLOAD, MEMBER, run_checks  # noqa: E402  (the checks, as the test runs them)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (state and logs).")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mlpd-compat-")
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPD_", "MLFLOW_"))}
    env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), MLFLOW_DISABLE_TELEMETRY="true")
    procs = []
    outcomes: dict[str, dict[str, bool]] = {}
    errors: list[str] = []
    try:
        mlpd_proc, mlpd_url, token = start_mlpd(tmp, env)
        procs.append(mlpd_proc)
        stock_proc, stock_url = start_stock(tmp, env, "stock", job_runner=False)
        procs.append(stock_proc)
        for server, uri, tok, user in (("stock", stock_url, "unused", "compatstock"), ("mlpd", f"{mlpd_url}/mlflow", token, "bench")):
            workdir = Path(tmp) / f"checks-{server}"
            workdir.mkdir()
            results, state = run_checks(uri, workdir, "member", MEMBER, user, tok)
            more, _ = run_checks(uri, workdir, "artifact_upload", ARTIFACT_UPLOAD, user, tok, state)
            for r in results + more:
                outcomes.setdefault(r["name"], {})[server] = r["ok"]
                if not r["ok"]:
                    errors.append(f"{server}: {r['name']}: {r['error'][:400]}")
    finally:
        for proc in procs:
            stop(proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    def mark(ok):
        return "-" if ok is None else "pass" if ok else "FAIL"

    same = sum(1 for o in outcomes.values() if o.get("stock") == o.get("mlpd"))
    both = sum(1 for o in outcomes.values() if o.get("stock") and o.get("mlpd"))
    print(f"{len(outcomes)} member checks: {both} pass on both, {same} behave the same")
    for name, o in outcomes.items():
        print(f"  stock {mark(o.get('stock')):4}  mlpd {mark(o.get('mlpd')):4}  {name}")
    for line in errors:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
