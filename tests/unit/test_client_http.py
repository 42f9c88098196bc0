"""mlpd.client speaks plain HTTP/1.1 itself (no http.client on the CLI's path): against a real HTTP
server on loopback, every way the daemon answers and every way the CLI sends a body."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlpd.client import Client, ClientError

SECOND_LINE = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or ""):
            data = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/api/v1/echo"):
            seen = {"path": self.path, "auth": self.headers["Authorization"], "host": self.headers["Host"], "agent": self.headers["User-Agent"]}
            self._send(200, json.dumps(seen).encode())
        elif self.path == "/api/v1/missing":
            self._send(404, b'{"error": {"code": "not_found", "message": "no job abc"}}')
        elif self.path == "/api/v1/garbled":
            self._send(502, b"<html>bad gateway</html>", "text/html")
        elif self.path == "/api/v1/latin":
            self._send(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=ISO-8859-1")
        elif self.path == "/api/v1/stream":
            # chunked, and the second line only once the client has read the first: a stream, not a buffer
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (b"first line\n", None, b"second ", b"line\nno newline at the end"):
                if piece is None:
                    assert SECOND_LINE.wait(10)
                    continue
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/api/v1/until-close":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 300_000)
            self.close_connection = True
        elif self.path == "/api/v1/silent":
            SECOND_LINE.wait(10)

    def do_PUT(self):
        if self.path == "/api/v1/too-big":
            self._send(413, b'{"error": {"code": "too_large", "message": "the upload is over 1 MiB"}}')
            self.close_connection = True
            return
        data = self._body()
        self._send(200, json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "length": len(data),
                                    "chunked": "chunked" in (self.headers.get("Transfer-Encoding") or ""),
                                    "type": self.headers["Content-Type"]}).encode())

    def do_POST(self):
        self._send(201, json.dumps({"got": json.loads(self._body() or b"null")}).encode())

    def do_DELETE(self):
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    SECOND_LINE.set()
    httpd.shutdown()


def test_get_post_delete_and_what_the_request_carries(server):
    c = Client(server, "tok123")
    seen = c.get("/echo", params={"state": "queued", "skip": None, "id": ["a", "b"]})
    port = server.rsplit(":", 1)[1]
    assert seen == {"path": "/api/v1/echo?state=queued&id=a&id=b", "auth": "Bearer tok123", "host": f"127.0.0.1:{port}", "agent": "mlpd-cli"}
    assert c.post("/jobs", {"command": ["echo", "é"], "gpus": 1}) == {"got": {"command": ["echo", "é"], "gpus": 1}}
    assert c.post("/jobs") == {"got": {}}
    resp = c.request("DELETE", "/jobs/x")
    assert resp.status_code == 204 and resp.content == b"" and resp.ok


def test_the_daemons_error_becomes_a_client_error_with_its_message(server):
    with pytest.raises(ClientError) as caught:
        Client(server, "t").get("/missing")
    assert (caught.value.status, caught.value.code, caught.value.message) == (404, "not_found", "no job abc")
    with pytest.raises(ClientError) as caught:
        Client(server, "t").get("/garbled")
    assert caught.value.code == "http_error" and caught.value.message == f"HTTP 502 from {server}/api/v1/garbled"


def test_headers_and_charset(server):
    resp = Client(server, "t").request("GET", "/latin")
    assert resp.text == "caf\u00e9"
    assert resp.headers["content-type"] == resp.headers.get("Content-Type") == "text/plain; charset=ISO-8859-1"
    assert resp.headers.get_content_charset() == "iso-8859-1" and resp.headers["X-Nothing"] is None
    assert "Content-Length" in resp.headers and ("Content-Length", "4") in resp.headers.items()


def test_a_chunked_stream_arrives_line_by_line_before_it_ends(server):
    lines = Client(server, "t").request("GET", "/stream", stream=True, timeout=None).iter_lines(decode_unicode=True)
    assert next(lines) == "first line"  # the server sends the rest only after this
    SECOND_LINE.set()
    assert list(lines) == ["second line", "no newline at the end"]
    resp = Client(server, "t").request("GET", "/stream", stream=True)
    assert b"".join(resp.iter_content(7)) == b"first line\nsecond line\nno newline at the end"


def test_a_body_that_ends_with_the_connection(server):
    resp = Client(server, "t").request("GET", "/until-close", stream=True)
    assert sum(len(c) for c in resp.iter_content()) == 300_000
    assert Client(server, "t").request("GET", "/until-close").content == b"x" * 300_000


def test_uploads_from_bytes_a_generator_and_a_file_with_its_length(server):
    data = bytes(range(256)) * 4000  # 1 MB
    want = hashlib.sha256(data).hexdigest()
    c = Client(server, "t")
    got = c.request("PUT", "/code/1", data=data, headers={"Content-Type": "application/gzip"}).json()
    assert got == {"sha256": want, "length": len(data), "chunked": False, "type": "application/gzip"}
    pieces = (data[i:i + 70_000] for i in range(0, len(data), 70_000))
    got = c.request("PUT", "/code/2", data=pieces, headers={"Content-Type": "application/gzip"}).json()
    assert got == {"sha256": want, "length": len(data), "chunked": True, "type": "application/gzip"}
    got = c.request("PUT", "/code/3", data=io.BytesIO(data), headers={"Content-Type": "application/gzip", "Content-Length": str(len(data))}).json()
    assert got == {"sha256": want, "length": len(data), "chunked": False, "type": "application/gzip"}


def test_an_answer_before_the_whole_upload_is_read(server):
    with pytest.raises(ClientError) as caught:
        Client(server, "t").request("PUT", "/too-big", data=b"z" * (8 * 1024 * 1024))
    assert (caught.value.status, caught.value.message) == (413, "the upload is over 1 MiB")


def test_unreachable_silent_and_not_http_are_one_line_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClientError) as caught:
        Client(f"http://127.0.0.1:{port}", "t").get("/whoami")
    assert caught.value.code == "unreachable" and "is it running?" in caught.value.message
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        with pytest.raises(ClientError) as caught:
            Client(url, "t", timeout=0.3).get("/whoami")  # accepted by the kernel, never answered
        assert caught.value.code == "timeout" and "did not answer in time" in caught.value.message
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]

        def answer_garbage():
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        thread = threading.Thread(target=answer_garbage)
        thread.start()
        with pytest.raises(ClientError) as caught:
            Client(url, "t", timeout=5).get("/whoami")
        thread.join()
        assert caught.value.code == "unreachable"


def test_a_header_value_with_a_line_break_is_refused_before_sending(server):
    with pytest.raises(ValueError, match="line break"):
        Client(server, "tok\r\nX-Evil: 1").get("/echo")


def test_a_plain_http_call_loads_neither_http_client_nor_ssl(server):
    code = (
        "import sys\n"
        "from mlpd.client import Client\n"
        f"assert Client({server!r}, 't').get('/echo')['auth'] == 'Bearer t'\n"
        "print(' '.join(m for m in ('http.client', 'ssl', 'email.parser', 'requests') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
