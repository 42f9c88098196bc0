"""The layers hold: each third-party system behind one module, and dependencies pointing inward.

Checked on the source itself (every import statement, also those inside functions), so a
shortcut taken in a hurry fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"mlpd": ROOT / "mlpd", "mlpd.web": ROOT / "web", "mlpd.workers": ROOT / "workers"}


def imports() -> dict[str, set[str]]:
    """{module file (relative): top-level names it imports, as dotted modules}."""
    found: dict[str, set[str]] = {}
    for package, directory in PACKAGES.items():
        for path in directory.rglob("*.py"):
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module)
                    names |= {f"{node.module}.{a.name}" for a in node.names}
            found[str(path.relative_to(ROOT))] = names
    return found


def importers(prefix: str) -> set[str]:
    return {f for f, names in imports().items() if any(n == prefix or n.startswith(prefix + ".") for n in names)}


def test_each_third_party_system_is_imported_in_one_module():
    assert importers("docker") == {"mlpd/docker_runtime.py"}
    assert importers("pynvml") == {"mlpd/gpus.py"}
    assert importers("huey") == {"workers/tasks.py"}
    assert importers("mlflow") <= {"mlpd/tracking.py", "mlpd/cli/mlflow.py"}
    assert importers("flask") <= {f for f in imports() if f.startswith("web/")}


def test_dependencies_point_inward():
    core = {f for f in imports() if f.startswith("mlpd/")}
    web = {f for f in imports() if f.startswith("web/")}
    assert not (importers("mlpd.web") & core) and not (importers("mlpd.workers") & core)
    assert not (importers("mlpd.workers") & web)
