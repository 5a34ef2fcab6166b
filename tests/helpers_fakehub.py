"""A fake Hugging Face Hub on 127.0.0.1 (http.server in a thread): just the endpoints ``huggingface_hub`` calls for
``create_repo``, ``create_branch`` and ``upload_folder`` (preupload, then one NDJSON commit with the files inlined).
Repos live in memory: ``hub.repos[repo_id] = {"private": bool, "branches": {name: {path: bytes}}}``."""

from __future__ import annotations

import base64
import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

TOKEN = "hf_fake_write_token"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.cards: list[str] = []  # README.md contents sent to /api/validate-yaml
        self.url = ""


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):  # quiet
            pass

        def _reply(self, status: int, body: dict | None = None):
            data = json.dumps(body or {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            hub.requests.append(("GET", self.path))
            self._reply(404, {"error": f"fake hub: no GET {self.path}"})

        def do_POST(self):
            hub.requests.append(("POST", self.path))
            body = self._body()
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._reply(401, {"error": "Invalid credentials in Authorization header"})
            if self.path == "/api/validate-yaml":  # the model card's metadata, checked before the commit
                content = json.loads(body)["content"]
                hub.cards.append(content)
                meta = yaml.safe_load(content.split("---")[1]) if content.startswith("---") else {}
                bad = [f"base_model {meta['base_model']!r} is not a model id"
                       for _ in [0] if str(meta.get("base_model") or "x").startswith(("/", "."))]
                return self._reply(400, {"errors": [{"message": b} for b in bad]}) if bad else self._reply(200)
            if self.path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
                hub.repos[repo_id] = {"private": req.get("visibility") == "private" or bool(req.get("private")),
                                     "branches": {"main": {}}}
                return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            m = re.fullmatch(r"/api/models/(.+?)/(preupload|commit|branch)/(.+)", self.path)
            if not m or m.group(1) not in hub.repos:
                return self._reply(404, {"error": f"fake hub: no POST {self.path}"})
            repo, kind, rev = hub.repos[m.group(1)], m.group(2), m.group(3).replace("%2F", "/")
            if kind == "branch":
                if rev in repo["branches"]:
                    return self._reply(409, {"error": "Reference already exists"})
                repo["branches"][rev] = dict(repo["branches"]["main"])
                return self._reply(200)
            if rev not in repo["branches"]:
                return self._reply(404, {"error": f"Invalid rev id: {rev}"})
            if kind == "preupload":
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
            for line in body.decode().splitlines():
                op = json.loads(line)
                if op["key"] == "file":
                    v = op["value"]
                    repo["branches"][rev][v["path"]] = base64.b64decode(v["content"])
                elif op["key"] != "header":
                    return self._reply(400, {"error": f"fake hub: unsupported commit op {op['key']}"})
            return self._reply(200, {"commitUrl": f"{hub.url}/{m.group(1)}/commit/{'0' * 40}", "commitOid": "0" * 40})

    return Handler


@contextmanager
def fake_hub():
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
