"""Tests for mlpd.kinds.jobspec: validating what users submit."""

from __future__ import annotations

import json

import tomllib

import pytest

from mlpd.kinds.jobspec import FORBIDDEN, STRIPPED_ENV, JobSpec, SpecError, parse_spec
from mlpd.units import format_bytes, format_duration, parse_duration, parse_memory

DIGEST = "ab" * 32
GiB = 1024**3
MiB = 1024**2


def spec(**kw) -> JobSpec:
    result, warnings = parse_spec({"command": ["python", "train.py"], **kw})
    assert warnings == []
    return result


def refused(field: str, **kw) -> SpecError:
    """Parse a spec that must fail; check the error names the field and return it."""
    with pytest.raises(SpecError) as e:
        parse_spec({"command": ["python", "train.py"], **kw})
    assert e.value.field == field
    assert str(e.value) == f"{field}: {e.value.message}"
    return e.value


# ---------------------------------------------------------------- happy paths


def test_minimal_spec_has_defaults():
    s = spec()
    assert s == JobSpec(command=("python", "train.py"))
    assert (s.image, s.code, s.gpus, s.cpus, s.memory, s.time_limit, s.priority) == (None, None, 0, None, None, None, 0)
    assert dict(s.env) == {}


def test_every_field_happy_path():
    s = spec(image="ghcr.io/acme/train:1.2@sha256:" + "0" * 64, code=DIGEST, gpus=2, gpu_model="H100",
             cpus=8, memory="64g", env={"LR": "0.1"}, time_limit="1h30m", priority=-5,
             name="resnet-50.v2_run", experiment="vision/resnet")
    assert s.image.startswith("ghcr.io/acme/train:1.2@sha256:")
    assert s.code == DIGEST
    assert (s.gpus, s.gpu_model, s.cpus, s.memory) == (2, "H100", 8.0, 64 * GiB)
    assert isinstance(s.cpus, float)
    assert dict(s.env) == {"LR": "0.1"}
    assert (s.time_limit, s.priority, s.name, s.experiment) == (5400.0, -5, "resnet-50.v2_run", "vision/resnet")


def test_command_string_is_split_with_shlex():
    assert spec(command="python train.py --name 'my run'").command == ("python", "train.py", "--name", "my run")


def test_numbers_from_cli_strings_and_json_floats():
    s = spec(gpus="2", priority="-3", cpus="1.5", memory=4 * GiB, time_limit=90)
    assert (s.gpus, s.priority, s.cpus, s.memory, s.time_limit) == (2, -3, 1.5, 4 * GiB, 90.0)
    assert spec(gpus=2.0).gpus == 2


def test_null_means_default():
    assert spec(image=None, gpus=None, env=None, priority=None) == spec()


def test_spec_is_frozen_and_hashable():
    s = spec(env={"A": "1"})
    with pytest.raises(AttributeError):
        s.gpus = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        s.env["B"] = "2"  # type: ignore[index]
    assert hash(s) == hash(spec(env={"A": "1"}))


def test_env_values_coerced_to_strings():
    assert dict(spec(env={"A": 1, "B": 0.5, "C": True, "D": False, "E": ""}).env) == {
        "A": "1", "B": "0.5", "C": "true", "D": "false", "E": ""}


@pytest.mark.parametrize("name", STRIPPED_ENV)
def test_gpu_env_vars_stripped_with_warning(name):
    s, warnings = parse_spec({"command": ["nvidia-smi"], "gpus": 1, "env": {name: "0,1", "KEEP": "1"}})
    assert dict(s.env) == {"KEEP": "1"}
    assert warnings == [f"env.{name} was removed: mlpd sets it to the GPUs it allocates"]


def test_to_dict_round_trips_through_json():
    s = spec(image="pytorch/pytorch:2.3.0", code=DIGEST, gpus=1, cpus=4, memory="1.5G",
             env={"SEED": 7}, time_limit="2h", priority=10, name="run1", experiment="exp", requirements="humanize==4.9.0\n",
             priority_class="preemptible", shm="512m")
    d = s.to_dict()
    assert set(d) == {"command", "image", "code", "gpus", "gpu_share", "gpu_model", "cpus", "memory", "env",
                      "time_limit", "priority", "name", "experiment", "requirements", "priority_class", "shm", "on"}
    again, warnings = parse_spec(json.loads(json.dumps(d)))
    assert again == s and warnings == []
    assert parse_spec(JobSpec(command=("x",)).to_dict())[0] == JobSpec(command=("x",))


# ---------------------------------------------------------------- refusals


def test_a_priority_class_is_a_name():
    assert spec(priority_class="production").priority_class == "production"
    for bad in ("", "Production", "x" * 40, 3, "a b"):
        with pytest.raises(SpecError, match="^priority_class: expected a class name"):
            parse_spec({"command": ["x"], "priority_class": bad})


def test_command_required_and_checked():
    with pytest.raises(SpecError, match="^command: required"):
        parse_spec({"gpus": 1})
    refused("command", command=[])
    refused("command", command="")
    refused("command", command={"a": 1})
    assert "No closing quotation" in refused("command", command="python 'oops").message
    assert refused("command[2]", command=["python", "train.py", 3]).message == "expected a string, got int 3"
    refused("command[0]", command=["", "x"])


def test_unknown_key_suggests_near_miss():
    e = refused("gpu", gpu=1)
    assert "did you mean 'gpus'?" in e.message
    assert "allowed keys: command, image" in e.message
    assert "did you mean 'time_limit'" in refused("timelimit", timelimit="1h").message
    assert "did you mean" not in refused("zzz", zzz=1).message


@pytest.mark.parametrize("key", sorted(FORBIDDEN))
def test_forbidden_keys_refused_with_reason(key):
    assert refused(key, **{key: True}).message.startswith("not allowed: ")


def test_forbidden_messages_explain():
    assert str(refused("privileged", privileged=True)) == \
        "privileged: not allowed: mlpd never runs privileged containers"
    assert str(refused("volumes", volumes=["/data:/data"])) == (
        "volumes: not allowed: host mounts are not available; ship code with the job "
        "(code directory) and write results to /outputs")


def test_bools_are_not_numbers():
    for key in ("gpus", "priority", "cpus", "memory", "time_limit"):
        refused(key, **{key: True})


@pytest.mark.parametrize("key,value,fragment", [
    ("gpus", -1, "expected a whole number >= 0 or a share of one GPU such as 0.5, got -1"),
    ("gpus", 65, "must be at most 64, got 65"),
    ("gpus", 1.5, "a share is of one GPU: ask for whole GPUs (2) or a share below 1 (0.5), got 1.5"),
    ("gpus", "two", "expected a whole number >= 0 or a share of one GPU such as 0.5, got 'two'"),
    ("priority", 101, "must be at most 100"),
    ("priority", -101, "expected a whole number >= -100"),
    ("cpus", 0, "expected a number from 0.01 to 1024"),
    ("cpus", 0.001, "expected a number from 0.01 to 1024"),
    ("cpus", 2000, "to 1024"),
    ("cpus", "lots", "expected a number from 0.01"),
    ("memory", "1m", "must be at least 6.0 MiB"),
    ("memory", 0, "must be at least"),
    ("memory", "4 bananas", "cannot read '4 bananas' as a size"),
    ("memory", [1], "got list"),
    ("time_limit", 0, "must be greater than zero"),
    ("time_limit", "-5m", "cannot read '-5m' as a duration"),
    ("time_limit", "soon", "cannot read 'soon'"),
    ("image", "my image", "does not look like an image reference"),
    ("image", "a" * 256, "at most 255 characters"),
    ("image", "", "must not be empty"),
    ("image", 3, "expected a string, got int"),
    ("code", DIGEST.upper(), "64 lowercase hex"),
    ("code", "abc", "64 lowercase hex"),
    ("gpu_model", "", "must not be empty"),
    ("name", "-run", "starting with a letter or digit"),
    ("name", "a" * 65, "1-64 characters"),
    ("name", "has space", "1-64 characters"),
    ("experiment", "", "must not be empty"),
    ("experiment", "e" * 256, "at most 255"),
    ("env", ["A=1"], "expected a table"),
])
def test_bad_values_name_the_field(key, value, fragment):
    assert fragment in refused(key, **{key: value}).message


def test_env_errors_use_dotted_paths():
    assert "invalid variable name" in refused("env.1BAD", env={"1BAD": "x"}).message
    refused("env.A-B", env={"A-B": "x"})
    assert "got list" in refused("env.LIST", env={"LIST": [1, 2]}).message
    assert "got null" in refused("env.NONE", env={"NONE": None}).message
    refused("env.NUL", env={"NUL": "a\0b"})


def test_non_mapping_refused():
    with pytest.raises(SpecError, match="^spec: expected a table"):
        parse_spec(["python"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- TOML


def test_toml_file_with_env_table():
    s, warnings = parse_spec(tomllib.loads(
        'command = ["python", "train.py"]\n'
        'gpus = 1\nmemory = "16GiB"\ntime_limit = "12h"\n'
        '[env]\nWANDB_MODE = "offline"\nSEED = 42\nCUDA_VISIBLE_DEVICES = "3"\n'))
    assert (s.gpus, s.memory, s.time_limit) == (1, 16 * GiB, 12 * 3600.0)
    assert dict(s.env) == {"WANDB_MODE": "offline", "SEED": "42"}
    assert warnings == ["env.CUDA_VISIBLE_DEVICES was removed: mlpd sets it to the GPUs it allocates"]


def test_toml_validation_error_names_the_field():
    with pytest.raises(SpecError, match="^gpus: expected a whole number >= 0 or a share of one GPU such as 0.5, got -1$"):
        parse_spec(tomllib.loads('command = "python x.py"\ngpus = -1\n'))
    with pytest.raises(SpecError, match="^privileged: not allowed"):
        parse_spec(tomllib.loads('command = "x"\nprivileged = true\n'))


# ---------------------------------------------------------------- units


@pytest.mark.parametrize("text,seconds", [
    (90, 90.0), (1.5, 1.5), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1h30m", 5400.0), ("1h 30m", 5400.0), ("1.5h", 5400.0), ("2d3h", 183600.0), ("45S", 45.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "h", "1x", "1h30", "-5s", "1e999", True, None, [1], float("inf")])
def test_parse_duration_errors(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize("text,size", [
    (100, 100), ("100", 100), ("100k", 100 * 1024), ("512m", 512 * MiB), ("512MB", 512 * MiB), ("4g", 4 * GiB),
    ("4GiB", 4 * GiB), ("4Gi", 4 * GiB), ("1.5G", 3 * GiB // 2), ("1t", 1024 * GiB), ("64b", 64), (2048.0, 2048),
])
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("bad", ["", "g", "4x", "4 gigs", "4ib", "-1g", True, None, 1.5])
def test_parse_memory_errors(bad):
    with pytest.raises(ValueError, match="size"):
        parse_memory(bad)


@pytest.mark.parametrize("seconds,text", [
    (5400, "1h30m"), (45, "45s"), (183600, "2d3h"), (0, "0s"), (90061, "1d1h1m1s"), (59.6, "1m"), (0.25, "0.25s"),
    (-60, "-1m"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_duration_round_trips():
    for seconds in (1, 59, 61, 3600, 86399, 90061, 10 * 86400):
        assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("n,text", [
    (4 * GiB, "4.0 GiB"), (512 * MiB, "512 MiB"), (100, "100 B"), (1536, "1.5 KiB"), (0, "0 B"),
    (3 * 1024 * GiB, "3.0 TiB"), (int(1.5 * GiB), "1.5 GiB"),
])
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_every_field_has_a_cap_with_a_clear_error():
    """A spec cannot carry a megabyte command, env or name into the database and every listing."""
    huge = "x" * (200 * 1024)
    for data, field in [({"command": ["echo", huge]}, "command[1]"),
                        ({"command": ["true"] * 5000}, "command"),
                        ({"command": ["true"], "env": {"BIG": huge}}, "env.BIG"),
                        ({"command": ["true"], "env": {f"V{i}": "1" for i in range(2000)}}, "env"),
                        ({"command": ["echo"] + ["y" * 100_000] * 6}, "command"),
                        ({"command": ["true"], "name": huge}, "name"),
                        ({"command": ["true"], "experiment": huge}, "experiment"),
                        ({"command": ["true"], "image": huge}, "image")]:
        with pytest.raises(SpecError) as info:
            parse_spec(data)
        assert info.value.field == field, (field, str(info.value)[:200])
        assert len(str(info.value)) < 1200  # the value is not echoed back whole


def test_host_limits_are_checked_at_submit():
    from mlpd.kinds.jobspec import check_host_limits

    spec, _ = parse_spec({"command": ["true"], "cpus": 8, "memory": "64g"})
    with pytest.raises(SpecError, match="^cpus: asks for 8 CPUs but this host has 2"):
        check_host_limits(spec, 2, 128 * 1024**3)
    with pytest.raises(SpecError, match="^memory: asks for 64 GiB but this host has 16 GiB"):
        check_host_limits(spec, 16, 16 * 1024**3)
    check_host_limits(spec, 8, 64 * 1024**3)


@pytest.mark.parametrize("text, message", [("", "names no package"), ("# only a comment\n\n", "names no package"),
                                           ("x" * (65 * 1024), "over 64 KiB"), ("a\0b", "NUL"), (["numpy"], "expected the text")])
def test_requirements_are_text_naming_packages(text, message):
    with pytest.raises(SpecError, match="^requirements: .*" + message):
        parse_spec({"command": ["true"], "requirements": text})


def test_every_unknown_key_is_reported_at_once_and_files_name_code_dir():
    e = refused("gpu, zzz, timelimit", gpu=1, zzz=2, timelimit="1h")
    assert "unknown keys; did you mean 'gpus' for 'gpu'? did you mean 'time_limit' for 'timelimit'?" in e.message
    with pytest.raises(SpecError) as info:
        parse_spec({"command": ["x"], "code": "a" * 64}, job_file=True)
    assert info.value.field == "code" and "code_dir" in info.value.message and ", code," not in info.value.message


def test_a_flood_of_unknown_keys_costs_bounded_work_and_a_short_message():
    """Issue 22 (10): 95,000 unknown keys cost 2.2 s of close-match searches and a message naming them all."""
    import time

    data = {"command": ["true"], **{f"k{i}": 1 for i in range(95_000)}}
    started = time.process_time()
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert time.process_time() - started < 0.5
    assert info.value.field == "k0, k1, k2, k3, k4 and 94995 more"
    assert len(info.value.message) < 1000
    long_key = "x" * 100_000
    with pytest.raises(SpecError) as info:
        parse_spec({"command": ["true"], long_key: 1})
    assert len(info.value.field) < 100 and len(info.value.message) < 1000


def test_shm_is_a_size_within_the_memory_limit():
    assert spec(shm="2g", memory="4g").shm == 2 * 1024**3
    assert spec(shm="4g", memory="4g").shm == 4 * 1024**3
    with pytest.raises(SpecError, match=r"^shm: asks for 5.0 GiB of shared memory \(/dev/shm\) but its memory limit is 4.0 GiB"):
        spec(shm="5g", memory="4g")
    with pytest.raises(SpecError, match=r"^shm: cannot read 'lots'"):
        spec(shm="lots")
    with pytest.raises(SpecError, match=r"^shm: must be at least 1.0 MiB"):
        spec(shm="1k")


def test_shm_without_a_memory_limit_is_checked_against_the_default_one():
    from mlpd.kinds.jobspec import check_shm

    check_shm(8 * 1024**3, 8 * 1024**3, default=True)
    with pytest.raises(SpecError, match=r"default memory limit \(jobs.default_memory\) is 8.0 GiB"):
        check_shm(9 * 1024**3, 8 * 1024**3, default=True)


def test_the_size_of_dev_shm_follows_the_rule():
    from mlpd.units import shm_size

    gib = 1024**3
    assert shm_size(None, 8 * gib, "auto", 64 * gib) == 4 * gib  # half the memory limit
    assert shm_size(None, None, "auto", 64 * gib) == 32 * gib  # no limit: half the host's memory, as the host's own /dev/shm
    assert shm_size(None, 8 * gib, "2g", 64 * gib) == 2 * gib
    assert shm_size(None, gib, "2g", 64 * gib) == gib  # never more than the memory limit
    assert shm_size(6 * gib, 8 * gib, "auto", 64 * gib) == 6 * gib  # the job's own ask wins
