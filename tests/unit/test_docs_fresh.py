"""The generated reference pages (docs/cli.md, docs/configuration.md, docs/api.md) are what the code
says now: a command, an option, a config key or an API route added without running the generator
fails here, with the command that fixes it."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from mlpd import docgen

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return docgen.pages(ROOT)


def test_the_generator_writes_the_three_pages(generated):
    assert sorted(generated) == sorted(docgen.PAGES)


@pytest.mark.parametrize("page", docgen.PAGES)
def test_each_generated_page_is_fresh(generated, page):
    path = ROOT / page
    assert path.is_file(), f"{page} is missing: run `python -m mlpd.docgen`"
    checked_in = path.read_text()
    if checked_in != generated[page]:
        diff = "".join(list(difflib.unified_diff(checked_in.splitlines(True), generated[page].splitlines(True),
                                                 f"{page} (checked in)", f"{page} (generated now)"))[:60])
        pytest.fail(f"{page} is stale: run `python -m mlpd.docgen` and commit the result\n{diff}")


def test_the_output_does_not_depend_on_the_terminal(monkeypatch, generated):
    monkeypatch.setenv("COLUMNS", "37")
    assert docgen.cli_page() == generated["docs/cli.md"]


def test_every_command_key_and_route_is_on_its_page(generated):
    import click

    from mlpd.cli import main
    from mlpd.config import SETTINGS

    root = click.Context(main, info_name="mlpd")
    paths = [ctx.command_path for ctx, _ in docgen._walk(main, root)]
    assert len(paths) > 50 and "mlpd admin team member add" in paths
    for path in paths:
        assert f"\n## {path}\n" in generated["docs/cli.md"], path
    for setting in SETTINGS:
        assert f"\n### {setting.key}\n" in generated["docs/configuration.md"], setting.key
    document = docgen.openapi_document()
    for path, methods in document["paths"].items():
        for method in methods:
            assert f"| {method.upper()} | `{path}` |" in generated["docs/api.md"], (method, path)


def test_the_shipped_comment_goes_with_its_key():
    sections, comments = docgen.toml_comments('# header\n\n[a]\n# first\n# second\nx = 1\ny = "2"\n\n# loose\n\n[b]\n# z\nz = []\n')
    assert sections == ["a", "b"]
    assert comments == {"a.x": ["# first", "# second", "x = 1"], "a.y": ['y = "2"'], "b.z": ["# z", "z = []"]}


def test_defaults_are_written_as_toml_writes_them():
    assert docgen._toml_value({"production": [], "NVIDIA H100": 2.5}) == '{production = [], "NVIDIA H100" = 2.5}'
    assert docgen._toml_value([True, "a\"b"]) == '[true, "a\\"b"]'


def test_stale_names_a_changed_page(tmp_path):
    (tmp_path / "mlpd.toml").write_text((ROOT / "mlpd.toml").read_text())
    for path, text in docgen.pages(tmp_path).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert docgen.stale(tmp_path) == []
    (tmp_path / "docs/cli.md").write_text("old\n")
    assert docgen.stale(tmp_path) == ["docs/cli.md"]
