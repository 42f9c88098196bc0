"""Models for serving: MLflow model URIs, found in mlpd's own MLflow store and copied out of it.

A deployment names a model as MLflow does (``models:/churn@prod``, ``models:/churn/3``,
``runs:/RUN_ID/model``, ``models:/m-...``). The daemon resolves it by reading MLflow's SQLite
file read-only (the registry's aliases and versions, runs and logged models: one row each,
as :class:`mlpd.tracking.server.TrackingDb` does), and copies the model's files from its artifact
store into a directory of its own, which the replica mounts read-only: the container never
gets credentials, and never reads the store itself.

The copy opens every file relative to its directory's descriptor with O_NOFOLLOW and refuses
anything that is not a plain file or directory: only MLflow's proxy writes into the store, so a
link there is never mlpd's, and it is refused rather than followed. Every size has a cap.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
from dataclasses import dataclass
from typing import Any

from mlpd.tracking import server as tracking
from mlpd.errors import MlpdError
from mlpd.tracking.policy import in_store, unsafe_path

MAX_MODEL_BYTES = 20 * 1024**3  # a model's files together
MAX_MODEL_FILES = 100_000
STORE_SCHEME = "mlflow-artifacts:/"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_VERSION = re.compile(r"[1-9][0-9]{0,8}")
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_LOGGED_MODEL = re.compile(r"m-[0-9a-f]{32}")
# The packages that provide the scoring server: the serving image's own, never reinstalled from a model.
SERVER_PACKAGES = ("mlflow", "mlflow-skinny", "mlflow-tracing")


class ModelError(MlpdError):
    """A model URI that cannot be served: malformed, absent, or with files outside mlpd's store."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model URI: exactly one of (name and version or alias), run_id or model_id is set."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    path: str | None = None  # the artifact path under a run (runs:/ID/PATH)
    model_id: str | None = None


def parse_uri(uri: str) -> ModelRef:
    """Parse models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/PATH (ModelError 400 otherwise)."""
    if not isinstance(uri, str) or len(uri) > 1000 or any(c in uri for c in "\\\x00?#"):
        raise ModelError(400, "invalid_field", "model: expected an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH)")
    if uri.startswith("models:/"):
        rest = uri[len("models:/"):]
        if _LOGGED_MODEL.fullmatch(rest):
            return ModelRef(uri, model_id=rest)
        if "@" in rest:
            name, _, alias = rest.rpartition("@")
            if name and "/" not in name and _ALIAS.fullmatch(alias):
                return ModelRef(uri, name=name, alias=alias)
        else:
            name, _, version = rest.rpartition("/")
            if name and "/" not in name and _VERSION.fullmatch(version):
                return ModelRef(uri, name=name, version=version)
    elif uri.startswith("runs:/"):
        run_id, _, path = uri[len("runs:/"):].partition("/")
        path = path.strip("/")
        if _RUN_ID.fullmatch(run_id) and path and not unsafe_path(path):
            return ModelRef(uri, run_id=run_id, path=path)
    raise ModelError(400, "invalid_field", f"model: {uri[:200]!r} is not a model URI mlpd serves; use models:/NAME@ALIAS, "
                                           "models:/NAME/VERSION, models:/m-ID or runs:/RUN_ID/PATH")


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI as it is now: which files (a location in mlpd's store) and what they came from."""

    uri: str                    # what the deployment serves now, pinned: models:/NAME/3, runs:/ID/model, models:/m-ID
    location: str               # mlflow-artifacts:/... (always inside mlpd's store)
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


class ModelStore:
    """Read-only lookups in MLflow's SQLite file (the registry, runs and logged models)."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self.path = tracking.db_path(state_dir)

    def _one(self, sql: str, params: list) -> tuple | None:
        if not os.path.exists(self.path):
            return None
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            return conn.execute(sql, params).fetchone()
        finally:
            conn.close()

    def run_record(self, run_id: str | None) -> tuple[dict[str, float], dict[str, str]]:
        """(latest metrics, tags) of a run, for quality gates; empty for a version with no run."""
        if not run_id or not os.path.exists(self.path):
            return {}, {}
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            metrics = {k: v for k, v, nan in conn.execute("SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", [run_id]) if not nan}
            tags = dict(conn.execute("SELECT key, value FROM tags WHERE run_uuid = ?", [run_id]).fetchall())
        finally:
            conn.close()
        return metrics, tags

    def model_owner(self, name: str) -> str:
        """Who owns a registered model (its mlpd.owner tag; '' when it has none: then it is an admin's)."""
        row = self._one("SELECT value FROM registered_model_tags WHERE name = ? AND key = 'mlpd.owner'", [name])
        return row[0] if row else ""

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version an alias of a registered model points to now (None: no such alias)."""
        row = self._one("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?", [name, alias])
        return str(row[0]) if row else None

    def resolve(self, ref: ModelRef) -> ResolvedModel:
        """Where the model's files are now; ModelError 404 when it does not exist, 403 when its files are
        not in mlpd's store (mlpd serves only what its own store holds)."""
        if ref.alias:
            version = self.alias_version(ref.name or "", ref.alias)
            if version is None:
                raise ModelError(404, "not_found", f"registered model {ref.name!r} has no alias {ref.alias!r} (or no such model)")
            return self._version(ref.name or "", version)
        if ref.version:
            return self._version(ref.name or "", ref.version)
        if ref.model_id:
            row = self._one("SELECT artifact_location, source_run_id FROM logged_models WHERE model_id = ?", [ref.model_id])
            if row is None:
                raise ModelError(404, "not_found", f"no logged model {ref.model_id!r}")
            return ResolvedModel(ref.uri, self._checked(row[0], ref.uri), run_id=row[1])
        run = self._one("SELECT artifact_uri, lifecycle_stage FROM runs WHERE run_uuid = ?", [ref.run_id])
        if run is None:
            raise ModelError(404, "not_found", f"no run {ref.run_id!r}")
        # MLflow 3 logs a model as a logged model of the run (its files under models/m-...); older
        # clients wrote it under the run's own artifacts. MLflow resolves runs:/ID/PATH the same way.
        logged = self._one("SELECT artifact_location FROM logged_models WHERE source_run_id = ? AND name = ? "
                           "ORDER BY creation_timestamp_ms DESC LIMIT 1", [ref.run_id, ref.path])
        if logged is not None:
            return ResolvedModel(ref.uri, self._checked(logged[0], ref.uri), run_id=ref.run_id)
        location = self._checked((run[0] or "").rstrip("/") + "/" + (ref.path or ""), ref.uri)
        if not os.path.isfile(os.path.join(self.local_path(location), "MLmodel")):
            raise ModelError(404, "not_found", f"run {ref.run_id} has no model at {ref.path!r} (no MLmodel file there)")
        return ResolvedModel(ref.uri, location, run_id=ref.run_id)

    def _version(self, name: str, version: str) -> ResolvedModel:
        row = self._one("SELECT storage_location, source, run_id, status FROM model_versions WHERE name = ? AND version = ?", [name, int(version)])
        if row is None:
            raise ModelError(404, "not_found", f"registered model {name!r} has no version {version} (or no such model)")
        if row[3] not in (None, "READY"):
            raise ModelError(409, "not_ready", f"model {name!r} version {version} is {row[3]}, not READY")
        location = row[0] or row[1] or ""
        if location.startswith("models:/"):  # a version whose source is a logged model: its files are the logged model's
            found = self._one("SELECT artifact_location FROM logged_models WHERE model_id = ?", [location[len("models:/"):]])
            location = found[0] if found else ""
        elif location.startswith("runs:/"):
            run_id, _, path = location[len("runs:/"):].partition("/")
            resolved = self.resolve(ModelRef(location, run_id=run_id, path=path or "model"))
            location = resolved.location
        return ResolvedModel(f"models:/{name}/{version}", self._checked(location, f"models:/{name}/{version}"), name=name, version=version,
                             run_id=row[2])

    @staticmethod
    def _checked(location: str | None, uri: str) -> str:
        if not in_store(location):
            raise ModelError(403, "forbidden", f"the files of {uri} are not in mlpd's artifact store; mlpd serves only models stored there")
        return location.rstrip("/")

    def local_path(self, location: str) -> str:
        """The directory of a store location on this host (for reading by the daemon only)."""
        return os.path.join(tracking.artifacts_dir(self.state_dir), location[len(STORE_SCHEME):].strip("/"))


# ---------------------------------------------------------------- copying out of the store


def _open_dir(root: str, relative: str) -> int:
    """A descriptor of root/relative, every component opened without following links."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    fd = os.open(root, flags)
    try:
        for part in [p for p in relative.split("/") if p]:
            if part in (".", ".."):
                raise ModelError(403, "forbidden", "the model's location leaves mlpd's store")
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError:
                raise ModelError(404, "not_found", f"the model's files are missing from mlpd's store ({relative})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def copy_model(state_dir: str, location: str, dest: str) -> int:
    """Copy a model's files from mlpd's store into dest (made here; must not exist), world-readable so the
    replica's non-root user reads them through its read-only mount (dest's parents stay the daemon's, 0700).
    Returns the bytes copied. Refuses links and special files; caps files and bytes."""
    root = tracking.artifacts_dir(state_dir)
    src = _open_dir(root, location[len(STORE_SCHEME):])
    totals = {"bytes": 0, "files": 0}
    os.mkdir(dest, 0o755)
    try:
        _copy_dir(src, dest, totals, location)
    finally:
        os.close(src)
    return totals["bytes"]


def _copy_dir(src_fd: int, dest: str, totals: dict, where: str) -> None:
    os.chmod(dest, 0o755)
    for entry in os.scandir(src_fd):
        st = os.stat(entry.name, dir_fd=src_fd, follow_symlinks=False)
        totals["files"] += 1
        if totals["files"] > MAX_MODEL_FILES:
            raise ModelError(413, "too_large", f"the model has over {MAX_MODEL_FILES} files")
        target = os.path.join(dest, entry.name)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=src_fd)
            try:
                os.mkdir(target, 0o755)
                _copy_dir(child, target, totals, where)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            totals["bytes"] += st.st_size
            if totals["bytes"] > MAX_MODEL_BYTES:
                raise ModelError(413, "too_large", f"the model's files are over {MAX_MODEL_BYTES // 1024**3} GiB")
            fd = os.open(entry.name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=src_fd)
            with os.fdopen(fd, "rb") as fin, open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1024 * 1024)
            os.chmod(target, 0o644)
        else:
            raise ModelError(403, "forbidden", f"{where}: {entry.name!r} is a link or a special file; mlpd copies only plain files from its store")


def read_store_file(state_dir: str, location: str, name: str, limit: int = 256 * 1024) -> str | None:
    """A small text file of a model (e.g. requirements.txt), read without following links; None when absent."""
    try:
        fd = _open_dir(tracking.artifacts_dir(state_dir), location[len(STORE_SCHEME):])
    except ModelError:
        return None
    try:
        try:
            file_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        except OSError:
            return None
        with os.fdopen(file_fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ModelError(413, "too_large", f"the model's {name} is over {limit // 1024} KiB")
    return data.decode("utf-8", "replace")


def serving_requirements(text: str | None) -> str | None:
    """The model's logged requirements as its replica's environment installs them: without MLflow itself
    (the serving image's MLflow runs the scoring server; a model's pin of the full ``mlflow`` package
    would pull in its tracking server and UI), and None when nothing is left to install."""
    if not text:
        return None
    kept = []
    for line in text.splitlines():
        bare = line.split("#", 1)[0].strip()
        if not bare:
            continue
        name = re.split(r"[\s\[<>=!~;@]", bare, maxsplit=1)[0].lower().replace("_", "-")
        if name in SERVER_PACKAGES:
            continue
        kept.append(bare)
    return "\n".join(kept) + "\n" if kept else None


# ---------------------------------------------------------------- what a model takes

EXAMPLE_LIMIT = 64 * 1024  # a stored request example larger than this is not shown
_PLACEHOLDER = {"double": 0.0, "float": 0.0, "long": 0, "integer": 0, "boolean": False, "string": "text", "binary": "",
                "datetime": "2026-01-01T00:00:00"}


def input_schema(state_dir: str, location: str) -> dict[str, Any]:
    """What a model in mlpd's store takes, from its MLmodel (signature, saved input example): {"inputs":
    [{"name", "type", "required"}] or None, "outputs": same or None, "example": a request body for
    /invocations or None, "note": how the example was made or why there is none}. Read without following
    links; a model without a signature says so rather than failing."""
    import yaml  # MLflow's own dependency; loaded only here

    out: dict[str, Any] = {"inputs": None, "outputs": None, "example": None, "note": ""}
    try:
        text = read_store_file(state_dir, location, "MLmodel")
    except ModelError as exc:
        out["note"] = exc.message
        return out
    try:
        meta = yaml.safe_load(text or "") or {}
    except yaml.YAMLError:
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    signature = found if isinstance(found := meta.get("signature"), dict) else {}
    for key in ("inputs", "outputs"):
        try:
            cols = json.loads(signature.get(key) or "null")
        except (TypeError, ValueError):
            cols = None
        if isinstance(cols, list):
            out[key] = [{"name": c.get("name"), "type": c.get("type") if c.get("type") != "tensor" else
                         f"tensor {(c.get('tensor-spec') or {}).get('dtype', '')} {(c.get('tensor-spec') or {}).get('shape', '')}".strip(),
                         "required": c.get("required", True)} for c in cols if isinstance(c, dict)]
    info = found if isinstance(found := meta.get("saved_input_example_info"), dict) else {}
    serving_path = info.get("serving_input_path")
    if isinstance(serving_path, str) and "/" not in serving_path:
        try:
            saved = read_store_file(state_dir, location, serving_path, limit=EXAMPLE_LIMIT)
            out["example"] = json.loads(saved) if saved else None
            out["note"] = "the input example logged with the model" if out["example"] is not None else ""
        except (ModelError, ValueError):
            out["example"] = None
    if out["example"] is None and out["inputs"] and all(c["name"] for c in out["inputs"]) \
            and not any(c["type"].startswith("tensor") for c in out["inputs"]):
        out["example"] = {"dataframe_split": {"columns": [c["name"] for c in out["inputs"]],
                                              "data": [[_PLACEHOLDER.get(c["type"], None) for c in out["inputs"]]]}}
        out["note"] = "made from the model's signature (placeholder values)"
    if out["inputs"] is None and not out["note"]:
        out["note"] = "the model was logged without a signature: see how it was trained, or log it with input_example="
    return out


def input_of(state_dir: str, dep: dict[str, Any], revs: list[dict[str, Any]], endpoint: str) -> dict[str, Any]:
    """What the model that serves (else the one rolling out) takes: its input columns and an example request
    (the body, and a curl command that runs as written once MLPD_TOKEN is set, or with the deployment's key)."""
    by_id = {r["id"]: r for r in revs}
    rev = by_id.get(dep["current"]) or next((r for r in reversed(revs) if r["state"] == "rolling"), None)
    if rev is None:
        return {"inputs": None, "outputs": None, "example": None, "note": "no version serves yet", "curl": ""}
    schema = input_schema(state_dir, rev["location"])
    schema["version"] = rev["model_version"]
    curl = ""
    if schema["example"] is not None:
        auth = "" if dep["spec"].get("auth") == "none" else ' -H "Authorization: Bearer $MLPD_TOKEN"'
        body = json.dumps(schema["example"], separators=(",", ":")).replace("'", "'\\''")
        curl = f"curl -sS -X POST {endpoint}{auth} -H 'Content-Type: application/json' -d '{body}'"
    schema["curl"] = curl
    return schema
