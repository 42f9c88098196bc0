"""mlpd.config: every setting declared once, documented in the shipped mlpd.toml, validated with clear errors."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest

from mlpd.config import SETTINGS, SYSTEM_CONFIG, SETTINGS_BY_KEY, Config, ConfigError, config_path, load_config, validate

SHIPPED = Path(__file__).resolve().parents[2] / "mlpd.toml"


def flatten(data: dict, prefix: str = "") -> dict:
    """Dotted keys; a table-typed setting (e.g. pricing.gpu_hour) stays one key."""
    flat = {}
    for name, value in data.items():
        declared = SETTINGS_BY_KEY.get(f"{prefix}{name}")
        if isinstance(value, dict) and not (declared and declared.type is dict):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def shipped_keys() -> dict:
    with open(SHIPPED, "rb") as fh:
        return flatten(tomllib.load(fh))


@pytest.fixture(autouse=True)
def no_config_env(monkeypatch):
    """Tests choose their file explicitly; a developer's MLPD_CONFIG must not leak in."""
    monkeypatch.delenv("MLPD_CONFIG", raising=False)


def write(tmp_path: Path, text: str, name: str = "mlpd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the shipped file documents every key


def test_every_setting_is_in_the_shipped_file_with_its_default():
    documented = shipped_keys()
    missing = [s.key for s in SETTINGS if s.key not in documented]
    assert not missing, f"settings missing from mlpd.toml: {missing}"
    wrong = {s.key: (documented[s.key], s.default) for s in SETTINGS if documented[s.key] != s.default or type(documented[s.key]) is not type(s.default)}
    assert not wrong, f"mlpd.toml value differs from the default (file, default): {wrong}"


def test_shipped_file_has_no_undocumented_or_stale_key():
    stale = sorted(set(shipped_keys()) - set(SETTINGS_BY_KEY))
    assert not stale, f"mlpd.toml has keys mlpd does not know: {stale}"


def test_every_key_in_the_shipped_file_has_a_comment_above_it():
    lines = SHIPPED.read_text().splitlines()
    section = ""
    keys_seen = []
    for number, line in enumerate(lines):
        stripped = line.strip()
        if m := re.fullmatch(r"\[([A-Za-z0-9_.-]+)\]", stripped):
            section = m.group(1) + "."
            if (declared := SETTINGS_BY_KEY.get(m.group(1))) and declared.type is dict:  # a table-typed setting as its own [table]
                keys_seen.append(m.group(1))
                assert lines[number + 1].startswith("#"), f"[{m.group(1)}] (line {number + 1}) has no comment below it"
            continue
        if m := re.match(r"([A-Za-z0-9_-]+)\s*=", stripped):
            key = section + m.group(1)
            keys_seen.append(key)
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and len(above.lstrip("# ")) > 3, f"{key} (line {number + 1}) has no comment line above it"
    # the line scan saw exactly the keys tomllib sees, so no key escaped the check
    assert sorted(keys_seen) == sorted(shipped_keys())


def test_shipped_file_loads_and_equals_the_defaults():
    config = load_config(str(SHIPPED))
    assert config.source == str(SHIPPED)
    assert config.as_dict() == {s.key: s.default for s in SETTINGS}


def test_every_setting_has_a_doc_and_a_valid_default():
    for s in SETTINGS:
        assert s.doc.strip(), s.key
        assert validate({s.key: s.default}, "defaults") == {s.key: s.default}


# ---------------------------------------------------------------- which file, and precedence


def test_overrides_win_over_the_file_and_keep_other_file_values(tmp_path):
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:9000"\nworkers = 3\nlog_level = "debug"\n[gpus]\ndeclare = 4\n')
    config = load_config(str(path), {"server.listen": "127.0.0.1:9100", "gpus.declare": None, "server.state_dir": str(tmp_path / "s")})
    assert config["server.listen"] == "127.0.0.1:9100"
    assert config["server.workers"] == 3
    assert config["server.log_level"] == "debug"
    assert config["gpus.declare"] == 4, "a None override (flag not given) must not reset the file value"
    assert config["server.threads"] == SETTINGS_BY_KEY["server.threads"].default
    assert config.state_dir == str(tmp_path / "s")
    assert config.db_path == str(tmp_path / "s" / "mlpd.db")


def test_mlpd_config_env_chooses_the_file(tmp_path, monkeypatch):
    path = write(tmp_path, "[server]\nworkers = 5\n")
    monkeypatch.setenv("MLPD_CONFIG", str(path))
    assert config_path() == str(path)
    config = load_config()
    assert config.source == str(path)
    assert config["server.workers"] == 5


def test_explicit_config_beats_mlpd_config_env(tmp_path, monkeypatch):
    env_file = write(tmp_path, "[server]\nworkers = 5\n", "env.toml")
    flag_file = write(tmp_path, "[server]\nworkers = 7\n", "flag.toml")
    monkeypatch.setenv("MLPD_CONFIG", str(env_file))
    assert load_config(str(flag_file))["server.workers"] == 7


def test_state_dir_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(str(write(tmp_path, '[server]\nstate_dir = "~/st"\n')))
    assert config.state_dir == str(tmp_path / "st")


def test_resolved_config_round_trips_through_json(tmp_path):
    config = load_config(str(write(tmp_path, '[gpus]\ndrained = [1, "GPU-abc"]\n[scheduler]\nreconcile_interval = 2\n')))
    again = Config.from_json(config.to_json())
    assert again.as_dict() == config.as_dict()
    assert again.source == config.source
    assert again["gpus.drained"] == [1, "GPU-abc"]


# ---------------------------------------------------------------- errors name the file, the key and the expectation


def test_bad_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, '[server]\nlisten = "127.0.0.1:8470\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.source == str(path)
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value) and "line 2" in str(info.value)


def test_unknown_key_names_the_key_and_suggests_the_right_one(tmp_path):
    path = write(tmp_path, '[server]\nlisen = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert info.value.key == "server.lisen"
    assert str(path) in message and "server.lisen" in message and "unknown key" in message
    assert "server.listen" in message


def test_unknown_section_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"sever\.listen: unknown key"):
        load_config(str(write(tmp_path, '[sever]\nlisten = "127.0.0.1:1"\n')))


@pytest.mark.parametrize(
    "text, key, expectation",
    [
        ('[server]\nworkers = "two"\n', "server.workers", "expected a whole number, got 'two'"),
        ("[server]\nworkers = true\n", "server.workers", "expected a whole number, got True"),
        ("[server]\nworkers = 0\n", "server.workers", "expected a number from 1 to 64"),
        ("[server]\nthreads = 100000\n", "server.threads", "expected a number from 1 to 256"),
        ('[jobs]\ncontainer_user = "0:0"\n', "jobs.container_user", "never run as root"),
        ('[jobs]\ncontainer_user = "1000:0"\n', "jobs.container_user", "never run as root"),
        ('[jobs]\ncontainer_user = "root"\n', "jobs.container_user", "expected numeric UID:GID"),
        ('[jobs]\ndefault_memory = "1k"\n', "jobs.default_memory", "must be at least 6.0 MiB"),
        ('[pricing]\ngpu_hour = {"A100" = "cheap"}\n', "pricing.gpu_hour", "expected a number >= 0"),
        ("[scheduler]\nreconcile_interval = inf\n", "scheduler.reconcile_interval", "expected a finite number"),
        ("[quotas]\ngpu_hours = nan\n", "quotas.gpu_hours", "expected a finite number"),
        ("[server]\nworkers = 2.5\n", "server.workers", "expected a whole number"),
        ('[server]\nlisten = "localhost"\n', "server.listen", "expected HOST:PORT"),
        ('[server]\nlisten = "127.0.0.1:70000"\n', "server.listen", "expected HOST:PORT"),
        ('[server]\nlog_level = "loud"\n', "server.log_level", "expected one of 'debug'"),
        ('[scheduler]\nbackfill = "yes"\n', "scheduler.backfill", "expected true or false"),
        ('[scheduler]\nreconcile_interval = "5"\n', "scheduler.reconcile_interval", "expected a number"),
        ("[scheduler]\nreconcile_interval = -1\n", "scheduler.reconcile_interval", "expected a number from 0.1 to 3600"),
        ("[gpus]\ndeclare = -1\n", "gpus.declare", "expected a number >= 0"),
        ('[gpus]\ndrained = "0"\n', "gpus.drained", "expected a list"),
        ('[jobs]\ndefault_memory = "lots"\n', "jobs.default_memory", "lots"),
        ('[jobs]\ndefault_time_limit = "soon"\n', "jobs.default_time_limit", "soon"),
        ('[jobs]\nshm_size = "half"\n', "jobs.shm_size", "expected 'auto' or a size"),
        ('[jobs]\nshm_size = "1k"\n', "jobs.shm_size", "must be 'auto' or at least 1.0 MiB"),
        ('[docker]\ngpu_runtime = "amd"\n', "docker.gpu_runtime", "expected one of 'auto', 'nvidia', 'none'"),
    ],
)
def test_wrong_values_name_the_file_key_and_expectation(tmp_path, text, key, expectation):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.key == key
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert expectation in str(info.value)


def test_valid_non_default_values_are_accepted(tmp_path):
    path = write(tmp_path, '[jobs]\ndefault_memory = "8g"\ndefault_time_limit = "1h30m"\ndefault_cpus = 2.5\n[scheduler]\nreconcile_interval = 1\n')
    config = load_config(str(path))
    assert (config["jobs.default_memory"], config["jobs.default_time_limit"], config["jobs.default_cpus"]) == ("8g", "1h30m", 2.5)
    assert config["scheduler.reconcile_interval"] == 1


def test_bad_override_is_blamed_on_the_command_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(write(tmp_path, "")), {"server.listen": "nonsense"})
    assert info.value.source == "command line" and info.value.key == "server.listen"


def test_missing_file_is_an_error_not_the_defaults(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found") as info:
        load_config(str(missing))
    assert str(missing) in str(info.value)


def test_without_flag_or_env_the_system_file_else_the_defaults():
    config = load_config()
    if os.path.exists(SYSTEM_CONFIG):  # an installed host (install.sh writes it)
        assert config_path() == SYSTEM_CONFIG
        assert config.source == SYSTEM_CONFIG
    else:
        assert config_path() is None
        assert config.source == "<built-in defaults>"
        assert config.as_dict() == {s.key: s.default for s in SETTINGS}
