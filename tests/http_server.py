"""A local HTTP server for download tests (data sets, models by URL): files by path, with one-shot
faults per path injected by the server per request, so nothing depends on timing."""

from __future__ import annotations

import http.server
import re
import socket
import struct
import threading

import pytest


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        state: Server = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        faults = state.faults.get(self.path) or []
        fault = faults.pop(0) if faults else None
        data = state.files.get(self.path)
        if data is None or fault == "404":
            self.send_error(404)
            return
        start = 0
        if rng and not state.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault == "truncate":  # fewer bytes than announced, then an orderly close
            self.wfile.write(body[: len(body) // 2])
        elif fault == "drop":  # half, then the connection is reset (RST)
            self.wfile.write(body[: len(body) // 2])
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        else:
            self.wfile.write(body)


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, dataset: str, files: dict[str, bytes]) -> None:
        self.files.update({f"/{dataset}/{name}": data for name, data in files.items()})


@pytest.fixture(scope="module")
def _running_server():
    s = Server()
    thread = threading.Thread(target=s.httpd.serve_forever, daemon=True)
    thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()
    thread.join()


@pytest.fixture
def server(_running_server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The module's server with nothing served, no faults and no requests recorded yet."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "SEGDISTILL_DATA_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    s = _running_server
    s.files, s.faults, s.requests, s.ignore_range = {}, {}, [], False
    return s
