"""The runtime contract: one suite, run against Docker and against the in-memory runtime.

The controller is written against mlpd.runtime.protocol.Runtime only; its fast unit tests use
MemoryRuntime. This suite is what keeps the two implementations the same where the
controller can tell: phases, exit codes, logs, idempotent start/stop/remove, listing by
this daemon's instance, images, events and the GPU environment.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import threading

import pytest

from helpers import free_port, needs_docker, wait_for
from mlpd.runtime.protocol import ImageMissing, RuntimeFailure, LaunchRequest, Phase, container_name

IMAGE = "mlpd/train:latest"


def _memory(instance):
    from mlpd.runtime.memory import MemoryRuntime

    return MemoryRuntime(instance, images=(IMAGE,))


def _docker(instance):
    from mlpd.runtime.docker_engine import DockerRuntime

    # gpu_runtime "none": pinning by environment only, so declared test GPU UUIDs work on any engine
    # (an engine with the NVIDIA runtime would refuse a DeviceRequest naming them).
    return DockerRuntime(instance, "", "none")


@pytest.fixture(params=["memory", pytest.param("docker", marks=[needs_docker, pytest.mark.docker])])
def make_runtime(request):
    """runtime(instance=None) -> a runtime of the parametrised kind; its containers are removed afterwards."""
    made = []

    def make(instance: str | None = None):
        instance = instance or f"contract{secrets.token_hex(4)}"
        runtime = _memory(instance) if request.param == "memory" else _docker(instance)
        made.append(runtime)
        return runtime

    yield make
    if request.param == "docker":
        for runtime in made:
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={runtime.instance}"],
                                 capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def request(tmp_path, command, job_id=None, image=IMAGE, env=None, gpus=(), **extra):
    outputs = tmp_path / f"out-{secrets.token_hex(3)}"
    outputs.mkdir()
    os.chmod(outputs, 0o777)
    return LaunchRequest(job_id=job_id or secrets.token_hex(6), owner="alice", image=image, command=tuple(command),
                         env=dict(env or {}), gpu_uuids=tuple(gpus), cpus=None, memory=None, user="1000:1000",
                         code_dir=None, outputs_dir=str(outputs), pull=False, **extra)


def ended(runtime, job_id, timeout=60):
    return wait_for(lambda: (s := runtime.inspect(job_id)) is not None and s.phase == Phase.EXITED and s, timeout, 0.05, f"{job_id} to exit")


def test_a_workload_runs_to_its_exit_code_with_its_output_kept(make_runtime, tmp_path):
    rt = make_runtime()
    req = request(tmp_path, ["sh", "-c", "echo hello $MLPD_JOB_ID; exit 3"])
    started = rt.start_job(req)
    assert started.job_id == req.job_id and started.name == container_name(req.job_id)
    assert started.phase in (Phase.RUNNING, Phase.EXITED) and started.started_at is not None
    done = ended(rt, req.job_id)
    assert (done.exit_code, done.oom_killed) == (3, False)
    assert done.finished_at is not None and done.finished_at >= done.started_at - 0.1
    assert f"hello {req.job_id}" in b"".join(rt.logs(req.job_id)).decode()
    path = tmp_path / "saved.log"
    assert rt.save_logs(req.job_id, str(path)) and f"hello {req.job_id}" in path.read_text()
    from mlpd.logtext import stamp_of

    stamped = b"".join(rt.logs(req.job_id, timestamps=True)).splitlines()
    saved_lines = path.read_bytes().splitlines()
    for line in stamped + saved_lines:  # every line stamped (saved logs always are), at a time within the run
        t, end = stamp_of(line + b"\n")
        assert end and done.started_at - 1 <= t <= done.finished_at + 1, line
    assert [line[stamp_of(line)[1]:] for line in saved_lines] == [f"hello {req.job_id}".encode()]
    ok = request(tmp_path, ["true"])
    rt.start_job(ok)
    assert ended(rt, ok.job_id).exit_code == 0


def test_the_gpu_environment_is_the_allocation_whatever_the_spec_says(make_runtime, tmp_path):
    rt = make_runtime()
    req = request(tmp_path, ["sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES NVIDIA=$NVIDIA_VISIBLE_DEVICES OUT=$MLPD_OUTPUTS"],
                  env={"CUDA_VISIBLE_DEVICES": "0,1,2,3", "NVIDIA_VISIBLE_DEVICES": "all"}, gpus=("GPU-a", "GPU-b"))
    rt.start_job(req)
    ended(rt, req.job_id)
    assert "CUDA=GPU-a,GPU-b NVIDIA=GPU-a,GPU-b OUT=/outputs" in b"".join(rt.logs(req.job_id)).decode()
    none = request(tmp_path, ["sh", "-c", "echo NVIDIA=$NVIDIA_VISIBLE_DEVICES USER=$USER LOGNAME=$LOGNAME"])
    rt.start_job(none)
    ended(rt, none.job_id)
    # USER and LOGNAME name the owner: the container's uid need not be in the image's /etc/passwd (getpass)
    assert "NVIDIA=void USER=alice LOGNAME=alice" in b"".join(rt.logs(none.job_id)).decode()


def test_start_stop_and_remove_are_idempotent(make_runtime, tmp_path):
    rt = make_runtime()
    req = request(tmp_path, ["sleep", "60"])
    first = rt.start_job(req)
    again = rt.start_job(req)
    assert again.id == first.id and again.phase == Phase.RUNNING
    assert list(rt.list_jobs()) == [req.job_id]
    assert any("sleep 60" in p for p in rt.processes(req.job_id))
    rt.stop(req.job_id, timeout=2)
    stopped = ended(rt, req.job_id, timeout=30)
    assert rt.processes(req.job_id) == []
    assert stopped.exit_code not in (0, None)
    rt.stop(req.job_id, timeout=2)  # stopping a stopped workload: no error
    rt.remove(req.job_id)
    assert rt.inspect(req.job_id) is None and rt.list_jobs() == {}
    rt.remove(req.job_id)  # removing a gone one: no error
    rt.stop(req.job_id)
    assert list(rt.logs(req.job_id)) == [] and rt.save_logs(req.job_id, str(tmp_path / "none")) is False


def test_a_missing_image_leaves_no_container(make_runtime, tmp_path):
    rt = make_runtime()
    req = request(tmp_path, ["true"], image=f"mlpd/absent-{secrets.token_hex(3)}:1")
    with pytest.raises(ImageMissing) as info:
        rt.start_job(req)
    assert req.image in str(info.value)
    assert rt.inspect(req.job_id) is None and rt.list_jobs() == {}
    assert not rt.image_present(req.image) and rt.image_present(IMAGE)


def test_each_daemon_lists_only_its_own_workloads(make_runtime, tmp_path):
    mine, theirs = make_runtime(), make_runtime()
    if type(mine).__name__ == "MemoryRuntime":
        theirs = mine.__class__(theirs.instance, images=(IMAGE,))
        theirs.containers = mine.containers  # one engine, two daemons
    a, b = request(tmp_path, ["sleep", "30"]), request(tmp_path, ["true"])
    mine.start_job(a)
    mine.start_job(b)
    other = request(tmp_path, ["sleep", "30"])
    theirs.start_job(other)
    ended(mine, b.job_id)
    listed = mine.list_jobs()
    assert set(listed) == {a.job_id, b.job_id}
    assert listed[a.job_id].phase == Phase.RUNNING and listed[b.job_id].phase == Phase.EXITED
    assert listed[a.job_id].labels["mlpd.instance"] == mine.instance and listed[a.job_id].labels["mlpd.owner"] == "alice"
    for rt, job in ((mine, a), (theirs, other)):
        rt.stop(job.job_id, timeout=1)
        rt.remove(job.job_id)


def test_every_kind_of_workload_is_listed_and_a_taken_host_port_fails_cleanly(make_runtime, tmp_path):
    rt = make_runtime()
    port = free_port()
    ws = request(tmp_path, ["sleep", "30"], kind="workspace", ports=((8888, "127.0.0.1", port),))
    rt.start_job(ws)
    try:
        assert rt.list_jobs()[ws.job_id].labels["mlpd.kind"] == "workspace"
        clash = request(tmp_path, ["sleep", "30"], kind="workspace", ports=((8888, "127.0.0.1", port),))
        with pytest.raises(RuntimeFailure) as info:
            rt.start_job(clash)
        assert str(port) in str(info.value)
        assert rt.inspect(clash.job_id) is None and set(rt.list_jobs()) == {ws.job_id}
    finally:
        rt.stop(ws.job_id, timeout=1)
        rt.remove(ws.job_id)


def test_start_and_exit_are_reported_as_events(make_runtime, tmp_path):
    rt = make_runtime()
    seen, stop = [], threading.Event()
    watcher = threading.Thread(target=rt.watch, args=(seen.append, stop), daemon=True)
    watcher.start()
    probes: list[str] = []

    def stream_open() -> bool:
        """A probe workload's event has come through (a new probe each poll until one does)."""
        if any(p in seen for p in probes):
            return True
        probe = request(tmp_path, ["sleep", "2"])
        rt.start_job(probe)
        probes.append(probe.job_id)
        return False

    wait_for(stream_open, 30, 0.25, "the event stream to be open")
    req = request(tmp_path, ["sh", "-c", "sleep 1; exit 0"])
    rt.start_job(req)
    ended(rt, req.job_id)
    rt.list_jobs()
    wait_for(lambda: seen.count(req.job_id) >= 2, 30, 0.05, "a start and an exit event")
    stop.set()


def test_an_image_is_built_and_removed_but_not_while_a_container_uses_it(make_runtime, tmp_path):
    rt = make_runtime()
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text("ARG BASE\nFROM ${BASE}\nLABEL org.mlpd.contract=yes\n")
    tag = f"mlpd/contract-{secrets.token_hex(4)}:1"
    lines = list(rt.build_image(str(context), tag, {"BASE": IMAGE}, labels={"org.mlpd.test": "1"}))
    assert lines and rt.image_present(tag) and rt.image_id(tag)
    assert rt.image_labels(tag).get("org.mlpd.test") == "1"
    assert tag in [i["tag"] for i in rt.list_images(prefix="mlpd/contract-")]
    req = request(tmp_path, ["sleep", "30"], image=tag)
    rt.start_job(req)
    try:
        assert rt.remove_image(tag) is False and rt.image_present(tag)  # in use
    finally:
        rt.stop(req.job_id, timeout=1)
        rt.remove(req.job_id)
    assert rt.remove_image(tag) is True and not rt.image_present(tag) and rt.image_id(tag) is None
    assert rt.remove_image(tag) is False


def test_the_engine_describes_itself(make_runtime):
    info = make_runtime().engine_info()
    assert info["version"] and isinstance(info["nvidia"], bool)
    assert info["gateway"] is None or info["gateway"].count(".") == 3  # the host's IPv4 address on mlpd's network


def test_terminate_sends_sigterm_and_returns_at_once_and_the_attempt_is_labelled(make_runtime, tmp_path):
    rt = make_runtime()
    req = request(tmp_path, ["sh", "-c", "echo attempt $MLPD_ATTEMPT; sleep 60"], attempt=3)
    rt.start_job(req)
    assert rt.inspect(req.job_id).labels["mlpd.attempt"] == "3"
    rt.terminate(req.job_id)
    done = ended(rt, req.job_id, timeout=20)
    assert done.exit_code == 143  # SIGTERM's default action, passed on by the init process
    assert "attempt 3" in b"".join(rt.logs(req.job_id)).decode()
    rt.terminate(req.job_id)  # an ended workload: no error
    rt.remove(req.job_id)
    rt.terminate(req.job_id)  # a gone one: no error


def test_an_image_is_made_by_running_a_command_and_a_failed_run_makes_none(make_runtime, tmp_path):
    from mlpd.runtime.protocol import BuildRequest

    rt = make_runtime()
    tag = f"mlpd/contract-{secrets.token_hex(4)}:1"
    build = BuildRequest(base=IMAGE, tag=tag, command=("sh", "-c", "echo building with $MLPD_NOTE; exit 0"), user="1000:1000",
                         directory="/opt/mlpd-contract", files=(("note.txt", "hello\n"),),
                         env={"MLPD_NOTE": "a-note", "PATH": "/opt/mlpd-contract/bin:$PATH"}, labels={"org.mlpd.test": "built"})
    lines = list(rt.build_by_running(build))
    assert "building with a-note" in lines
    assert rt.image_present(tag) and rt.image_labels(tag)["org.mlpd.test"] == "built"
    assert rt.list_jobs() == {}  # a build is no workload
    req = request(tmp_path, ["sh", "-c", "echo note=$MLPD_NOTE path=$PATH"], image=tag)
    rt.start_job(req)
    ended(rt, req.job_id)
    out = b"".join(rt.logs(req.job_id)).decode()
    assert "note=a-note" in out and "path=/opt/mlpd-contract/bin:/" in out, out  # the base's PATH after the build's
    rt.remove(req.job_id)
    assert rt.remove_image(tag)
    failing = BuildRequest(base=IMAGE, tag=tag, command=("sh", "-c", "echo broken; exit 3"), user="1000:1000", directory="/opt/mlpd-contract")
    with pytest.raises(RuntimeFailure) as info:
        list(rt.build_by_running(failing))
    assert "code 3" in str(info.value)
    assert not rt.image_present(tag) and rt.list_jobs() == {}
    with pytest.raises(ImageMissing):
        list(rt.build_by_running(BuildRequest(base=f"mlpd/absent-{secrets.token_hex(3)}:1", tag=tag, command=("true",), user="1000:1000",
                                              directory="/opt/mlpd-contract")))
    endless = BuildRequest(base=IMAGE, tag=tag, command=("sh", "-c", "echo waiting; sleep 600"), user="1000:1000",
                           directory="/opt/mlpd-contract", timeout=3)
    with pytest.raises(RuntimeFailure) as info:
        list(rt.build_by_running(endless))
    assert "took longer than" in str(info.value) and not rt.image_present(tag)


def test_shared_memory_and_ulimits_are_what_the_request_asks_and_the_engine_default_otherwise(make_runtime, tmp_path):
    from mlpd.runtime.protocol import DEEP_LEARNING_ULIMITS

    rt = make_runtime()
    probe = ["sh", "-c", "df -B1 --output=size /dev/shm; ulimit -l; ulimit -s"]
    sized = request(tmp_path, probe, shm_size=256 * 1024**2, ulimits=DEEP_LEARNING_ULIMITS)
    plain = request(tmp_path, probe)
    rt.start_job(sized)
    rt.start_job(plain)
    assert ended(rt, sized.job_id).exit_code == 0 and ended(rt, plain.job_id).exit_code == 0
    lines = b"".join(rt.logs(sized.job_id)).decode().split()
    assert lines[:2] == ["1B-blocks", str(256 * 1024**2)] and lines[3] == "65536"
    # An engine that may not raise memlock (dockerd without CAP_SYS_RESOURCE, as in a container) says so and
    # runs the workload with its own limit rather than failing it.
    refused = rt.engine_info()["refused_ulimits"]
    assert lines[2] == "unlimited" or refused == ["memlock"], (lines, refused)
    lines = b"".join(rt.logs(plain.job_id)).decode().split()
    assert lines[:2] == ["1B-blocks", str(64 * 1024**2)]  # Docker's default, which starves DataLoader workers and NCCL
    assert lines[2] != "unlimited"


def test_a_limit_the_engine_cannot_give_is_reported_and_the_workload_still_runs(make_runtime, tmp_path):
    from mlpd.runtime.protocol import DEEP_LEARNING_ULIMITS

    rt = make_runtime()
    rt.refused_ulimits.add("memlock")  # as an engine that may not raise it finds out at its first start
    req = request(tmp_path, ["sh", "-c", "ulimit -l; ulimit -s"], ulimits=DEEP_LEARNING_ULIMITS)
    rt.start_job(req)
    assert ended(rt, req.job_id).exit_code == 0
    memlock, stack = b"".join(rt.logs(req.job_id)).decode().split()
    assert memlock != "unlimited" and stack == "65536"
    assert rt.engine_info()["refused_ulimits"] == ["memlock"]
