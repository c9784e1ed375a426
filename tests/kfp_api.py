"""A stand-in for the Kubeflow Pipelines API server (v2beta1 REST), for the real ``kfp.Client``
to talk to: only the endpoints our commands call (health, experiments, runs, recurring runs,
pipelines and their uploads), recording each request's headers and JSON body (an upload's
body: the uploaded file's text) so tests assert what the client sent."""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict  # names in lower case
    body: dict | None


@dataclass
class FakeKfp:
    """The server's state; ``fail_runs`` answers run creation with that HTTP status."""

    experiments: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)  # by display name
    versions: list[dict] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    fail_runs: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posted(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "POST" and r.path == f"{API}/{path}"]

    def answer(self, request: Request) -> tuple[int, dict]:
        with self.lock:
            self.requests.append(request)
            return self.route(request)

    def route(self, request: Request) -> tuple[int, dict]:
        resource = request.path.removeprefix(API)
        if request.method == "GET" and resource == "/healthz":
            return 200, {"multi_user": False}
        if resource == "/experiments":
            return self.experiment(request)
        if resource.startswith("/pipelines"):
            return self.pipeline(request, resource)
        if request.method == "POST" and resource == "/runs":
            if self.fail_runs:
                return self.fail_runs, {"error_message": "refused", "code": 3}
            return 200, {
                **request.body,
                "run_id": f"run-{len(self.posted('runs'))}",
                "state": "PENDING",
            }
        if request.method == "POST" and resource == "/recurringruns":
            return 200, {**request.body, "recurring_run_id": "recurring-1", "status": "ENABLED"}
        if match := re.fullmatch(r"/runs/([\w-]+)", resource):
            return 200, {"run_id": match[1], "state": "PENDING"}
        return 404, {"error_message": f"no route {request.method} {request.path}"}

    def pipeline(self, request: Request, resource: str) -> tuple[int, dict]:
        query = {key: values[0] for key, values in request.query.items()}
        if request.method == "POST" and resource == "/pipelines/upload":
            made = {
                "pipeline_id": f"pipeline-{len(self.pipelines) + 1}",
                "display_name": query["name"],
                "description": query.get("description"),
            }
            self.pipelines[query["name"]] = made
            self.versions.append(
                {
                    "pipeline_id": made["pipeline_id"],
                    "pipeline_version_id": f"version-{len(self.versions) + 1}",
                    "display_name": query["name"],
                    "spec": request.body,
                }
            )
            return 200, made
        if request.method == "POST" and resource == "/pipelines/upload_version":
            if query["pipelineid"] not in {p["pipeline_id"] for p in self.pipelines.values()}:
                return 404, {"error_message": f"no pipeline {query['pipelineid']}", "code": 5}
            made = {
                "pipeline_id": query["pipelineid"],
                "display_name": query["name"],
                "description": query.get("description"),
                "pipeline_version_id": f"version-{len(self.versions) + 1}",
            }
            self.versions.append({**made, "spec": request.body})
            return 200, made
        if request.method == "GET" and resource == "/pipelines":
            wanted = re.search(r'"string_?[vV]alue":\s*"([^"]+)"', query.get("filter", ""))
            found = [p for name, p in self.pipelines.items() if wanted and name == wanted[1]]
            return 200, {"pipelines": found or None, "total_size": len(found)}
        return 404, {"error_message": f"no route {request.method} {request.path}"}

    def experiment(self, request: Request) -> tuple[int, dict]:
        if request.method == "POST":
            created = {**request.body, "experiment_id": f"exp-{len(self.experiments) + 1}"}
            self.experiments[created["display_name"]] = created
            return 200, created
        query = request.query.get("filter", [""])[0]
        wanted = re.search(r'"string_?[vV]alue":\s*"([^"]+)"', query)
        found = [e for name, e in self.experiments.items() if wanted and name == wanted[1]]
        return 200, {"experiments": found, "total_size": len(found)}


def handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def serve(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
                body = raw.decode(errors="replace")  # an upload: the file in its form
            else:
                body = json.loads(raw) if raw else None
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, reply = state.answer(
                Request(method, url.path, parse_qs(url.query), headers, body)
            )
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self.serve("GET")

        def do_POST(self):  # noqa: N802
            self.serve("POST")

    return Handler


@contextmanager
def fake_kfp(state: FakeKfp | None = None):
    """A running stand-in on a free loopback port: yields (its URL, its state)."""
    state = state or FakeKfp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(state))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
