"""The README tells the truth: every command in its CLI tour exists with the options it shows, and
its job file example is a valid job file. (The golden paths themselves run end to end in the
integration tests; this keeps the documentation from drifting away from the code.)"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mlpd.cli import main
from mlpd.kinds.jobspec import parse_spec

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def block(heading: str, lang: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(rf"```{lang}\n(.*?)```", section, re.S).group(1)


def tour_lines() -> list[list[str]]:
    lines = []
    for line in block("## CLI tour", "sh").splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith("mlpd "):
            lines.append(line)
    return lines


@pytest.mark.parametrize("line", tour_lines())
def test_every_command_in_the_tour_exists_with_the_options_it_shows(line):
    first = line.split(" | ")[0].replace("[", " ").replace("]", " ")  # "a | b": alternatives; [optional]
    if first.startswith("eval "):
        return
    words = [w for word in shlex.split(first)[1:] for w in word.split("|")]
    path, options = [], []
    command = main
    for word in words:
        if word.startswith("-"):
            options.append(word.split("=")[0])
            continue
        # get_command, not .commands: the groups load their subcommands lazily (mlpd.cli.COMMANDS)
        sub = command.get_command(click.Context(command), word) if isinstance(command, click.Group) else None
        if sub is None:
            continue  # an argument (ID, NAME, a URL...)
        path.append(word)
        command = sub
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, (line, result.output)
    for option in options:
        assert option in result.output, (line, option, result.output)


def test_the_job_file_example_is_a_valid_job_file():
    example = tomllib.loads(block("### Jobs", "toml"))
    assert example.pop("code_dir") == "." and example.pop("requirements") == "requirements.txt"  # the CLI reads these two
    spec, warnings = parse_spec(example, job_file=True)
    assert spec.command[0] == "python" and spec.gpus == 2 and warnings == []


def test_the_two_commands_are_the_scripts_ci_runs():
    two = block("## The two commands", "sh")
    assert "sudo ./install.sh" in two and "./tests/run.sh" in two
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "./install.sh" in ci and "./tests/run.sh" in ci
