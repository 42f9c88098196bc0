"""Following a log from the file the worker copies the running output to (issue 22): what a
follower reads is the job's whole output, once, in order, across the end of the job and across
a preemption."""

from __future__ import annotations

import textwrap

import requests

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker


def follow(d, token, job_id, **params) -> str:
    with requests.get(f"{d.url}/api/v1/jobs/{job_id}/logs", params={"follow": "1", **params},
                      headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        return b"".join(r.iter_content(None)).decode()


def test_a_follower_reads_every_line_once_in_order_while_the_job_writes_fast(make_daemon):
    d = make_daemon()
    _, token = new_user(d)
    script = "for i in $(seq 1 5000); do echo line $i; done; sleep 2; echo end"
    job_id = as_json(d.cli("run", "--no-code", "--json", "--", "sh", "-c", script, token=token))["job"]["id"]
    wait_for(lambda: d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] in ("running", "succeeded"), 60, 0.1, "the job to run")
    text = follow(d, token, job_id)
    assert text.splitlines() == [f"line {i}" for i in range(1, 5001)] + ["end"]
    assert d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] == "succeeded"
    # stamped, as saved
    stamped = follow(d, token, job_id, timestamps="1").splitlines()
    assert len(stamped) == 5001 and stamped[-1].endswith("Z end") and stamped[0][:4].isdigit()


CHECKPOINTING = textwrap.dedent("""\
    import os, signal, sys, time
    attempt = os.environ["MLPD_ATTEMPT"]
    ck = "/outputs/checkpoint"
    if os.path.exists(ck):
        print("resumed in attempt", attempt, flush=True)
        sys.exit(0)
    def on_term(*_):
        open(ck, "w").write(attempt)
        print("checkpoint written by attempt", attempt, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("attempt", attempt, "training", flush=True)
    while True:
        time.sleep(0.1)
""")


def test_a_follower_goes_on_across_a_preemption_to_the_next_attempt(make_daemon, tmp_path):
    cfg = tmp_path / "mlpd.toml"
    cfg.write_text('[scheduler]\npreempt_after = "0"\npreempt_grace = "30s"\npriority_class_users = {production = ["team:prod"]}\n')
    d = make_daemon(["--declare-gpus", "1"], config_file=cfg)
    _, alice_token = new_user(d, "alice")
    bob, bob_token = new_user(d, "bob")
    for args in (["team", "add", "prod"], ["team", "member", "add", "prod", bob]):
        assert d.cli("admin", *args).returncode == 0
    train = as_json(d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "preemptible", "--json", "--",
                          "python3", "-c", CHECKPOINTING, token=alice_token))["job"]["id"]
    wait_for(lambda: "training" in d.api("GET", f"/api/v1/jobs/{train}/logs", alice_token).text, 60, 0.2, "attempt 1 to train")
    import threading

    out: list[str] = []
    follower = threading.Thread(target=lambda: out.append(follow(d, alice_token, train)))
    follower.start()
    d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "production", "--", "sh", "-c", "sleep 2", token=bob_token)
    follower.join(120)
    assert out, "the follower did not end with the job"
    assert out[0].splitlines() == ["attempt 1 training", "checkpoint written by attempt 1",
                                   "--- attempt 1 was preempted; attempt 2 waits in the queue ---", "resumed in attempt 2"]
