"""Datasets (issue 25): which host paths an admin may declare, who reads which, the audit trail, a
symlink swapped after the add refused at launch, and the disk quotas of homes and team folders.
Real directories and links in a temporary directory, a real SQLite state database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlpd import datasets, disk_use
from mlpd.config import ConfigError, load_config
from mlpd.datasets import DatasetError, check_path
from mlpd.runtime.protocol import RuntimeFailure
from mlpd.store import Store
from mlpd.users import add_user

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")


def world(tmp_path, **overrides):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "docker.host": "unix:///var/run/docker.sock",
                                          **overrides})
    os.makedirs(cfg.state_dir, exist_ok=True)
    store = Store(cfg.db_path)
    store.migrate()
    for name in ("ann", "ben", "cat"):
        add_user(store, name, "member")
    with store.write() as db:
        db["teams"].insert({"name": "vision", "created_at": 0})
        db["team_members"].insert({"team": "vision", "user": "ann"})
    return cfg, store


def events(store, action):
    return store.query("SELECT * FROM events WHERE action = ? ORDER BY id", [action])


# ------------------------------------------------------------------ refused paths
@pytest.mark.parametrize("path,message", [
    ("/", "is the host's root directory"),
    ("/etc", "is /etc (/etc)"),
    ("/etc/ssl", "is under /etc"),
    ("/proc", "is /proc"),
    ("/sys/kernel", "is under /sys"),
    ("/dev", "is /dev"),
    ("/boot", "/boot"),
    ("/var/run", "the Docker socket's directory"),
    ("/var", "contains"),
    ("/var/lib/docker", "is /var/lib/docker"),  # the engine's images and volumes (Docker runs on every machine the tests run on)
])
def test_system_paths_are_refused_with_the_reason(tmp_path, path, message):
    if not os.path.isdir(path):
        pytest.fail(f"{path} is not a directory on this machine: the case cannot check what it means to")
    with pytest.raises(DatasetError) as caught:
        check_path(path, str(tmp_path / "state"))
    assert caught.value.status == 400 and message in caught.value.message, caught.value.message


def test_the_state_directory_under_it_and_above_it_are_refused(tmp_path):
    state = tmp_path / "state"
    (state / "homes" / "ann").mkdir(parents=True)
    for path, words in ((state, "is the state directory"), (state / "homes" / "ann", "is under the state directory"),
                        (tmp_path, "contains the state directory")):
        with pytest.raises(DatasetError) as caught:
            check_path(str(path), str(state))
        assert words in caught.value.message, caught.value.message


def test_missing_files_and_relative_paths_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    for path, words in ((str(tmp_path / "nothing"), "does not exist"), (str(tmp_path / "file"), "is not a directory"),
                        ("data/imagenet", "is not absolute")):
        with pytest.raises(DatasetError) as caught:
            check_path(path, str(tmp_path / "state"))
        assert words in caught.value.message


def test_a_symlink_to_a_refused_directory_is_refused_and_says_where_it_leads(tmp_path):
    (tmp_path / "innocent").symlink_to("/etc")
    with pytest.raises(DatasetError) as caught:
        check_path(str(tmp_path / "innocent"), str(tmp_path / "state"))
    assert "through a symlink it resolves to /etc" in caught.value.message and "under" not in caught.value.message.split("(")[0]


def test_a_docker_socket_elsewhere_has_its_directory_refused(tmp_path):
    sock_dir = tmp_path / "dockerd"
    sock_dir.mkdir()
    with pytest.raises(DatasetError, match="the Docker socket's directory"):
        check_path(str(sock_dir), str(tmp_path / "state"), f"unix://{sock_dir}/docker.sock")
    assert check_path(str(sock_dir), str(tmp_path / "state")) == str(sock_dir)  # not the engine's: an ordinary directory


def test_a_plain_data_directory_resolves_to_itself(tmp_path):
    (tmp_path / "data" / "imagenet").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    assert check_path(str(tmp_path / "link" / "imagenet"), str(tmp_path / "state")) == str(tmp_path / "data" / "imagenet")


# ------------------------------------------------------------------ declaring, reading, auditing
def test_add_list_and_remove_are_audited_and_refusals_store_nothing(tmp_path):
    cfg, store = world(tmp_path)
    (tmp_path / "imagenet").mkdir()
    d = datasets.add(store, cfg, "imagenet", str(tmp_path / "imagenet"), ["vision"], ["cat"], False, "root")
    assert d.mount_path == "/datasets/imagenet" and d.teams == ("vision",) and d.users == ("cat",)
    assert events(store, "dataset.added")[0]["actor"] == "root"

    for args, code in ((("imagenet", str(tmp_path / "imagenet"), [], []), "exists"),
                       (("Bad/Name", str(tmp_path / "imagenet"), [], []), "invalid_field"),
                       (("etc", "/etc", [], []), "forbidden_path"),
                       (("x", str(tmp_path / "imagenet"), ["nosuch"], []), "invalid_field"),
                       (("y", str(tmp_path / "imagenet"), [], ["nobody"]), "invalid_field")):
        with pytest.raises(DatasetError) as caught:
            datasets.add(store, cfg, *args, False, "root")
        assert caught.value.code == code, caught.value.message
    assert [x.name for x in datasets.declared(store, cfg)] == ["imagenet"]
    assert len(events(store, "dataset.added")) == 1

    assert datasets.remove(store, cfg, "imagenet", "root") == {"removed": "imagenet"}
    assert events(store, "dataset.removed")[0]["object_id"] == "imagenet"
    with pytest.raises(DatasetError) as caught:
        datasets.remove(store, cfg, "imagenet", "root")
    assert caught.value.status == 404


def test_who_reads_what_teams_users_and_everyone(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "team").mkdir()
    cfg, store = world(tmp_path, datasets={"open": {"path": str(tmp_path / "open")}})
    datasets.add(store, cfg, "team", str(tmp_path / "team"), ["vision"], ["ben"], True, "root")
    seen = {u: [d["name"] for d in datasets.listing(store, cfg, u)] for u in ("ann", "ben", "cat")}
    assert seen == {"ann": ["open", "team"], "ben": ["open", "team"], "cat": ["open"]}
    assert datasets.listing(store, cfg, "cat")[0] == {"name": "open", "path": "/datasets/open", "writable": False,
                                                      "size_bytes": None, "size_measured_at": None}
    mounts = datasets.mounts_for(store, cfg, "ann")
    assert mounts == ((str(tmp_path / "open"), "/datasets/open", True), (str(tmp_path / "team"), "/datasets/team", False))
    assert datasets.mounts_for(store, cfg, "cat") == ((str(tmp_path / "open"), "/datasets/open", True),)


def test_a_dataset_of_mlpd_toml_is_changed_there_not_by_the_cli(tmp_path):
    (tmp_path / "d").mkdir()
    cfg, store = world(tmp_path, datasets={"corpus": {"path": str(tmp_path / "d"), "teams": ["vision"]}})
    for call in (lambda: datasets.add(store, cfg, "corpus", str(tmp_path / "d"), [], [], False, "root"),
                 lambda: datasets.remove(store, cfg, "corpus", "root")):
        with pytest.raises(DatasetError, match="declared in mlpd.toml"):
            call()
    assert datasets.admin_listing(store, cfg)[0]["source"] == "mlpd.toml"


@pytest.mark.parametrize("table,words", [
    ({"x": {"path": "relative"}}, "x.path: expected the absolute path"),
    ({"x": {"path": "/d", "writable": "yes"}}, "x.writable"),
    ({"x": {"path": "/d", "team": ["a"]}}, "unknown key 'team'"),
    ({"Bad": {"path": "/d"}}, "expected a dataset name"),
    ({"x": {"path": "/d", "users": "ann"}}, "x.users"),
])
def test_bad_dataset_tables_in_mlpd_toml_are_config_errors(tmp_path, table, words):
    with pytest.raises(ConfigError, match=words):
        load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path), "datasets": table})


def test_a_symlink_swapped_after_the_add_is_refused_at_launch_and_never_mounted(tmp_path):
    cfg, store = world(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "real")
    datasets.add(store, cfg, "data", str(tmp_path / "data"), [], [], False, "root")
    assert datasets.mounts_for(store, cfg, "ann") == ((str(tmp_path / "real"), "/datasets/data", True),)

    (tmp_path / "data").unlink()
    (tmp_path / "data").symlink_to("/etc")  # swapped by whoever can write its parent
    with pytest.raises(datasets.DatasetRefused) as caught:
        datasets.mounts_for(store, cfg, "ann")
    assert "dataset 'data' was refused at launch and not mounted" in str(caught.value) and "/etc" in str(caught.value)
    assert "resolves to /etc" in datasets.admin_listing(store, cfg)[0]["problem"]

    (tmp_path / "data").unlink()
    (tmp_path / "data").symlink_to(cfg.state_dir)  # or to the state directory (tokens, homes)
    with pytest.raises(datasets.DatasetRefused, match="the state directory"):
        datasets.mounts_for(store, cfg, "ann")


def test_the_launch_of_a_job_fails_with_the_reason_when_its_dataset_went_bad(tmp_path):
    from mlpd.controller import JobController
    from mlpd.runtime.gpus import make_inventory
    from mlpd.jobs import submit
    from mlpd.kinds.jobspec import parse_spec
    from mlpd.runtime.memory import MemoryRuntime

    cfg, store = world(tmp_path, **{"server.container_listen": ""})
    (tmp_path / "real").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "real")
    datasets.add(store, cfg, "data", str(tmp_path / "data"), [], [], False, "root")
    runtime = MemoryRuntime()
    controller = JobController(store, cfg, runtime, make_inventory(0, "declared", store), dispatch=None)
    ok = controller.launch_request(submit(store, "ann", parse_spec({"command": ["true"]})[0], []))
    assert (str(tmp_path / "real"), "/datasets/data", True) in ok.mounts
    (tmp_path / "data").unlink()
    (tmp_path / "data").symlink_to("/proc")
    with pytest.raises(RuntimeFailure, match="dataset 'data' was refused at launch"):
        controller.launch_request(submit(store, "ann", parse_spec({"command": ["true"]})[0], []))


# ------------------------------------------------------------------ disk use and quotas
def test_measured_homes_over_quota_refuse_new_work_with_size_limit_and_how_to_look(tmp_path):
    cfg, store = world(tmp_path, **{"quotas.home_gb": 0.001, "quotas.team_gb": 0.002})
    home = Path(cfg.state_dir) / "homes" / "ann"
    home.mkdir(parents=True)
    disk_use.refusal(store, cfg, "ann")  # nothing measured yet: nothing refused
    (home / "big.bin").write_bytes(os.urandom(1_500_000))
    (Path(cfg.state_dir) / "teams" / "vision").mkdir(parents=True)
    (Path(cfg.state_dir) / "teams" / "vision" / "x.bin").write_bytes(os.urandom(2_500_000))
    counts = disk_use.measure(store, cfg)
    assert counts == {"home": 1, "team": 1}
    with pytest.raises(disk_use.DiskQuotaExceeded) as caught:
        disk_use.refusal(store, cfg, "ann")
    message = caught.value.message
    assert caught.value.status == 403 and message.startswith("your home (/home/mlpd) holds 1.5 MB"), message
    assert "over quotas.home_gb = 0.001 GB" in message and "mlpd usage --disk" in message and "nothing is deleted" in message
    with pytest.raises(disk_use.DiskQuotaExceeded, match="the folder of team vision .* over quotas.team_gb"):
        _member_of_vision(store, cfg, "ben")
    disk_use.refusal(store, cfg, "cat")  # no home measured, no team: nothing refused
    use = disk_use.usage_of(store, cfg, "ann")
    assert use["home"]["over"] and use["home"]["size_bytes"] >= 1_500_000 and use["teams"][0]["team"] == "vision"


def _member_of_vision(store, cfg, user):
    with store.write() as db:
        db["team_members"].insert({"team": "vision", "user": user})
    disk_use.refusal(store, cfg, user)


def test_a_zero_quota_is_no_limit_and_datasets_are_measured_too(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100_000)
    cfg, store = world(tmp_path, datasets={"d": {"path": str(tmp_path / "d")}})
    (Path(cfg.state_dir) / "homes" / "ann").mkdir(parents=True)
    (Path(cfg.state_dir) / "homes" / "ann" / "f").write_bytes(b"x" * 100_000)
    disk_use.measure(store, cfg)
    disk_use.refusal(store, cfg, "ann")
    assert datasets.listing(store, cfg, "ann")[0]["size_bytes"] >= 100_000
