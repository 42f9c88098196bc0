"""Job state names and their named sets are defined once, in mlpd.jobs (issue 24, "one kind, one place").

Everything else imports TERMINAL_STATES, ACTIVE_STATES and the rest; templates get them from the UI's
context processor and the page script from a data attribute. The scan below reads the source tree
(Python, SQL inside Python strings, templates, the page script) and fails on a literal collection of
three or more job state names outside mlpd/jobs.py: a list kept by hand drifts when a state is added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mlpd import jobs

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "mlpd" / "jobs.py"
NAMES = set(jobs.STATE_NAMES)
# Three or more quoted state names in a row, separated by commas: ('a', 'b', 'c') in SQL, ["a", "b", "c"] in JS or Jinja.
_QUOTED = r"""(['"])(?:%s)\1""" % "|".join(sorted(map(re.escape, NAMES)))
QUOTED_RUN = re.compile(rf"{_QUOTED}(?:\s*,\s*{_QUOTED}){{2,}}")


def offences_in_python(text: str, where: str) -> list[str]:
    """Literal tuples, lists and sets holding 3+ state names, strings (SQL) spelling 3+ in a row, and
    comprehensions over jobs.TERMINAL or jobs.ACTIVE (a module's own TERMINAL_NAMES)."""
    found = []
    for node in ast.walk(ast.parse(text, where)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            named = [e.value for e in node.elts if isinstance(e, ast.Constant) and e.value in NAMES]
            if len(named) >= 3:
                found.append(f"{where}:{node.lineno}: {named}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and QUOTED_RUN.search(node.value):
            found.append(f"{where}:{node.lineno}: {QUOTED_RUN.search(node.value).group(0)}")
        elif isinstance(node, ast.comprehension) and _name(node.iter) in ("TERMINAL", "ACTIVE"):
            found.append(f"{where}:{node.iter.lineno}: the names of {_name(node.iter)} derived again")  # TERMINAL_NAMES and the like
    return found


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""


def offences_in_text(text: str, where: str) -> list[str]:
    return [f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}" for m in QUOTED_RUN.finditer(text)]


def source_offences() -> list[str]:
    found = []
    for directory in ("mlpd", "web", "workers"):
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path != HOME:
                found += offences_in_python(path.read_text(), str(path.relative_to(ROOT)))
    for pattern in ("web/templates/*.html", "web/static/*.js"):
        for path in sorted(ROOT.glob(pattern)):
            found += offences_in_text(path.read_text(), str(path.relative_to(ROOT)))
    return found


def test_no_module_template_or_script_spells_out_a_set_of_job_states():
    assert source_offences() == []


def test_the_scan_finds_each_form_the_lists_used_to_take():
    python = '''
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "lost")
TERMINAL2 = frozenset({"succeeded", "failed", "cancelled", "timed_out", "lost"})
mine = list_jobs(store, user, ["queued", "starting", "running"])
sql = "SELECT 1 FROM jobs WHERE state NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out', 'lost')"
fine = ("starting", "running")
also_fine = ("serving", "canary", "failed", "rolled_back")
TERMINAL_NAMES = frozenset(s.value for s in jobs.TERMINAL)
'''
    assert sorted(int(line.split(":")[1]) for line in offences_in_python(python, "x.py")) == [2, 3, 4, 5, 8]
    script = 'if (["succeeded", "failed", "cancelled", "timed_out", "lost"].indexOf(s.state) >= 0) { reload(); }'
    assert len(offences_in_text(script, "ui.js")) == 1
    assert offences_in_text("{% if job.state in ('queued', 'starting', 'running') %}", "t.html")
    assert not offences_in_text("{% if job.state == 'queued' %}", "t.html")


def test_the_named_sets_partition_the_states():
    assert jobs.TERMINAL_STATES == {s.value for s in jobs.TERMINAL}
    assert jobs.ACTIVE_STATES == {s.value for s in jobs.ACTIVE}
    assert jobs.QUEUED_OR_ACTIVE_STATES == jobs.ACTIVE_STATES | {"queued"}
    assert jobs.NOT_ENDED_STATES | jobs.TERMINAL_STATES == NAMES and not jobs.NOT_ENDED_STATES & jobs.TERMINAL_STATES
    assert "preempted" in jobs.NOT_ENDED_STATES  # queued again at once: its files and code are kept (retention)


def test_templates_and_the_page_script_get_the_states_as_data(tmp_path):
    import flask

    from mlpd.config import load_config
    from mlpd.web import create_app

    app = create_app(load_config(str(ROOT / "mlpd.toml"), {"server.state_dir": str(tmp_path)}))
    with app.test_request_context("/ui/"):
        assert flask.request.blueprint == "ui"
        rendered = flask.render_template_string("{{ job_states.terminal|join(' ') }}|{{ job_states.active|join(' ') }}")
    assert rendered == " ".join(sorted(jobs.TERMINAL_STATES)) + "|" + " ".join(sorted(jobs.ACTIVE_STATES))
    # The job page hands the ended states to ui.js, which reads them instead of keeping its own list.
    assert "data-terminal-states=\"{{ job_states.terminal|join(' ') }}\"" in (ROOT / "web/templates/job.html").read_text()
    assert "pre.dataset.terminalStates" in (ROOT / "web/static/ui.js").read_text()
