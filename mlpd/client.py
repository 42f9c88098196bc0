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
import sys
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
        _ = parts.port  # raises ValueError for a port that is not a number from 1 to 65535
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

    One connection per call, and no HTTP library: the CLI makes a few calls per command, and
    importing one would cost more than it saves. Plain http:// (the daemon itself) is spoken by
    _send_plain over a socket; http.client, whose imports (email, ssl) cost a CLI command about a
    quarter of its start-up, is loaded only for https:// (a proxy in front of the daemon)."""

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
        from urllib.parse import urlencode, urlsplit

        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if params:
            target += ("&" if "?" in target else "?") + urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        sent = {"User-Agent": "mlpd-cli", **self.headers, **(headers or {})}
        body = data
        if json_body is not None:
            body, sent["Content-Type"] = json.dumps(json_body).encode(), "application/json"
        if parts.scheme != "https":
            return _send_plain(method, parts, target, body, sent, timeout, stream)
        import http.client
        import ssl

        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, context=ssl.create_default_context())
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
        url = path if path.startswith("http") else f"{self.url}/api/v1{path}"
        try:
            resp = self._send(method, url, stream, self.timeout if timeout == "default" else timeout, params, json, data, headers)
        except OSError as exc:
            # ssl is loaded only by an https:// call; a plain-HTTP call cannot raise its errors (and need not import it)
            ssl = sys.modules.get("ssl")
            if ssl is not None and isinstance(exc, ssl.SSLError):
                raise ClientError(f"cannot talk TLS to {self.url}: the daemon speaks plain HTTP unless a proxy in front of it "
                                  f"serves HTTPS; try {self.url.replace('https://', 'http://', 1)}", code="unreachable") from None
            if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
                hint = f" (the daemon speaks plain HTTP: try {self.url.replace('https://', 'http://', 1)})" if self.url.startswith("https://") else ""
                raise ClientError(f"the mlpd daemon at {self.url} did not answer in time{hint}", code="timeout") from None
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


# ---------------------------------------------------------------- plain HTTP/1.1 over a socket

_MAX_LINE = 65536
_MAX_HEADERS = 100


class Headers:
    """Response headers: case-insensitive get / [] (None when absent), items(), and the charset."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self._pairs = pairs

    def get(self, name: str, default: Any = None) -> Any:
        name = name.lower()
        return next((v for k, v in self._pairs if k.lower() == name), default)

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get_all(self, name: str, failobj: Any = None) -> Any:
        found = [v for k, v in self._pairs if k.lower() == name.lower()]
        return found or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def keys(self) -> list[str]:
        return [k for k, _ in self._pairs]

    def get_content_charset(self, failobj: Any = None) -> Any:
        for param in (self.get("content-type") or "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip().strip('"'):
                return value.strip().strip('"').lower()
        return failobj


class _PlainResponse:
    """One HTTP/1.1 response read from a socket: status, headers, and the body by Content-Length,
    chunked, or up to the close (the request says Connection: close). read / read1 as http.client's."""

    def __init__(self, sock, method: str):
        self._sock, self._fp = sock, sock.makefile("rb")
        while True:
            self.status = self._status_line()
            pairs = self._header_lines()
            if not 100 <= self.status < 200:
                break  # 1xx (100 Continue): another status line follows
        self.headers = Headers(pairs)
        self._left: int | None = None  # bytes left of the body (length) or of the current chunk (chunked)
        self._chunked = "chunked" in (self.headers.get("transfer-encoding") or "").lower()
        self._done = False
        if method == "HEAD" or self.status in (204, 304):
            self._done = True
        elif not self._chunked and (length := self.headers.get("content-length")) is not None:
            try:
                self._left = int(length)
            except ValueError:
                raise ConnectionError(f"bad Content-Length from the daemon: {self.headers['content-length']!r}") from None
            self._done = self._left == 0

    def _line(self) -> bytes:
        line = self._fp.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise ConnectionError("the daemon sent a header line longer than 64 KiB")
        return line

    def _status_line(self) -> int:
        line = self._line()
        if not line:
            raise ConnectionError("the daemon closed the connection without an answer")
        version, _, rest = line.decode("latin-1").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/") or not code.isdigit():
            raise ConnectionError(f"not an HTTP answer: {line[:80]!r}")
        return int(code)

    def _header_lines(self) -> list[tuple[str, str]]:
        pairs: list[tuple[str, str]] = []
        while (line := self._line()) not in (b"\r\n", b"\n", b""):
            if len(pairs) >= _MAX_HEADERS:
                raise ConnectionError(f"the daemon sent more than {_MAX_HEADERS} headers")
            name, _, value = line.decode("latin-1").partition(":")
            pairs.append((name.strip(), value.strip()))
        return pairs

    def read1(self, n: int = 65536) -> bytes:
        """Up to n bytes of the body, as soon as some arrive; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            if not self._left:
                if self._left == 0:
                    self._line()  # the CRLF after the previous chunk's data
                size = self._line().split(b";", 1)[0].strip()
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise ConnectionError(f"bad chunk size from the daemon: {size[:20]!r}") from None
                if self._left == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._done = True
                    return b""
            data = self._fp.read1(min(n, self._left))
        elif self._left is not None:
            data = self._fp.read1(min(n, self._left))
        else:
            data = self._fp.read1(n)
            self._done = not data
            return data
        if not data:
            raise ConnectionError("the daemon closed the connection in the middle of its answer")
        self._left -= len(data)
        if self._left == 0 and not self._chunked:
            self._done = True
        return data

    def read(self, n: int | None = None) -> bytes:
        """n bytes of the body (fewer only at its end); all of the rest when n is None."""
        parts, got = [], 0
        while n is None or got < n:
            data = self.read1(65536 if n is None else n - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return b"".join(parts)

    def close(self) -> None:
        self._fp.close()
        self._sock.close()


def _blocks(body: Any) -> Iterator[bytes]:
    """A streamed request body (a file or an iterable of bytes) in pieces."""
    if hasattr(body, "read"):
        while block := body.read(256 * 1024):
            yield block.encode("iso-8859-1") if isinstance(block, str) else block
    else:
        for block in body:
            yield block.encode("iso-8859-1") if isinstance(block, str) else bytes(block)


def _send_plain(method: str, parts: Any, target: str, body: Any, headers: dict[str, str], timeout: float | None,
                stream: bool) -> Response:
    """One request over plain HTTP/1.1 (Connection: close) and its response, as http.client would send
    it: Content-Length for bytes, chunked transfer for a file or an iterable without a Content-Length."""
    import socket

    host = parts.hostname or ""
    sent = {"Host": parts.netloc.rpartition("@")[2], "Accept-Encoding": "identity", "Connection": "close", **headers}
    if isinstance(body, str):
        body = body.encode("iso-8859-1")
    if body is None:
        if method in ("POST", "PUT", "PATCH"):
            sent["Content-Length"] = "0"
    elif isinstance(body, (bytes, bytearray, memoryview)):
        sent["Content-Length"] = str(len(body))
    elif not any(k.lower() == "content-length" for k in sent):
        sent["Transfer-Encoding"] = "chunked"
    for name, value in sent.items():
        if any(c in f"{name}{value}" for c in "\r\n\0"):
            raise ValueError(f"invalid header {name!r}: it holds a line break")
    head = "".join([f"{method} {target} HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in sent.items()), "\r\n"]).encode("latin-1")
    # an ASCII host as bytes: getaddrinfo would otherwise load the idna codec to encode it
    sock = socket.create_connection((host.encode() if host.isascii() else host, parts.port or 80), timeout=timeout)  # type: ignore[arg-type]
    try:
        try:
            if body is None or isinstance(body, (bytes, bytearray, memoryview)):
                sock.sendall(head + bytes(body or b""))
            else:
                sock.sendall(head)
                chunked = sent.get("Transfer-Encoding") == "chunked"
                for block in _blocks(body):
                    if block:
                        sock.sendall(b"%X\r\n%b\r\n" % (len(block), block) if chunked else block)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered before reading the whole body (e.g. 413 for an upload too big): read that answer
        raw = _PlainResponse(sock, method)
        return Response(raw, raw, stream)
    except BaseException:
        sock.close()
        raise
