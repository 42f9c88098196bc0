"""A real one-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's slurm-wlm,
started without systemd in a temporary directory, with this host as its only node.

No slurmdbd: job states come from squeue and scontrol (ended jobs stay known for MinJobAge).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
from dataclasses import dataclass
from typing import Iterator

MUNGE_KEY_BYTES = 1024


# docs/slurm.md's Epilog: what is left of an mlpd job's container goes with its Slurm job.
EPILOG = """#!/bin/sh
ids=$(docker ps -aq --filter "label=mlpd.slurm_job_id=$SLURM_JOB_ID")
[ -z "$ids" ] || docker rm -f $ids >/dev/null
exit 0
"""


def slurm_installed() -> bool:
    return all(shutil.which(t) for t in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: str
    conf: str  # the slurm.conf path (SLURM_CONF for every client)
    node: str
    processes: list[subprocess.Popen]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": self.conf}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=30, check=check)


def _slurm_conf(root: str, node: str, cpus: int, memory_mb: int, munge_socket: str, gpus: int = 0) -> str:
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""ClusterName=mlpdtest
GresTypes=gpu
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=15
Epilog={root}/epilog.sh
MinJobAge=3600
SchedulerParameters=sched_interval=1
MailProg=/bin/true
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
PartitionName=main Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def start_cluster(root: str, timeout: float = 60.0, gpus: int = 0) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under root; stop them (by their pids) on exit. With gpus,
    the node has that many GPUs as Slurm sees them: gres.conf entries whose File= are character
    devices of NVIDIA's major number (195) made with mknod under root, stand-ins no driver backs
    (Slurm then gives each job its own and sets CUDA_VISIBLE_DEVICES)."""
    node = socket.gethostname().split(".")[0]
    for d in ("state", "spool", "munge"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "munge"), 0o700)
    key = os.path.join(root, "munge", "munge.key")
    with open(key, "wb") as f:
        f.write(os.urandom(MUNGE_KEY_BYTES))
    os.chmod(key, 0o400)
    munge_socket = os.path.join(root, "munge", "munge.socket")
    conf = os.path.join(root, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_slurm_conf(root, node, os.cpu_count() or 1, _memory_mb(), munge_socket, gpus))
    if gpus:
        os.makedirs(os.path.join(root, "dev"), exist_ok=True)
        for i in range(gpus):
            path = os.path.join(root, "dev", f"nvidia{i}")
            if not os.path.exists(path):
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(195, i))
        with open(os.path.join(root, "gres.conf"), "w") as f:
            f.write(f"NodeName={node} Name=gpu File={root}/dev/nvidia[0-{gpus - 1}]\n")
    epilog = os.path.join(root, "epilog.sh")
    with open(epilog, "w") as f:
        f.write(EPILOG)
    os.chmod(epilog, 0o755)
    cluster = Cluster(root, conf, node, [])
    log = open(os.path.join(root, "daemons.out"), "ab")
    try:
        cluster.processes.append(subprocess.Popen(
            ["munged", "-F", "--force", f"--key-file={key}", f"--socket={munge_socket}", f"--pid-file={root}/munge/munged.pid",
             f"--log-file={root}/munge/munged.log", f"--seed-file={root}/munge/munged.seed"], stdout=log, stderr=log))
        _wait_for(lambda: os.path.exists(munge_socket), timeout, "munged's socket")
        cluster.processes.append(subprocess.Popen(["slurmctld", "-D", "-i", "-f", conf], env=cluster.env, stdout=log, stderr=log))
        cluster.processes.append(subprocess.Popen(["slurmd", "-D", "-f", conf, "-N", node], env=cluster.env, stdout=log, stderr=log))
        _wait_for(lambda: _node_idle(cluster), timeout, "the node to be idle in sinfo", cluster)
        yield cluster
    finally:
        for p in reversed(cluster.processes):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(cluster.processes):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def _memory_mb() -> int:
    """The host's memory in MiB, less a little (slurmd refuses a node that has less than it says)."""
    with open("/proc/meminfo") as fh:
        total_kb = next(int(line.split()[1]) for line in fh if line.startswith("MemTotal:"))
    return int(total_kb / 1024 * 0.9)


def _node_idle(cluster: Cluster) -> bool:
    for p in cluster.processes:
        if p.poll() is not None:
            raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {cluster.root}/*.log")
    out = cluster.run("sinfo", "-h", "-o", "%t", check=False)
    return out.returncode == 0 and out.stdout.strip() == "idle"


def _wait_for(check, timeout: float, what: str, cluster: Cluster | None = None) -> None:
    from conftest import wait_for  # the suite's one polling helper

    try:
        wait_for(check, timeout, 0.2, what)
        return
    except AssertionError:
        pass
    logs = ""
    if cluster is not None:
        for name in ("slurmctld.log", "slurmd.log"):
            with contextlib.suppress(OSError), open(os.path.join(cluster.root, name)) as f:
                logs += f"\n--- {name}\n" + f.read()[-3000:]
    raise TimeoutError(f"waited {timeout:g}s for {what}{logs}")
