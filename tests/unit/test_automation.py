"""Dependencies between jobs and schedules (mlpd.automation), on a real SQLite state database with a moved clock.

The worker's automation pass is called directly with `now`; jobs run to their end in the
in-memory runtime through the real controller, so what a dependency sees is a real job end.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from mlpd import jobs, users
from mlpd.automation import cron, dependencies, schedules
from mlpd.automation.dependencies import DependencyError
from mlpd.automation.passes import AutomationPass
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0  # 2027-01-15 08:00 UTC


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def world(tmp_path):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": ""})
    store = Store(cfg.db_path)
    store.migrate()
    users.add_user(store, "alice")
    clock = Clock()
    runtime = MemoryRuntime("test", clock=clock)

    class World:
        controller = JobController(store, cfg, runtime, make_inventory(0, "declared"), clock=clock)
        automation = AutomationPass(store, cfg)

        def submit(self, command, after=(), owner="alice"):
            spec, _ = parse_spec({"command": command})
            clock.advance(0.001)
            return dependencies.submit(store, owner, spec, [], list(after))["id"]

        def step(self):
            """What the worker does each pass: release and fire, then reconcile (the memory runtime ends jobs at once)."""
            self.automation.run(now=clock())
            self.controller.reconcile(now=clock())
            self.automation.run(now=clock())

        def state(self, job_id):
            return jobs.get(store, job_id)["state"]

        def reason(self, job_id):
            return jobs.get(store, job_id)["reason"]

    w = World()
    w.store, w.config, w.clock = store, cfg, clock
    return w


# ---------------------------------------------------------------- dependencies

def test_after_refs_are_parsed_with_ok_by_default_and_refused_clearly():
    assert dependencies.parse_after(["a" * 12, "b" * 12 + ":any", "c" * 12 + ":ok"]) == [("a" * 12, "ok"), ("b" * 12, "any"), ("c" * 12, "ok")]
    with pytest.raises(DependencyError, match="named twice"):
        dependencies.parse_after(["a" * 12, "a" * 12 + ":any"])
    with pytest.raises(DependencyError, match="not a job id"):
        dependencies.parse_after(["a" * 12 + ":maybe"])
    with pytest.raises(DependencyError, match="expected a list"):
        dependencies.parse_after(3)


def test_only_existing_jobs_the_submitter_may_see_can_be_named(world):
    users.add_user(world.store, "bob")
    bobs = world.submit(["true"], owner="bob")
    with pytest.raises(DependencyError, match="no such job") as exc:
        dependencies.check_visible(world.store, [(bobs, "ok")], "alice", False)
    assert exc.value.status == 404
    with pytest.raises(DependencyError, match="no such job"):
        dependencies.check_visible(world.store, [("0" * 12, "ok")], "alice", False)
    dependencies.check_visible(world.store, [(bobs, "ok")], "admin", True)  # admins see every job


def test_a_chain_runs_in_order_and_a_failure_cancels_the_rest_naming_it(world):
    first = world.submit(["sleep", "60"])
    second = world.submit(["sh", "-c", "exit 3"], after=[(first, "ok")])
    third = world.submit(["true"], after=[(second, "ok")])
    assert world.state(second) == "waiting" and world.reason(second) == f"waiting for job {first}"
    world.step()
    assert world.state(first) == "running" and world.state(second) == "waiting" and world.state(third) == "waiting"
    jobs.request_cancel(world.store, first, "alice")  # cancelled: second (:ok) is cancelled, naming it
    world.step()
    world.step()
    assert world.state(second) == "cancelled"
    assert first in world.reason(second) and "cancelled" in world.reason(second)
    assert world.state(third) == "cancelled" and second in world.reason(third)
    assert [e["action"] for e in jobs.history(world.store, second)] == ["job.waiting", "job.cancelled"]


def test_ok_waits_for_success_and_any_for_any_end(world):
    fails = world.submit(["sh", "-c", "exit 1"])
    on_ok = world.submit(["true"], after=[(fails, "ok")])
    on_any = world.submit(["true"], after=[(fails, "any")])
    for _ in range(3):
        world.step()
    assert world.state(fails) == "failed"
    assert world.state(on_ok) == "cancelled" and "exited with code 1" in world.reason(on_ok)
    assert world.state(on_any) == "succeeded"


def test_a_job_waiting_for_two_enters_the_queue_when_both_succeeded(world):
    a, b = world.submit(["true"]), world.submit(["sleep", "30"])
    c = world.submit(["true"], after=[(a, "ok"), (b, "ok")])
    world.step()
    assert world.state(a) == "succeeded" and world.state(c) == "waiting" and world.reason(c) == f"waiting for job {b}"
    world.clock.advance(31)
    world.step()
    world.step()
    assert world.state(b) == "succeeded" and world.state(c) == "succeeded"


def test_a_waiting_job_can_be_cancelled_and_is_never_scheduled(world):
    a = world.submit(["sleep", "60"])
    b = world.submit(["true"], after=[(a, "any")])
    jobs.request_cancel(world.store, b, "alice")
    assert world.state(b) == "cancelled"
    jobs.request_cancel(world.store, a, "alice")
    world.step()
    world.step()
    assert world.state(b) == "cancelled" and jobs.get(world.store, b)["started_at"] is None


# ---------------------------------------------------------------- cron

def at(text: str, tz: str = "UTC") -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=cron.zone(tz)).timestamp()


def test_cron_next_times_in_a_time_zone_and_across_months():
    c = cron.parse("0 3 * * *")
    assert cron.next_after(c, at("2027-01-15T02:59"), cron.zone("UTC")) == at("2027-01-15T03:00")
    assert cron.next_after(c, at("2027-01-15T03:00"), cron.zone("UTC")) == at("2027-01-16T03:00")
    assert cron.next_after(c, at("2027-01-15T12:00"), cron.zone("Europe/Berlin")) == at("2027-01-16T03:00", "Europe/Berlin")
    assert cron.next_after(cron.parse("*/15 * * * *"), at("2027-01-15T10:07"), cron.zone("UTC")) == at("2027-01-15T10:15")
    assert cron.next_after(cron.parse("0 0 29 feb *"), at("2027-01-01T00:00"), cron.zone("UTC")) == at("2028-02-29T00:00")
    assert cron.next_after(cron.parse("@weekly"), at("2027-01-15T00:00"), cron.zone("UTC")) == at("2027-01-17T00:00")  # a Sunday
    # both day fields restricted: either day runs (the 1st, or a Monday)
    c = cron.parse("0 0 1 * mon")
    assert cron.next_after(c, at("2027-01-15T00:00"), cron.zone("UTC")) == at("2027-01-18T00:00")
    assert cron.next_after(c, at("2027-01-25T00:00"), cron.zone("UTC")) == at("2027-02-01T00:00")
    assert cron.next_after(cron.parse("0 0 30 2 *"), at("2027-01-01T00:00"), cron.zone("UTC")) is None


def test_cron_skips_a_wall_time_that_daylight_saving_skips():
    tz = cron.zone("Europe/Berlin")  # 2027-03-28 02:00 -> 03:00
    assert cron.next_after(cron.parse("30 2 * * *"), at("2027-03-27T03:00", "Europe/Berlin"), tz) == at("2027-03-29T02:30", "Europe/Berlin")


@pytest.mark.parametrize("text,message", [
    ("0 3 * *", "has 4 fields"), ("60 * * * *", "minute: 60 is out of range"), ("* 25 * * *", "hour: 25"),
    ("*/0 * * * *", "step"), ("5-1 * * * *", "backwards"), ("* * * foo *", "month: 'foo' is not a number"), ("", "expected an expression"),
])
def test_cron_refuses_bad_expressions_naming_the_field(text, message):
    with pytest.raises(cron.CronError, match=message):
        cron.parse(text)


def test_unknown_time_zones_are_refused():
    for name in ("Mars/Olympus", "../etc/passwd", ""):
        with pytest.raises(cron.CronError, match="unknown time zone"):
            cron.zone(name)


# ---------------------------------------------------------------- schedules

def make_schedule(world, name="nightly", cron_text="* * * * *", command=("sleep", "90"), **options):
    spec, _ = parse_spec({"command": list(command)})
    return schedules.create(world.store, "alice", name, cron_text, "UTC", spec.to_dict(), now=world.clock(), **options)


def runs_of(world, name="nightly"):
    return list(reversed(schedules.runs(world.store, schedules.get(world.store, "alice", name)["id"])))


def test_a_schedule_fires_once_per_due_time_however_often_the_worker_looks(world):
    make_schedule(world, command=("true",))
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 0
    due = (int(world.clock() // 60) + 1) * 60
    world.clock.now = due + 2
    fired, next_due = schedules.fire_due(world.store, world.config, world.clock())
    assert fired == 1 and next_due == due + 60
    for _ in range(5):
        assert schedules.fire_due(world.store, world.config, world.clock.advance(5))[0] == 0
    [run] = runs_of(world)
    assert run["outcome"] == "fired" and run["due_at"] == due
    job = jobs.get(world.store, run["job_id"])
    assert job["owner"] == "alice" and job["state"] == "queued"
    assert schedules.job_ids(world.store, "alice", "nightly") == [run["job_id"]]


def test_overlap_skip_is_the_default_and_says_so(world):
    make_schedule(world)
    world.clock.now = (int(world.clock() // 60) + 1) * 60 + 1
    world.step()  # fires; the job runs (sleep 90)
    world.clock.advance(60)
    world.step()
    fired, skipped = runs_of(world)
    assert fired["outcome"] == "fired" and world.state(fired["job_id"]) == "running"
    assert skipped["outcome"] == "skipped" and skipped["job_id"] is None
    assert skipped["detail"] == f"skipped: the previous run {fired['job_id']} still runs (--overlap skip)"


def test_overlap_queue_waits_for_the_previous_run_and_replace_cancels_it(world):
    make_schedule(world, name="q", overlap="queue")
    make_schedule(world, name="r", overlap="replace")
    world.clock.now = (int(world.clock() // 60) + 1) * 60 + 1
    world.step()
    world.clock.advance(60)
    world.step()
    q1, q2 = runs_of(world, "q")
    assert world.state(q1["job_id"]) == "running" and world.state(q2["job_id"]) == "waiting"
    assert world.reason(q2["job_id"]) == f"waiting for job {q1['job_id']}"
    r1, r2 = runs_of(world, "r")
    world.step()
    assert world.state(r1["job_id"]) == "cancelled" and "replaced by the next run of schedule r" in world.reason(r1["job_id"])
    assert world.state(r2["job_id"]) == "running"


def test_missed_due_times_give_one_catch_up_run_or_none(world):
    make_schedule(world, name="one", command=("true",))
    make_schedule(world, name="none", command=("true",), catch_up="none")
    world.clock.advance(10 * 60 + 30)  # the daemon was down for ten due times
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 1
    assert schedules.fire_due(world.store, world.config, world.clock.advance(1))[0] == 0
    [caught] = runs_of(world, "one")
    assert caught["outcome"] == "catch-up" and caught["job_id"] and "missed while the daemon was down" in caught["detail"]
    [missed] = runs_of(world, "none")
    assert missed["outcome"] == "missed" and missed["job_id"] is None


def test_a_restart_never_fires_a_due_time_twice(world):
    make_schedule(world, command=("true",))
    world.clock.now = (int(world.clock() // 60) + 1) * 60 + 1
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 1
    fresh = AutomationPass(Store(world.config.db_path), world.config)  # a new worker process on the same database
    assert fresh.run(now=world.clock()) is False
    assert len(runs_of(world)) == 1


def test_pause_resume_and_a_removed_owner_stops_the_schedule(world):
    s = make_schedule(world, command=("true",))
    schedules.set_paused(world.store, s, True, "alice", now=world.clock())
    world.clock.advance(300)
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 0 and runs_of(world) == []
    s = schedules.set_paused(world.store, s, False, "alice", now=world.clock())
    assert s["last_due"] == world.clock()  # what fell due while paused is not caught up
    world.clock.now = (int(world.clock() // 60) + 1) * 60 + 1
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 1
    users.remove_user(world.store, "alice")
    world.clock.advance(60)
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 0
    assert schedules.get(world.store, "alice", "nightly")["stopped"] == "stopped: its owner alice was removed"


def test_a_run_over_its_owners_quota_is_refused_and_recorded(world):
    from mlpd.scheduling import quotas

    spec, _ = parse_spec({"command": ["train"], "gpus": 2})
    schedules.create(world.store, "alice", "big", "* * * * *", "UTC", spec.to_dict(), now=world.clock())
    quotas.set_quota(world.store, "user", "alice", None, 1, "admin")  # set after the schedule was made: checked at each run
    world.clock.now = (int(world.clock() // 60) + 1) * 60 + 1
    assert schedules.fire_due(world.store, world.config, world.clock())[0] == 0
    [run] = runs_of(world, "big")
    assert run["outcome"] == "refused" and run["job_id"] is None and "concurrent GPU quota of user alice is 1" in run["detail"]
    assert world.store.query("SELECT COUNT(*) AS n FROM jobs")[0]["n"] == 0


def test_bad_schedules_are_refused_and_add_nothing(world):
    spec = parse_spec({"command": ["true"]})[0].to_dict()
    for args, message in ((("bad name!", "* * * * *", "UTC"), "name:"), (("n", "* * *", "UTC"), "3 fields"),
                          (("n", "* * * * *", "Nowhere/City"), "unknown time zone")):
        with pytest.raises(Exception, match=message):
            schedules.create(world.store, "alice", *args, spec)
    with pytest.raises(schedules.ScheduleError, match="overlap"):
        schedules.create(world.store, "alice", "n", "* * * * *", "UTC", spec, overlap="sometimes")
    make_schedule(world, name="n")
    with pytest.raises(schedules.ScheduleError, match="exists already") as exc:
        make_schedule(world, name="n")
    assert exc.value.status == 409
    assert [s["name"] for s in schedules.list_schedules(world.store)] == ["n"]


def test_retention_keeps_the_code_a_schedule_runs(world, tmp_path):
    import os

    from mlpd import retention

    digest = "c" * 64
    os.makedirs(jobs.code_dir(world.config.state_dir, digest))
    jobs.grant_code(world.store, digest, "alice")
    spec, _ = parse_spec({"command": ["python", "train.py"], "code": digest})
    schedules.create(world.store, "alice", "monthly", "0 0 1 * *", "UTC", spec.to_dict(), now=world.clock())
    later = world.clock() + 400 * 86400  # long past retention.code_days, and no job used it since
    assert retention.plan(world.store, world.config.state_dir, 30, 30, now=later).code == []
    schedules.remove(world.store, schedules.get(world.store, "alice", "monthly"), "alice")
    assert retention.plan(world.store, world.config.state_dir, 30, 30, now=later).code == [digest]


def test_a_long_downtime_gives_one_catch_up_and_then_runs_on_time():
    year = 365 * 86400
    due, how = schedules.plan_firing(T0, T0 + year + 30, "* * * * *", "UTC", "one")
    assert how == "catch-up" and T0 + year - 60 < due <= T0 + year + 30
    # once that is handled, the next minute fires as usual
    assert schedules.plan_firing(due, due + 61, "* * * * *", "UTC", "one") == (due + 60, "fire")
    assert schedules.plan_firing(T0, T0 + year, "0 3 1 1 *", "UTC", "none")[1] == "missed"
