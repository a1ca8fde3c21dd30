"""An HTTP stand-in for an OpenAI-compatible server: records a real server's exchanges, or replays them.

Recording (the vLLM tests with BON_RECORD=tests/data/vllm_serve.json) forwards every request to a
real `vllm serve` and saves (method, path, JSON body, status, response). Replaying (the default
tests) answers a request only when its body equals a recorded one, so the default environment
checks both what `bon` sends and how it reads what a real server sent back.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def _key(method: str, path: str, body: bytes) -> str:
    parsed = json.loads(body) if body else None
    return json.dumps([method, path.split("?")[0], parsed], sort_keys=True)


class ReplayServer:
    """``record``: forward to ``upstream`` and keep each exchange; else answer from ``exchanges``.

    ``fail_first`` answers the first N requests with HTTP 503 (a server that is restarting).
    """

    def __init__(self, exchanges: list[dict] | None = None, upstream: str | None = None, fail_first: int = 0):
        self.exchanges = list(exchanges or [])
        self.table = {
            _key(e["method"], e["path"], json.dumps(e["body"]).encode() if e["body"] is not None else b""): e
            for e in self.exchanges
        }
        self.upstream, self.fail_first, self.requests = upstream, fail_first, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append((method, self.path, json.loads(body) if body else None))
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    return self._answer(503, b'{"error": {"message": "restarting"}}')
                if outer.upstream is not None:
                    return self._forward(method, body)
                entry = outer.table.get(_key(method, self.path, body))
                if entry is None:
                    return self._answer(
                        404,
                        json.dumps({"error": {"message": f"no recorded exchange for {method} {self.path}"}}).encode(),
                    )
                self._answer(entry["status"], json.dumps(entry["response"]).encode())

            def _forward(self, method: str, body: bytes) -> None:
                request = urllib.request.Request(
                    outer.upstream + self.path,
                    data=body or None,
                    method=method,
                    headers={"Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=600) as r:
                        status, payload = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, payload = e.code, e.read()
                outer.exchanges.append(
                    {
                        "method": method,
                        "path": self.path.split("?")[0],
                        "body": json.loads(body) if body else None,
                        "status": status,
                        "response": json.loads(payload),
                    }
                )
                self._answer(status, payload)

            def do_GET(self):  # noqa: N802
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ReplayServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.exchanges, indent=1) + "\n")
