"""Profile a job's container start as mlpd's DockerRuntime.start_job does it: each Docker API call
of the path timed on its own, against `docker run -d` of the same image and command, interleaved.

    .venv/bin/python bench/profile_launch.py [--rounds 20] [--flag-groups]

--flag-groups: instead, `docker run -d` with one group of mlpd's container options added at a time
(its isolated network; CPU and memory limits; init, user, cap-drop, no-new-privileges, pids-limit),
interleaved in shuffled order with plain `docker run -d`: which of them costs start time.

Only containers labelled mlpd-bench-profile=<pid> are made, and removed at the end.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import docker

from mlpd.runtime.docker_engine import DockerRuntime
from mlpd.runtime.protocol import LaunchRequest

IMAGE = "mlpd/train:latest"


def timed_calls(client, label: str) -> dict[str, float]:
    """start_job's Docker calls before this change, one by one (seconds each)."""
    name = f"mlpd-prof-{os.getpid()}-{time.monotonic_ns()}"
    out = {}
    t = time.perf_counter()
    try:
        client.containers.get(name)
    except docker.errors.NotFound:
        pass
    out["inspect (absent)"] = time.perf_counter() - t
    t = time.perf_counter()
    client.images.get(IMAGE)
    out["image inspect"] = time.perf_counter() - t
    t = time.perf_counter()
    resp = client.api.create_container(IMAGE, ["sleep", "30"], name=name, labels={"mlpd-bench-profile": label},
                                       host_config=client.api.create_host_config(init=True))
    out["create"] = time.perf_counter() - t
    t = time.perf_counter()
    client.api.inspect_container(resp["Id"])
    out["inspect (after create, as containers.create does)"] = time.perf_counter() - t
    t = time.perf_counter()
    client.api.inspect_container(name)
    out["inspect (containers.get by name)"] = time.perf_counter() - t
    t = time.perf_counter()
    client.api.start(resp["Id"])
    out["start"] = time.perf_counter() - t
    t = time.perf_counter()
    client.api.inspect_container(resp["Id"])
    out["inspect (reload)"] = time.perf_counter() - t
    client.api.remove_container(resp["Id"], force=True)
    return out


FLAG_GROUPS = {
    "plain": [],
    "--network mlpd-isolated": ["--network", "mlpd-isolated"],
    "--memory 8g --cpus 2": ["--memory", "8g", "--memory-swap", "8g", "--cpus", "2"],
    "init, user, cap-drop, no-new-privileges, pids-limit": ["--init", "--user", "1000:1000", "--cap-drop", "ALL",
                                                            "--security-opt", "no-new-privileges", "--pids-limit", "4096"],
}


def flag_groups(rounds: int, label: str) -> None:
    """docker run -d with each group of mlpd's options, interleaved (shuffled each round)."""
    import random

    rng = random.Random(1)
    res: dict[str, list[float]] = {k: [] for k in FLAG_GROUPS}
    try:
        for _ in range(rounds):
            order = list(FLAG_GROUPS)
            rng.shuffle(order)
            for k in order:
                t = time.perf_counter()
                cid = subprocess.run(["docker", "run", "-d", "--rm", "--label", f"mlpd-bench-profile={label}", *FLAG_GROUPS[k],
                                      IMAGE, "sleep", "30"], capture_output=True, text=True, check=True).stdout.strip()
                res[k].append(time.perf_counter() - t)
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
    finally:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd-bench-profile={label}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
    base = statistics.median(res["plain"])
    print(f"{rounds} rounds, medians")
    for k, v in res.items():
        print(f"  docker run -d {k}: {statistics.median(v) * 1e3:.0f} ms ({statistics.median(v) / base:.2f}x plain)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--flag-groups", action="store_true", help="time docker run -d with each group of mlpd's options instead")
    args = ap.parse_args()
    label = str(os.getpid())
    if args.flag_groups:
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        flag_groups(args.rounds, label)
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        return
    client = docker.from_env()
    rt = DockerRuntime(f"prof{os.getpid()}")
    os.makedirs("/tmp/mlpd-prof-out", exist_ok=True)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    calls: dict[str, list[float]] = {}
    runs = {"docker run -d": [], "DockerRuntime.start_job": []}
    try:
        for i in range(args.rounds):
            for k, v in timed_calls(client, label).items():
                calls.setdefault(k, []).append(v)
            t = time.perf_counter()
            cid = subprocess.run(["docker", "run", "-d", "--rm", "--label", f"mlpd-bench-profile={label}", IMAGE, "sleep", "30"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            runs["docker run -d"].append(time.perf_counter() - t)
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
            req = LaunchRequest(job_id=f"prof{os.getpid()}x{i}", owner="bench", image=IMAGE, command=("sleep", "30"), env={},
                                gpu_uuids=(), cpus=1.0, memory=None, user="1000:1000", code_dir=None,
                                outputs_dir="/tmp/mlpd-prof-out")
            t = time.perf_counter()
            rt.start_job(req)
            runs["DockerRuntime.start_job"].append(time.perf_counter() - t)
            rt.remove(req.job_id)
    finally:
        for c in client.containers.list(all=True, filters={"label": f"mlpd-bench-profile={label}"}):
            c.remove(force=True)
    print(f"{args.rounds} rounds, medians")
    for k, v in calls.items():
        print(f"  {k}: {statistics.median(v) * 1e3:.1f} ms")
    base = statistics.median(runs["docker run -d"])
    for k, v in runs.items():
        print(f"  {k}: {statistics.median(v) * 1e3:.1f} ms ({statistics.median(v) / base:.2f}x docker run -d)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
