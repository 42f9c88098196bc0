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


# mlpd.docgen writes the reference pages from the whole tree (the CLI, the settings and the app's
# OpenAPI document), so it stands above every layer, like the tests; nothing imports it.
ABOVE_THE_LAYERS = {"mlpd/docgen.py"}


def test_dependencies_point_inward():
    core = {f for f in imports() if f.startswith("mlpd/")} - ABOVE_THE_LAYERS
    web = {f for f in imports() if f.startswith("web/")}
    assert not (importers("mlpd.web") & core) and not (importers("mlpd.workers") & core)
    assert not (importers("mlpd.workers") & web)
    assert not importers("mlpd.docgen")


def test_each_request_body_is_declared_once_in_its_route():
    """json_body() checks a request against the body its route declares (which OpenAPI documents);
    a view that passed its own schema could accept what the documentation does not say."""
    explicit = []
    for path in (ROOT / "web").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "json_body" and (node.args or node.keywords):
                explicit.append(f"{path.name}:{node.lineno}")
    assert explicit == []


def test_each_api_area_is_its_own_blueprint_registered_by_the_app_factory(tmp_path):
    from mlpd.config import load_config
    from mlpd.web import create_app
    from mlpd.web.routes import ROUTES

    app = create_app(load_config(str(ROOT / "mlpd.toml"), {"server.state_dir": str(tmp_path)}))
    served = {(r.rule, m) for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1/") for m in r.methods - {"HEAD", "OPTIONS"}}
    declared = {("/api/v1" + d.rule, m) for d in ROUTES for m in d.methods}
    assert served == declared
    areas = {r.endpoint.split(".")[0] for r in app.url_map.iter_rules() if r.rule.startswith("/api/v1/")}
    assert {"api_jobs", "api_workspaces", "api_serving", "api_admin", "api_usage"} <= areas
