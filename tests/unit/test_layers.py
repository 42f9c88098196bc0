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
    for directory in PACKAGES.values():
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
    assert importers("docker") == {"mlpd/runtime/docker_engine.py"}
    assert importers("pynvml") == {"mlpd/runtime/gpus.py"}
    assert importers("huey") == {"workers/tasks.py"}
    assert importers("mlflow") <= {"mlpd/tracking/server.py", "mlpd/cli/mlflow.py"}
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


KIND_NAMES = {"job", "workspace", "deployment"}


def _mentions_kind(node: ast.AST) -> bool:
    """Whether an expression reads a workload's kind: `kind`, `x.kind`, `row["kind"]`, `row.get("kind")`."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == "kind" or isinstance(sub, ast.Attribute) and sub.attr == "kind":
            return True
        if isinstance(sub, ast.Constant) and sub.value == "kind":
            return True
    return False


def test_no_module_outside_the_kinds_tests_a_kind_by_its_name():
    """A kind is asked (mlpd.kinds.base.Kind), not named: `kind == "workspace"` outside its own module
    is how kinds became branches spread over the core before."""
    found = []
    for directory in PACKAGES.values():
        for path in directory.rglob("*.py"):
            rel = str(path.relative_to(ROOT))
            if rel.startswith(("mlpd/kinds/", "mlpd/serving/")):  # a kind's own modules (serving is the deployment's)
                continue
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
                    sides = [node.left, *node.comparators]
                    named = [s for s in sides if isinstance(s, ast.Constant) and s.value in KIND_NAMES
                             or isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(isinstance(e, ast.Constant) and e.value in KIND_NAMES for e in s.elts)]
                    if named and any(_mentions_kind(s) for s in sides if s not in named):
                        found.append(f"{rel}:{node.lineno}")
    assert found == []


def _area_imports(area: str) -> dict[str, set[str]]:
    """{file under mlpd/AREA (or the top-level modules for area ""): the mlpd modules it imports (dotted, no names)}."""
    out = {}
    for f, names in imports().items():
        parts = f.split("/")
        if parts[0] != "mlpd" or parts[1] == "cli":
            continue
        if (area == "" and len(parts) == 2) or (area and len(parts) > 2 and parts[1] == area):
            out[f] = {n for n in names if n.startswith("mlpd.")}
    return out


def _offending(area: str, allowed) -> list[str]:
    return sorted(f"{f} imports {n}" for f, names in _area_imports(area).items() for n in names if not allowed(f, n))


AREAS = ("kinds", "serving", "scheduling", "runtime", "tracking", "ops")


def _in(name: str, *areas: str) -> bool:
    return any(name == f"mlpd.{a}" or name.startswith(f"mlpd.{a}.") for a in areas)


def test_each_area_imports_only_what_its_docstring_allows():
    """The subpackages' rules (each __init__.py says them): the runtime and tracking are the outside
    world and import no area; scheduling asks kinds only through the registry (kinds.base); the
    core's modules know no kind module and no area above them (the controller, which drives the
    runtime, the scheduler and MLflow, and admission excepted for those; the job spec every kind
    shares is read by all); only the CLI imports ops."""
    assert _offending("runtime", lambda f, n: not _in(n, *AREAS) or _in(n, "runtime")) == []
    assert _offending("tracking", lambda f, n: not _in(n, *AREAS) or _in(n, "tracking")) == []
    assert _offending("scheduling", lambda f, n: not _in(n, "kinds", "serving", "tracking", "ops")
                      or n.startswith("mlpd.kinds.base")) == []
    assert _offending("serving", lambda f, n: not _in(n, "ops") and (not _in(n, "kinds") or n.split(".")[2] in ("base", "jobspec"))) == []
    assert _offending("kinds", lambda f, n: not _in(n, "ops")) == []
    drivers = ("mlpd/controller.py", "mlpd/admission.py")  # they drive the runtime, the scheduler and MLflow for every kind
    assert _offending("", lambda f, n: not _in(n, *AREAS) or n.startswith(("mlpd.kinds.base", "mlpd.kinds.jobspec"))
                      or (f in drivers and _in(n, "runtime", "scheduling", "tracking"))) == []


def test_the_web_layer_writes_no_sql():
    """web/ speaks HTTP: every change of state goes through a domain function (which owns its
    transaction, its checks and its event), never an INSERT, UPDATE or DELETE of a view's own, nor
    a transaction or an event opened in a view."""
    found = []
    for path in (ROOT / "web").rglob("*.py"):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.lstrip().startswith(("INSERT ", "UPDATE ", "DELETE ", "REPLACE INTO ")):
                found.append(f"{rel}:{node.lineno} SQL {node.value.split()[0]}")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
                if (name == "write" and "store" in receiver) or name in ("record_event", "set_status") or (name in ("upsert", "insert", "update", "delete_where") and
                                                                        isinstance(func, ast.Attribute) and isinstance(func.value, ast.Subscript)):
                    found.append(f"{rel}:{node.lineno} {name}()")
    assert found == []
