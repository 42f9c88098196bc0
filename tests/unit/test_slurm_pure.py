"""The Slurm runtime's pure parts: sbatch's arguments, the batch script, the state table, the
comment that links a Slurm job to its mlpd job; and [slurm] in the config and 'on' in the spec."""

from __future__ import annotations

import subprocess

import pytest

from mlpd.config import ConfigError, load_config
from mlpd.kinds.jobspec import SpecError, parse_spec
from mlpd.runtime.protocol import LaunchRequest, Phase
from mlpd.runtime.slurm import (SlurmSettings, batch_script, comment_of, job_of_comment, runs_on_slurm, sbatch_args, slurm_minutes,
                                status_from_slurm)

REQ = LaunchRequest(job_id="abc123def4567890", owner="alice", image="mlpd/train:latest", command=("python", "-c", "print('it''s')"),
                    env={"MLPD_TOKEN": "t0k", "MULTI": "a\nb $HOME `x`"}, gpu_uuids=(), cpus=1.5, memory=3 * 1024**3 + 1,
                    user="65200:65200", code_dir="/state/code/x", outputs_dir="/state/jobs/abc/outputs", gpus=2, time_limit=90.0)


def test_sbatch_arguments_carry_the_job_s_resources_and_its_comment():
    settings = SlurmSettings(partition="gpu", account="ml", shared_dir="/shared", sbatch_extra=("--qos=normal",))
    args = sbatch_args(REQ, settings, "inst1", 2, "/shared/mlpd-inst1/abc/attempt-1")
    assert args[0] == "sbatch" and args[-1] == "/shared/mlpd-inst1/abc/attempt-1/job.sh"
    assert "--gres=gpu:2" in args
    assert "--time=2" in args  # 90 s is rounded up to whole minutes
    assert "--mem=3073M" in args  # rounded up, never less than the container's limit
    assert "--cpus-per-task=2" in args
    assert "--comment=mlpd:inst1:abc123def4567890" in args
    assert "--job-name=mlpd-abc123def456" in args
    assert "--partition=gpu" in args and "--account=ml" in args
    assert "--export=NONE" in args  # the daemon's own environment never reaches the job
    assert args.index("--qos=normal") == len(args) - 2  # the site's extras after mlpd's own, before the script


def test_sbatch_without_gpus_time_or_limits_asks_for_none():
    args = sbatch_args(LaunchRequest(job_id="j", owner="o", image="i", command=("true",), env={}, gpu_uuids=(), cpus=None, memory=None,
                                     user="1:1", code_dir=None, outputs_dir="/o"), SlurmSettings(shared_dir="/s"), "i", 0, "/s/d")
    assert not [a for a in args if a.startswith(("--gres", "--time", "--mem", "--cpus-per-task", "--partition", "--account"))]


@pytest.mark.parametrize("seconds,minutes", [(1, "1"), (60, "1"), (61, "2"), (3600, "60")])
def test_time_limits_become_whole_minutes_rounded_up(seconds, minutes):
    assert slurm_minutes(seconds) == minutes


def test_the_batch_script_runs_the_container_and_keeps_values_whole(tmp_path):
    script = batch_script(REQ, "/shared/d", "/shared/d/code")
    assert "trap 'docker stop -t 10 mlpd-slurm-abc123def4567890-1" in script
    # after the container's client ends, whatever is left of the container goes (a cancel during its start)
    assert script.index("docker rm -f mlpd-slurm-abc123def4567890-1") > script.index("wait $pid")
    assert "--cap-drop ALL" in script and "--user 65200:65200" in script and "-v /shared/d/code:/code:ro" in script
    assert "CUDA_VISIBLE_DEVICES=" not in script.split("gpus=()")[0]  # Slurm's GPUs, not a value mlpd wrote
    # the script is valid bash, and its exports give back each value exactly (quotes, newlines, $ and backticks)
    exports = script.split("set -u\n", 1)[1].split("gpus=()", 1)[0].split("\n", 1)[1]  # after the cd: the exports
    out = subprocess.run(["bash", "-c", exports + "\nprintf '%s|' \"$MULTI\" \"$MLPD_TOKEN\" \"$MLPD_JOB_ID\""], capture_output=True, text=True)
    assert out.stdout == "a\nb $HOME `x`|t0k|abc123def4567890|"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def _record(state, exit_code=0, reason="None", **kw):
    return {"job_id": 7, "job_state": state, "exit_code": exit_code, "state_reason": reason, "start_time": 100, "end_time": 160, **kw}


@pytest.mark.parametrize("state", ["PENDING", "CONFIGURING", "REQUEUED", "SUSPENDED"])
def test_waiting_states_are_pending_with_slurm_s_reason(state):
    s = status_from_slurm("j", _record(state, reason="Resources"), None)
    assert s.phase == Phase.PENDING and s.error == f"waiting in Slurm ({state.lower()}: Resources)" and s.started_at is None


@pytest.mark.parametrize("state", ["RUNNING", "COMPLETING"])
def test_running_states_are_running(state):
    s = status_from_slurm("j", _record(state), None)
    assert s.phase == Phase.RUNNING and s.started_at == 100 and not s.ended


@pytest.mark.parametrize("state,raw,written,code,error", [
    ("COMPLETED", 0, 0, 0, ""),
    ("FAILED", 3 << 8, 3, 3, ""),  # the script's own record wins, and says the same
    ("FAILED", 3 << 8, None, 3, ""),  # Slurm's wait status: code << 8
    ("FAILED", 9, None, 137, ""),  # killed by signal 9
    ("CANCELLED", 15, 143, 143, "cancelled in Slurm (scancel)"),
    ("TIMEOUT", 15, None, 143, "Slurm's time limit"),
    ("NODE_FAIL", 0, None, 0, "its Slurm node failed"),
    ("OUT_OF_MEMORY", 9, None, 137, "out of memory (Slurm)"),
])
def test_ended_states_carry_the_exit_code_and_why(state, raw, written, code, error):
    s = status_from_slurm("j", _record(state, raw), written)
    assert s.ended and s.exit_code == code and s.finished_at == 160 and s.error == error
    assert s.oom_killed == (state == "OUT_OF_MEMORY")
    assert s.labels["slurm_state"] == state and s.labels["slurm_job_id"] == "7"


def test_a_state_slurm_adds_later_counts_as_running_never_as_an_end():
    assert status_from_slurm("j", _record("SOMETHING_NEW"), None).phase == Phase.RUNNING


def test_the_comment_names_the_job_only_for_its_own_daemon():
    assert job_of_comment("inst", comment_of("inst", "abc")) == "abc"
    assert job_of_comment("other", comment_of("inst", "abc")) is None
    assert job_of_comment("inst", "mlpd:inst:") is None and job_of_comment("inst", "") is None


def test_on_is_validated_and_kept():
    assert parse_spec({"command": ["true"], "on": "slurm"})[0].on == "slurm"
    assert parse_spec({"command": ["true"]})[0].on is None
    with pytest.raises(SpecError, match="on: expected where the job runs, 'local' or 'slurm', got 'moon'"):
        parse_spec({"command": ["true"], "on": "moon"})
    assert runs_on_slurm({"spec": {"on": "slurm"}}) and not runs_on_slurm({"spec": {"on": "local"}}) and not runs_on_slurm({"spec": {}})


def _config(tmp_path, text):
    path = tmp_path / "mlpd.toml"
    path.write_text(text)
    return load_config(str(path))


def test_slurm_config_is_checked_as_a_whole(tmp_path):
    assert _config(tmp_path, "")["slurm.enabled"] is False
    with pytest.raises(ConfigError, match="slurm.default_on: is 'slurm' but slurm.enabled is false"):
        _config(tmp_path, '[slurm]\ndefault_on = "slurm"\n')
    with pytest.raises(ConfigError, match="slurm.shared_dir: must be an absolute path"):
        _config(tmp_path, "[slurm]\nenabled = true\n")
    with pytest.raises(ConfigError, match="slurm.sbatch_extra: expected a list of sbatch options"):
        _config(tmp_path, '[slurm]\nsbatch_extra = ["x"]\n')
    with pytest.raises(ConfigError, match="slurm.default_on"):
        _config(tmp_path, '[slurm]\ndefault_on = "moon"\n')
    cfg = _config(tmp_path, '[slurm]\nenabled = true\nshared_dir = "/shared"\ndefault_on = "slurm"\n')
    assert cfg["slurm.default_on"] == "slurm"


@pytest.mark.parametrize("record,gpus", [({"tres_per_node": "gres:gpu:2"}, 2), ({"tres_per_node": "gres:gpu:a100:4"}, 4),
                                         ({"tres_per_job": "gres/gpu=3"}, 3), ({"tres_per_node": ""}, 0), ({}, 0),
                                         ({"tres_per_node": "gres:mps:100"}, 0)])
def test_a_slurm_job_s_gpus_are_read_from_its_trackable_resources(record, gpus):
    from mlpd.runtime.slurm import gpus_of

    assert gpus_of(record) == gpus


def test_a_running_gpu_job_reports_its_gpus_for_the_ledger_and_a_pending_one_none():
    running = status_from_slurm("j", _record("RUNNING", tres_per_node="gres:gpu:2"), None)
    assert running.labels["mlpd.gpu_uuids"] == "slurm-7-gpu0,slurm-7-gpu1"
    assert "mlpd.gpu_uuids" not in status_from_slurm("j", _record("PENDING", tres_per_node="gres:gpu:2", start_time=0), None).labels


def test_sinfo_nodes_carry_state_flags_reason_gpus_and_cpus():
    from mlpd.runtime.slurm import nodes_from_sinfo

    answer = {"nodes": [{"name": "n2", "state": "IDLE", "state_flags": ["DRAIN"], "reason": "fan", "partitions": ["gpu"],
                         "gres": "gpu:a100:4(S:0-1)", "gres_used": "gpu:a100:1(IDX:0)", "cpus": 64, "alloc_cpus": 8},
                        {"name": "n1", "state": "down", "gres": "", "cpus": 8}]}
    assert nodes_from_sinfo(answer) == [
        {"name": "n1", "state": "down", "reason": "", "partitions": [], "gpus": 0, "gpus_used": 0, "cpus": 8, "cpus_used": 0},
        {"name": "n2", "state": "idle+drain", "reason": "fan", "partitions": ["gpu"], "gpus": 4, "gpus_used": 1, "cpus": 64, "cpus_used": 8}]
