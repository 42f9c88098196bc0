"""The mlpd HTTP client: the CLI uses it, and so can a notebook.

    from mlpd.client import Client
    c = Client.from_env()          # MLPD_URL/MLPD_TOKEN, else what `mlpd login` stored
    c.get("/whoami")

Credentials: MLPD_URL and MLPD_TOKEN in the environment win (as inside job
containers and notebooks); otherwise the file `mlpd login` writes, 0600, in
$XDG_CONFIG_HOME/mlpd/credentials.json (default ~/.config/mlpd/).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

DEFAULT_URL = "http://127.0.0.1:8470"


class ClientError(Exception):
    """A failed call, with the daemon's error code and message (or why it could not be reached)."""

    def __init__(self, message: str, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


class NotLoggedIn(ClientError):
    pass


def normalize_url(url: str) -> str:
    """The daemon's base URL from what a person typed: a scheme added when missing (http), and a
    path that belongs under it (/mlflow, /api/v1, /healthz) dropped. ClientError for anything else."""
    from urllib.parse import urlsplit

    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https"):
        raise ClientError(f"{url!r}: expected an http:// or https:// URL of the daemon, e.g. http://127.0.0.1:8470", code="invalid_url")
    if not parts.hostname:
        raise ClientError(f"{url!r}: no host in the URL; e.g. http://127.0.0.1:8470", code="invalid_url")
    try:
        parts.port
    except ValueError:
        raise ClientError(f"{url!r}: the port is not a number from 1 to 65535", code="invalid_url") from None
    path = parts.path.rstrip("/")
    for suffix in ("/mlflow", "/api/v1", "/healthz"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
    return f"{parts.scheme}://{parts.netloc}{path}"


def credentials_path() -> str:
    """Where `mlpd login` keeps the URL and token."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "mlpd", "credentials.json")


def save_credentials(url: str, token: str) -> str:
    """Store URL and token readable by the user alone; return the path."""
    path = credentials_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_credentials() -> tuple[str | None, str | None]:
    """(url, token): the environment first, then the stored file."""
    url, token = os.environ.get("MLPD_URL"), os.environ.get("MLPD_TOKEN")
    if url and token:
        return url, token
    try:
        with open(credentials_path()) as fh:
            stored = json.load(fh)
    except (OSError, ValueError):
        stored = {}
    return url or stored.get("url"), token or stored.get("token")


class Response:
    """An HTTP response (what the CLI needs of one): status_code, headers, content, text, json(), and
    iter_content / iter_lines for streams read as they arrive."""

    def __init__(self, raw, conn, stream: bool):
        self.status_code, self.headers, self._raw, self._conn = raw.status, raw.headers, raw, conn
        self._content: bytes | None = None
        if not stream:
            self._content = raw.read()
            conn.close()

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def content(self) -> bytes:
        if self._content is None:
            self._content = self._raw.read()
            self._conn.close()
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode(self.headers.get_content_charset() or "utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def iter_content(self, chunk_size: int | None = None) -> Iterator[bytes]:
        """The body in pieces as they arrive (chunk_size None: whatever the socket has)."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        try:
            while chunk := (self._raw.read1(65536) if chunk_size is None else self._raw.read(chunk_size)):
                yield chunk
        finally:
            self._conn.close()

    def iter_lines(self, decode_unicode: bool = False) -> Iterator[Any]:
        pending = b""
        for chunk in self.iter_content():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode("utf-8", errors="replace") if decode_unicode else line
        if pending:
            yield pending.decode("utf-8", errors="replace") if decode_unicode else pending


class Client:
    """Calls /api/v1 with a token; raises ClientError with the daemon's message on failure.

    Plain http.client from the standard library, one connection per call: the CLI makes a few
    calls per command, and importing an HTTP library would cost more than it saves."""

    def __init__(self, url: str, token: str | None, timeout: float = 30):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def from_env(cls, url: str | None = None) -> "Client":
        """A client from the environment or stored login; NotLoggedIn when there is neither."""
        stored_url, token = load_credentials()
        url = url or stored_url
        if not url or not token:
            raise NotLoggedIn(f"not logged in: run 'mlpd login {url or 'http://HOST:PORT'}'", code="not_logged_in")
        return cls(url, token)

    def _send(self, method: str, url: str, stream: bool, timeout: float | None, params: dict | None = None, json_body: Any = None,
              data: Any = None, headers: dict | None = None) -> Response:
        import http.client
        from urllib.parse import urlencode, urlsplit

        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if "?" in target else "?") + urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        sent = {"User-Agent": "mlpd-cli", **self.headers, **(headers or {})}
        body = data
        if json_body is not None:
            body, sent["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        if parts.scheme == "https":
            import ssl

            conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                                            context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            try:
                conn.request(method, target, body=body, headers=sent)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon answered before reading the whole body (e.g. 413 for an upload too big): read that answer
            return Response(conn.getresponse(), conn, stream)
        except BaseException:
            conn.close()
            raise

    def request(self, method: str, path: str, stream: bool = False, timeout: Any = "default", params: dict | None = None,
                json: Any = None, data: Any = None, headers: dict | None = None) -> Response:
        """One API call; returns the response (2xx) or raises ClientError. timeout: seconds the daemon may
        stay silent (the client's default unless given; None: no limit, for live streams)."""
        import socket
        import ssl

        url = path if path.startswith("http") else f"{self.url}/api/v1{path}"
        try:
            resp = self._send(method, url, stream, self.timeout if timeout == "default" else timeout, params, json, data, headers)
        except ssl.SSLError:
            raise ClientError(f"cannot talk TLS to {self.url}: the daemon speaks plain HTTP unless a proxy in front of it "
                              f"serves HTTPS; try {self.url.replace('https://', 'http://', 1)}", code="unreachable") from None
        except (socket.timeout, TimeoutError):
            hint = f" (the daemon speaks plain HTTP: try {self.url.replace('https://', 'http://', 1)})" if self.url.startswith("https://") else ""
            raise ClientError(f"the mlpd daemon at {self.url} did not answer in time{hint}", code="timeout") from None
        except OSError:
            raise ClientError(f"cannot reach the mlpd daemon at {self.url}: is it running? ('mlpd daemon', or 'systemctl status mlpd')", code="unreachable") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                code, message = err["code"], err["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", f"HTTP {resp.status_code} from {url}"
            if resp.status_code == 401:
                message += "; log in again with 'mlpd login'" if "mlpd login" not in message else ""
            raise ClientError(message, code=code, status=resp.status_code)
        return resp

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=body if body is not None else {}, **kwargs).json()

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs).json()

    def healthz(self) -> dict[str, Any]:
        return self.request("GET", f"{self.url}/healthz").json()

    def stream_lines(self, path: str, **params: Any) -> Iterator[str]:
        """Lines of a streamed response (e.g. live logs), as they arrive."""
        resp = self.request("GET", path, stream=True, timeout=3600 * 24, params=params)
        for line in resp.iter_lines(decode_unicode=True):
            yield line
