"""The serving proxy: HAProxy in front of the replicas, at serving.listen, kept current over its runtime API.

Clients call ``/serve/NAME/invocations`` (and ``/ping``, ``/health``, ``/version``) on
serving.listen. HAProxy checks the caller and passes the request to a replica of the revision that
serves (and, for a canary, of the canary revision, by weight); no Python runs on the request path.
The daemon (:class:`ServingFront`, one call of :meth:`ServingFront.tick` every half second) keeps
what HAProxy knows equal to the state database, over the runtime API on a Unix socket:

- ``deployments.map``: deployment name -> one of :data:`BACKENDS` pre-declared backends;
- servers in each backend (``add server``/``del server``): the replicas of the serving and canary
  revisions that answered their last /ping; weights give a canary its share (``set weight``); a
  replica whose revision is replaced is put in maintenance (``set server ... state maint``: no new
  request, the ones in flight finish) before it is deleted;
- ``users.map``: SHA-256 of the secret of every live mlpd token -> its user's name, or ``*`` for an
  admin's own token; ``owners.map``: deployment -> owner; ``keys.map``: SHA-256 of each deployment's
  key -> deployment; ``open.map``: the deployments with auth "none". A revoked or expired token
  leaves the map within a tick (``del map``).

HAProxy runs detached from the daemon (its own session, its pidfile in STATE/run/serving): a daemon
that is killed, restarted or upgraded leaves it answering, and the next daemon adopts it (the
pidfile's process answers on the runtime socket with the configuration the daemon would write) and
changes only what differs. The map files on disk are rewritten with every change, so a proxy
started afresh begins with the current maps.

Why HAProxy rather than a second nginx: servers, weights and maps change at run time over its
socket, without a reload (nginx's open-source build can do neither), and a token's hash is looked
up in a map with its own converters (``http_auth_bearer``, ``sha2``, ``map``), so authentication
needs no subrequest to Python.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field

log = logging.getLogger("mlpd.serving.front")
BACKENDS = 256  # deployments the proxy can serve at once (each gets one pre-declared backend)
HAPROXY_PATHS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
MAPS = ("deployments", "users", "owners", "keys", "open")
ADMIN = "*"  # users.map's value for an admin's own token (no user name is "*")
WEIGHT_SCALE = 256  # HAProxy's largest weight: a revision's servers share its part of it
FULL_SYNC_EVERY = 5.0  # seconds: expiries and anything else a commit counter misses are caught this often
RESTART_LIMIT = 5  # proxy starts within RESTART_WINDOW before the daemon gives up (until it restarts)
RESTART_WINDOW = 60.0
ENDPOINT_PATH = r"^/serve/[a-z0-9][a-z0-9-]{0,39}/(invocations|ping|health|version)$"


class ServingFrontError(Exception):
    """The serving proxy cannot run as configured; the message names the setting or the package."""


def find_haproxy() -> str | None:
    """The haproxy binary, or None."""
    return shutil.which("haproxy") or next((p for p in HAPROXY_PATHS if os.access(p, os.X_OK)), None)


def resolve_listen(value: str, server_listen: str) -> str:
    """serving.listen as HOST:PORT ("auto": server.listen's host and the port after its port), or "" for none."""
    if value != "auto":
        return value
    host, _, port = server_listen.rpartition(":")
    return f"{host}:{int(port) + 1}"


def run_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "run", "serving")


def _json(code: str, message: str) -> str:
    text = '{"error": {"code": "%s", "message": "%s"}}' % (code, message)
    assert "'" not in text and "\\" not in text, text  # quoted in single quotes in the configuration
    return text


def config_text(directory: str, listen: str, max_body_mb: int, timeout_s: int = 120) -> str:
    """haproxy.cfg: the frontend on listen, the checks of path, method and caller, and BACKENDS empty backends."""
    m = {name: os.path.join(directory, f"{name}.map") for name in MAPS}
    sock = os.path.join(directory, "haproxy.sock")
    challenge = "hdr WWW-Authenticate 'Bearer realm=\"mlpd\"'"
    no_token = _json("unauthorized", "no token: send Authorization: Bearer <your mlpd token or the deployment key>")
    bad_token = _json("unauthorized", "invalid, revoked or expired token (or not this deployment key)")
    lines = [
        "global",
        f"  stats socket {sock} mode 600 level admin",
        "  stats timeout 10s",
        "  maxconn 4096",
        "  tune.bufsize 32768",
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 75s",
        "  timeout http-request 10s",
        "  timeout http-keep-alive 75s",
        f"  timeout server {timeout_s}s",
        "  timeout queue 10s",
        "  balance roundrobin",
        # A replica that refused the connection or closed it without an answer has run nothing of
        # the request: it goes once more to another server (predictions have no side effects).
        "  retries 3",
        "  option redispatch 1",
        "  retry-on conn-failure empty-response 503",
        "  http-reuse safe",
        "  option http-buffer-request",
        f"  http-error status 503 content-type application/json string '{_json('unavailable', 'this deployment has no healthy replica now; see mlpd deployments show NAME')}' hdr Retry-After 2",
        f"  http-error status 504 content-type application/json string '{_json('timeout', f'the model did not answer within {timeout_s}s')}'",
        f"  http-error status 502 content-type application/json string '{_json('bad_gateway', 'no replica accepted the request; try again')}' hdr Retry-After 1",
        "frontend serve",
        f"  bind {listen}",
        f"  http-request return status 404 content-type application/json string '{_json('not_found', 'no such endpoint; a deployment answers /serve/NAME/invocations, ping, health and version')}' unless {{ path_reg {ENDPOINT_PATH} }}",
        "  http-request set-var(txn.dep) path,field(3,/)",
        "  http-request set-var(txn.endpoint) path,field(4,/)",
        f"  http-request set-var(txn.backend) var(txn.dep),map({m['deployments']})",
        f"  acl open var(txn.dep),map({m['open']}) -m found",
        "  acl has_token http_auth_bearer -m found",
        # A person's token is mlpd_ID_SECRET and its row keeps SHA-256(SECRET); a deployment's key is hashed whole.
        "  http-request set-var(txn.hash) http_auth_bearer,regsub(^mlpd_[0-9a-f]+_,),sha2(256),hex,lower if has_token",
        f"  http-request set-var(txn.user) var(txn.hash),map({m['users']}) if has_token",
        f"  http-request set-var(txn.owner) var(txn.dep),map({m['owners']})",
        f"  http-request set-var(txn.keyof) var(txn.hash),map({m['keys']}) if has_token",
        "  acl known_user var(txn.user) -m found",
        f"  acl admin var(txn.user) -m str {ADMIN}",
        "  acl owner var(txn.user),strcmp(txn.owner) eq 0",
        "  acl its_key var(txn.keyof),strcmp(txn.dep) eq 0",
        f"  http-request return status 401 content-type application/json string '{no_token}' {challenge} if !open !has_token",
        f"  http-request return status 401 content-type application/json string '{bad_token}' {challenge} if !open !its_key !known_user",
        f"  http-request return status 404 content-type application/json string '{_json('not_found', 'no such deployment')}' if !{{ var(txn.backend) -m found }}",
        f"  http-request return status 404 content-type application/json string '{_json('not_found', 'no such deployment')}' if !open !its_key !admin !owner",
        "  acl post method POST",
        "  acl get method GET HEAD",
        f"  http-request return status 405 content-type application/json string '{_json('method_not_allowed', '/invocations takes POST')}' hdr Allow POST if !post {{ var(txn.endpoint) -m str invocations }}",
        f"  http-request return status 405 content-type application/json string '{_json('method_not_allowed', 'this endpoint takes GET')}' hdr Allow GET if !get !{{ var(txn.endpoint) -m str invocations }}",
        f"  http-request return status 413 content-type application/json string '{_json('too_large', f'the request body is over serving.max_body_mb ({max_body_mb} MiB)')}' if {{ req.hdr_val(content-length) gt {max_body_mb * 1024 * 1024} }}",
        "  http-request del-header authorization",
        "  http-request del-header cookie",
        "  http-request set-path /%[var(txn.endpoint)]",
        # What the model's code writes beyond its body stays behind: cookies and redirects would act for it on this host.
        "  http-response del-header set-cookie",
        "  http-response del-header location",
        "  http-response del-header refresh",
        "  http-response del-header link",
        "  http-response set-header X-Content-Type-Options nosniff",
        "  http-response set-header Content-Security-Policy sandbox",
        "  http-response set-header X-Mlpd-Revision %[srv_name,field(2,-)]",
        "  http-response set-header X-Mlpd-Model-Version %[srv_name,field(3,-)]",
        "  use_backend %[var(txn.backend)]",
    ]
    for index in range(BACKENDS):
        lines += [f"backend b{index}"]
    return "\n".join(lines) + "\n"


def server_name(seq: int, version: str | None, job_id: str) -> str:
    """A replica's server name: s-SEQ-VERSION-JOB (the response headers read the revision and version from it)."""
    return f"s-{seq}-{version or ''}-{job_id}"


# ------------------------------------------------------------------ what should be
@dataclass
class Desired:
    """What the proxy should know: per deployment its owner, key hash, openness and servers; the live tokens."""

    deployments: dict[str, dict] = field(default_factory=dict)  # name -> {owner, key_hash, open, servers: {name: (port, weight)}}
    users: dict[str, str] = field(default_factory=dict)  # token secret hash -> user name or ADMIN


def weights(current: list, canary: list, canary_percent: int) -> dict:
    """Weights of the serving revision's and the canary's servers ([(name, port)]): each revision's share of
    WEIGHT_SCALE split among its servers; a canary with no server gives the serving one all of it."""
    out = {}
    share = canary_percent if canary and current else (100 if canary else 0)
    for servers, part in ((current, 100 - share), (canary, share)):
        for name, port in servers:
            out[name] = (port, max(1, round(WEIGHT_SCALE * part / 100 / len(servers))) if part else 0)
    return {name: v for name, v in out.items() if v[1] > 0}


def desired_state(conn: sqlite3.Connection, now: float) -> Desired:
    """Read what the proxy should know from the state database (a read-only connection)."""
    conn.row_factory = sqlite3.Row
    want = Desired()
    import json

    for dep in conn.execute("""SELECT d.id, d.name, d.owner, d.key_hash, d.spec, d.current, d.canary, c.canary_percent
                               FROM deployments d LEFT JOIN deployment_revisions c ON c.id = d.canary"""):
        servers: dict[str, list] = {dep["current"]: [], dep["canary"]: []}
        for rep in conn.execute("""SELECT r.port, r.revision, r.job_id, v.seq, v.model_version FROM deployment_replicas r
                                   JOIN jobs j ON j.id = r.job_id JOIN deployment_revisions v ON v.id = r.revision
                                   WHERE r.deployment = ? AND r.healthy = 1 AND j.state = 'running'""", [dep["id"]]):
            if rep["revision"] in servers and rep["revision"] is not None:
                servers[rep["revision"]].append((server_name(rep["seq"], rep["model_version"], rep["job_id"]), rep["port"]))
        want.deployments[dep["name"]] = {
            "owner": dep["owner"], "key_hash": dep["key_hash"], "open": json.loads(dep["spec"]).get("auth") == "none",
            "servers": weights(servers[dep["current"]] if dep["current"] else [], servers[dep["canary"]] if dep["canary"] else [],
                               dep["canary_percent"] or 0)}
    for tok in conn.execute("""SELECT t.secret_hash, t.job_id, u.name, u.role, j.kind FROM tokens t JOIN users u ON u.id = t.user_id
                               LEFT JOIN jobs j ON j.id = t.job_id
                               WHERE t.revoked_at IS NULL AND u.removed_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?)""", [now]):
        admin = tok["role"] == "admin" and tok["job_id"] is None  # as mlpd.users.User.is_admin: a job's token is its owner's, never an admin's
        want.users[tok["secret_hash"]] = ADMIN if admin else tok["name"]
    return want


def next_expiry(conn: sqlite3.Connection, now: float) -> float | None:
    row = conn.execute("SELECT MIN(expires_at) FROM tokens WHERE revoked_at IS NULL AND expires_at > ?", [now]).fetchone()
    return row[0] if row else None


def plan_maps(want: Desired, assigned: dict[str, str]) -> dict[str, dict[str, str]]:
    """The maps' entries for want; a deployment keeps the backend it has in assigned, a new one takes a free one."""
    used = set(assigned.values())
    free = [f"b{i}" for i in range(BACKENDS) if f"b{i}" not in used]
    maps: dict[str, dict[str, str]] = {"users": dict(want.users), "deployments": {}, "owners": {}, "keys": {}, "open": {}}
    for name, dep in sorted(want.deployments.items()):
        backend = assigned.get(name) or (free.pop(0) if free else None)
        if backend is None:
            log.error("deployment %s gets no endpoint on serving.listen: the proxy serves at most %d deployments", name, BACKENDS)
            continue
        maps["deployments"][name] = backend
        maps["owners"][name] = dep["owner"]
        maps["keys"][dep["key_hash"]] = name
        if dep["open"]:
            maps["open"][name] = "1"
    return maps


def read_map_file(path: str) -> dict[str, str]:
    try:
        with open(path) as fh:
            return dict(line.split(None, 1) for line in fh.read().splitlines() if len(line.split()) == 2)
    except OSError:
        return {}


# ------------------------------------------------------------------ the runtime API
class RuntimeApi:
    """HAProxy's runtime API on its Unix socket: one connection per command."""

    def __init__(self, path: str, timeout: float = 2.0):
        self.path, self.timeout = path, timeout

    def __call__(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode(errors="replace")

    def answers(self) -> bool:
        try:
            return "Name: HAProxy" in self("show info")
        except OSError:
            return False

    def map_entries(self, path: str) -> dict[str, str]:
        out = {}
        for line in self(f"show map {path}").splitlines():
            parts = line.split()
            if len(parts) == 3:  # "0x55c1... key value"
                out[parts[1]] = parts[2]
        return out

    def servers(self) -> dict[str, dict[str, tuple[int, int, str]]]:
        """{backend: {server: (port, weight, admin state)}} from 'show servers state'."""
        out: dict[str, dict] = {}
        for line in self("show servers state").splitlines():
            parts = line.split()
            if len(parts) < 19 or not parts[0].isdigit():
                continue
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight ... srv_port (18)
            out.setdefault(parts[1], {})[parts[3]] = (int(parts[18]), int(parts[7]), parts[6])
        return out


def _check(answer: str, command: str) -> None:
    text = answer.strip()
    if text and not text.startswith(("New server registered", "Server deleted")) and "done" not in text.lower():
        raise ServingFrontError(f"haproxy refused '{command}': {text[:300]}")


# ------------------------------------------------------------------ the daemon's part
class ServingFront:
    """Starts or adopts the proxy and keeps it equal to the state database (the daemon calls tick())."""

    def __init__(self, state_dir: str, db_path: str, listen: str, max_body_mb: int, binary: str):
        self.state_dir, self.db_path, self.listen, self.binary = state_dir, db_path, listen, binary
        self.dir = run_dir(state_dir)
        self.conf = os.path.join(self.dir, "haproxy.cfg")
        self.pidfile = os.path.join(self.dir, "haproxy.pid")
        self.api = RuntimeApi(os.path.join(self.dir, "haproxy.sock"))
        self.text = config_text(self.dir, listen, max_body_mb)
        self.conn: sqlite3.Connection | None = None
        self.data_version: int | None = None
        self.synced_at = 0.0
        self.expiry: float | None = None
        self.applied: Desired | None = None  # what the proxy was last made to know (None: read it from the proxy)
        self.starts: list[float] = []
        self.given_up = False
        self.idle = False  # no deployment and no proxy: nothing to do until the database changes

    # -------------------------------------------------------------- the process
    def pid(self) -> int | None:
        """The running proxy's pid when it is ours (the pidfile's process is haproxy with our configuration)."""
        try:
            with open(self.pidfile) as fh:
                pid = int(fh.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            return None
        return pid if any(a.endswith(b"haproxy") for a in argv[:1]) and self.conf.encode() in argv else None

    def running_config(self) -> str | None:
        try:
            with open(self.conf) as fh:
                return fh.read()
        except OSError:
            return None

    def ensure_running(self) -> bool:
        """Adopt the running proxy, or start one; False while none runs (the daemon logs why)."""
        pid = self.pid()
        if pid is not None and self.running_config() == self.text and self.api.answers():
            return True
        if self.given_up:
            return False
        now = time.monotonic()
        self.starts = [t for t in self.starts if now - t < RESTART_WINDOW] + [now]
        if len(self.starts) > RESTART_LIMIT:
            self.given_up = True
            log.error("the serving proxy (haproxy) failed to start %d times within %.0fs; it is not started again until the daemon "
                      "restarts. Requests to /serve on serving.listen (%s) fail; the daemon's own /serve path still works",
                      RESTART_LIMIT, RESTART_WINDOW, self.listen)
            return False
        self.start(pid)
        return self.api.answers()

    def start(self, old_pid: int | None) -> None:
        """Write the configuration and the maps as they should be, then start haproxy detached
        (replacing old_pid, a proxy of ours with another configuration, without dropping its listener)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        want = self.desired()
        self.write_maps(plan_maps(want, read_map_file(os.path.join(self.dir, "deployments.map"))))
        with open(self.conf + ".tmp", "w") as fh:
            fh.write(self.text)
        os.replace(self.conf + ".tmp", self.conf)
        check = subprocess.run([self.binary, "-c", "-q", "-f", self.conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise ServingFrontError(f"haproxy refuses the configuration {self.conf}: {check.stderr.strip()[-500:]}")
        argv = [self.binary, "-D", "-f", self.conf, "-p", self.pidfile]
        if old_pid:
            argv += ["-sf", str(old_pid)]
        # Its own session, no inherited descriptors (the state lock above all): it outlives the daemon,
        # and a new daemon may start while it runs.
        started = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, start_new_session=True, timeout=30)
        if started.returncode != 0:
            raise ServingFrontError(f"haproxy did not start on {self.listen} (serving.listen): {started.stderr.strip()[-500:]}")
        deadline = time.monotonic() + 5
        while not self.api.answers() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.applied = None
        log.info("started the serving proxy (haproxy, pid %s) on %s", self.pid(), self.listen)

    def stop(self) -> None:
        """Stop the proxy (removing a deployment's state directory, tests); the daemon's own stop leaves it running."""
        pid = self.pid()
        if pid:
            os.kill(pid, 15)

    # -------------------------------------------------------------- the state
    def _connection(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = sqlite3.connect(f"file:{urllib.parse.quote(self.db_path)}?mode=ro", uri=True, timeout=5, check_same_thread=False)
        return self.conn

    def desired(self) -> Desired:
        return desired_state(self._connection(), time.time())

    def changed(self, now: float) -> bool:
        """Whether the state database changed since the last sync (PRAGMA data_version), a token expired, or a while passed."""
        version = self._connection().execute("PRAGMA data_version").fetchone()[0]
        due = (self.expiry is not None and time.time() >= self.expiry) or now - self.synced_at >= FULL_SYNC_EVERY
        changed = version != self.data_version or due
        self.data_version = version
        return changed

    def tick(self, now: float | None = None) -> None:
        """One look: the proxy runs (adopted, or started again), and knows what the state database says.

        No proxy is started while there is no deployment, so a daemon that serves nothing runs none."""
        now = time.monotonic() if now is None else now
        if self.applied is not None and not self.ensure_running():
            self.applied = None  # it died and could not be started again: try again on the next change
        if not self.changed(now) and (self.applied is not None or self.idle):
            return
        want = self.desired()
        self.synced_at = now
        self.idle = not want.deployments and self.applied is None and self.pid() is None
        if self.idle:
            return
        if not self.ensure_running():
            return
        self.expiry = next_expiry(self._connection(), time.time())
        self.sync(want)

    def actual(self) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
        maps = {name: self.api.map_entries(os.path.join(self.dir, f"{name}.map")) for name in MAPS}
        return maps, self.api.servers()

    def sync(self, want: Desired) -> None:
        """Change what differs between the proxy and want, in the order that keeps requests answered: revoked
        tokens and keys out first (a refusal must not wait for anything), then new servers, then the maps,
        then the servers that go. A command HAProxy refuses is logged and the rest still done; ServingFrontError
        at the end names the first refusal (the next tick tries again)."""
        maps, servers = self.actual()
        wanted_maps = plan_maps(want, maps["deployments"])
        refused: list[str] = []

        def run(command: str, checked: bool = True) -> None:
            answer = self.api(command)
            if checked:
                try:
                    _check(answer, command)
                except ServingFrontError as exc:
                    refused.append(str(exc))

        for kind in ("users", "keys"):
            path = os.path.join(self.dir, f"{kind}.map")
            for key in set(maps[kind]) - set(wanted_maps[kind]):
                run(f"del map {path} {key}", checked=False)
        # Servers of the deployments that stay, before traffic may reach them.
        for name, dep in want.deployments.items():
            backend = wanted_maps["deployments"].get(name)
            if backend is None:
                continue
            have = servers.get(backend, {})
            for server, (port, weight) in dep["servers"].items():
                if server not in have:
                    run(f"add server {backend}/{server} 127.0.0.1:{port} weight {weight}")
                    run(f"enable server {backend}/{server}")
                    continue
                if have[server][1] != weight:
                    run(f"set weight {backend}/{server} {weight}")
                if have[server][2] != "0":  # in maintenance: back in service (a replica healthy again)
                    run(f"set server {backend}/{server} state ready")
        # The maps: additions and changes, then removals (a deployment gone).
        for kind in MAPS:
            path = os.path.join(self.dir, f"{kind}.map")
            have, wanted = maps[kind], wanted_maps[kind]
            for key, value in wanted.items():
                if key not in have:
                    run(f"add map {path} {key} {value}")
                elif have[key] != value:
                    run(f"set map {path} {key} {value}")
            for key in set(have) - set(wanted):
                run(f"del map {path} {key}", checked=False)
        # Servers that go: in maintenance at once (requests in flight finish), deleted once idle.
        wanted_servers = {(wanted_maps["deployments"][n], s) for n, d in want.deployments.items() if n in wanted_maps["deployments"]
                          for s in d["servers"]}
        for backend, have in servers.items():
            for server, (_, _, admin_state) in have.items():
                if (backend, server) in wanted_servers:
                    continue
                if admin_state == "0":
                    run(f"set server {backend}/{server} state maint", checked=False)
                run(f"del server {backend}/{server}", checked=False)  # refused while connections remain: tried again next tick
        self.write_maps(wanted_maps)
        if refused:
            raise ServingFrontError(refused[0])
        self.applied = want

    def write_maps(self, maps: dict[str, dict[str, str]]) -> None:
        """The map files as the proxy knows them, for a proxy started afresh."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for kind in MAPS:
            path = os.path.join(self.dir, f"{kind}.map")
            entries = maps.get(kind, {})
            tmp = f"{path}.tmp"
            with open(tmp, "w") as fh:
                fh.writelines(f"{k} {v}\n" for k, v in entries.items())
            os.replace(tmp, path)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
