"""A member's real HTTPS webhook receiver for tests: TLS with a certificate from a throw-away CA
(trustme) that the gateway is told to trust, on a loopback port it can leave and take again
(an endpoint that is down), and answers that misbehave on request (slow, huge, dripping, redirects)."""

from __future__ import annotations

import http.server
import ssl
import threading
import time
from pathlib import Path

import trustme


class Receiver:
    def __init__(self, port: int, ca_dir: Path):
        self.port = port
        self.ca = trustme.CA()
        self.ca_file = ca_dir / "webhook-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(self.context)
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.behaviour = "ok"  # ok | slow | huge | drip | redirect | error
        self.lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers[":path"] = self.path
                with receiver.lock:
                    receiver.received.append((headers, body))
                    how = receiver.behaviour
                if how == "slow":
                    time.sleep(5)
                if how == "redirect":
                    self.send_response(302)
                    self.send_header("location", "https://127.0.0.1:1/elsewhere")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(500 if how == "error" else 200)
                size = {"huge": 50 << 20, "drip": 1000}.get(how, 2)
                self.send_header("content-length", str(size))
                self.end_headers()
                try:
                    if how == "huge":
                        chunk = b"x" * (1 << 20)
                        for _ in range(50):
                            self.wfile.write(chunk)
                    elif how == "drip":
                        for _ in range(size):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.5)
                    else:
                        self.wfile.write(b"ok")
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the gateway hung up, as it should

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._server = server

    def stop(self) -> None:
        """Down: nothing listens on the port any more (a connection is refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def ids(self, path: str = "/hook") -> list[str]:
        with self.lock:
            return [headers["webhook-id"] for headers, _ in self.received if headers[":path"] == path]
