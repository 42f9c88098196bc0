"""mlpd doctor's checks, on the in-memory runtime and a real state directory: what is ok, what blocks work, and the fix."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mlpd.config import load_config
from mlpd.ops.doctor import FAIL, OK, WARN, as_json, run_checks
from mlpd.runtime.memory import MemoryRuntime

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")


def checks_by_name(tmp_path, images=("mlpd/train:latest",), **overrides):
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    cfg = load_config(SHIPPED, {"server.state_dir": str(state), "server.listen": "127.0.0.1:9", **overrides})
    runtime = MemoryRuntime("doc", images=images)
    return {c.name: c for c in run_checks(cfg, runtime_factory=lambda *a: runtime)}, cfg


def test_a_missing_image_blocks_work_and_says_how_to_build_it(tmp_path):
    checks, _ = checks_by_name(tmp_path, images=())
    image = checks["image mlpd/train:latest"]
    assert image.status == FAIL and "mlpd images build" in image.fix
    assert checks["docker engine"].status == OK and "in-memory" in checks["docker engine"].detail
    assert checks["daemon"].status == WARN and "nothing answers" in checks["daemon"].detail
    assert as_json(list(checks.values()))["ok"] is False


def test_state_permissions_declared_gpus_and_the_clock(tmp_path):
    checks, cfg = checks_by_name(tmp_path, **{"gpus.declare": 2})
    assert checks["state directory"].status == OK and checks["free disk"].status in (OK, WARN)
    assert checks["gpus"].status == WARN and "declared" in checks["gpus"].detail
    assert checks["clock"].status == OK
    os.chmod(cfg.state_dir, 0o755)
    checks, _ = checks_by_name(tmp_path)
    assert checks["state directory"].status == WARN and "chmod 700" in checks["state directory"].fix
    # an image built from other sources than this mlpd's is current no longer
    assert checks["image mlpd/train:latest"].status == WARN and "rebuild" in checks["image mlpd/train:latest"].fix


def test_an_upgraded_config_whose_age_weight_fair_share_outweighs_gets_a_warning_and_the_fix(tmp_path):
    checks, _ = checks_by_name(tmp_path)
    assert checks["scheduler"].status == OK  # the shipped mlpd.toml
    checks, _ = checks_by_name(tmp_path, **{"scheduler.weight_age": 1000, "scheduler.max_age": "7d"})  # 0.1's values
    assert checks["scheduler"].status == WARN and "max_age (7d)" in checks["scheduler"].detail
    assert "scheduler.weight_age = 4000" in checks["scheduler"].fix
    checks, _ = checks_by_name(tmp_path, **{"scheduler.weight_age": 1000, "scheduler.weight_slowdown": 0})
    assert checks["scheduler"].status == OK  # usage alone (100) cannot hold an old job back
    checks, _ = checks_by_name(tmp_path, **{"scheduler.weight_age": 0, "scheduler.fair_share": False})
    assert checks["scheduler"].status == OK



def test_a_state_directory_under_tmp_gets_a_warning_that_the_unit_cannot_use_it():
    lasting = "/var/lib" if os.access("/var/lib", os.W_OK) else str(Path.home())
    tops = [Path(tempfile.mkdtemp(prefix="mlpd-doctor-test-", dir=d)) for d in ("/tmp", "/var/tmp", lasting)]
    try:
        for top in tops[:2]:
            checks, _ = checks_by_name(top)
            assert checks["state location"].status == WARN and "PrivateTmp" in checks["state location"].detail
            assert "/var/lib/mlpd" in checks["state location"].fix
        checks, _ = checks_by_name(tops[2])
        assert "state location" not in checks and checks["state directory"].status == OK
    finally:
        for top in tops:
            shutil.rmtree(top, ignore_errors=True)


PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
cloudsdk:x:1000:1000::/home/cloudsdk:/bin/bash
olduser:x:1001:1001::/home/olduser:
mlpd-jobs:x:998:998:mlpd jobs:/nonexistent:/usr/sbin/nologin
ghost:x:997:997::/:/bin/false
"""


def test_a_job_uid_that_is_a_login_account_fails_with_the_fix_and_a_no_login_or_unused_one_is_ok():
    from mlpd.ops.doctor import job_user_check

    login = job_user_check("1000:1000", PASSWD)
    assert login.status == FAIL and "cloudsdk" in login.detail and "/proc/PID/environ" in login.detail
    assert "install.sh" in login.fix and "jobs.container_user" in login.fix and "mlpd images build" in login.fix
    assert job_user_check("1001:1001", PASSWD).status == FAIL  # an empty shell is /bin/sh
    for uid in ("998:998", "997:997"):
        check = job_user_check(uid, PASSWD)
        assert check.status == OK and "no login" in check.detail, check
    unused = job_user_check("65200:65200", PASSWD)
    assert unused.status == OK and "no host account" in unused.detail


def test_the_shipped_job_uid_is_no_login_account_on_this_host(tmp_path):
    checks, cfg = checks_by_name(tmp_path)
    assert cfg["jobs.container_user"] == "65200:65200"
    assert checks["job uid"].status == OK, checks["job uid"]


def test_a_container_listen_address_off_mlpds_network_gets_a_warning_and_the_fix(tmp_path):
    from mlpd.ops.doctor import container_network_check

    assert container_network_check("auto", "10.77.0.1").status == OK and "10.77.0.1" in container_network_check("auto", "10.77.0.1").detail
    assert container_network_check("10.77.0.1:8470", "10.77.0.1").status == OK
    stale = container_network_check("172.17.0.1", "10.77.0.1")  # pinned to docker0 before mlpd had its own network
    assert stale.status == WARN and "cannot reach the daemon" in stale.detail and 'container_listen = "auto"' in stale.fix
    assert container_network_check("auto", None) is None  # the in-memory runtime has no network
    checks, _ = checks_by_name(tmp_path)
    assert "container network" not in checks
