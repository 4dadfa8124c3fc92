"""A local stand-in for the Hugging Face Hub's HTTP API, serving a folder (tests only).

``huggingface_hub`` is pointed at it with ``HF_ENDPOINT`` (or ``constants.ENDPOINT`` in this
process), so listing, search, download with resume, gated repositories and uploads run through
the real client against real sockets. Repositories are folders ``ROOT/OWNER/NAME/``; the
commit of a repository is a hash of its file names and sizes.

Served: ``GET /api/models`` (search), ``GET /api/models/R[/revision/REV]`` (model info with
file sizes and LFS hashes), ``HEAD|GET /R/resolve/REV/FILE`` (ETag, X-Repo-Commit, ranges),
``GET /api/whoami-v2``, ``POST /api/repos/create``, ``POST /api/models/R/preupload/REV`` and
``POST /api/models/R/commit/REV`` (inline "regular" uploads). Test controls: ``gated`` repos
that need ``token``; ``hold(file, after_bytes)`` serves a file up to a point and then waits
until ``release()`` (a download killed mid-file); ``stalled_server()`` accepts connections and
never answers. ``log`` records each request with the bytes it sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

CHUNK = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    bytes_sent: int = 0
    authorized: bool = False


@dataclass
class LocalHub:
    root: Path
    gated: set[str] = field(default_factory=set)
    token: str = "hf_local_test_token_0123456789"
    log: list[Request] = field(default_factory=list)
    url: str = ""
    _holds: dict[str, int] = field(default_factory=dict)
    _released: threading.Event = field(default_factory=threading.Event)
    held: threading.Event = field(default_factory=threading.Event)
    _drop: bool = False

    # --- controls ---------------------------------------------------------------------------
    def hold(self, file_name: str, after_bytes: int) -> None:
        """Serve ``file_name`` up to ``after_bytes``, then wait for :meth:`release`."""
        self._holds[file_name] = after_bytes
        self._released.clear()
        self.held.clear()

    def release(self, drop: bool = False) -> None:
        """Let held downloads go on; ``drop``: close them instead (their client was killed)."""
        self._drop = drop
        self._holds.clear()
        self._released.set()

    def bytes_served(self, file_name: str) -> int:
        return sum(r.bytes_sent for r in self.log if r.method == "GET"
                   and r.path.endswith("/" + file_name) and "/resolve/" in r.path)

    # --- repositories -----------------------------------------------------------------------
    def repo_folder(self, repo_id: str) -> Path:
        return self.root / repo_id

    def files(self, repo_id: str) -> list[Path]:
        folder = self.repo_folder(repo_id)
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []

    def commit(self, repo_id: str) -> str:
        text = "".join(f"{p.relative_to(self.root)}:{p.stat().st_size};"
                       for p in self.files(repo_id))
        return hashlib.sha1(text.encode()).hexdigest()

    def info(self, repo_id: str) -> dict:
        siblings = []
        for path in self.files(repo_id):
            name = str(path.relative_to(self.repo_folder(repo_id)))
            data = path.read_bytes()
            sibling = {"rfilename": name, "size": len(data),
                       "blobId": hashlib.sha1(data).hexdigest()}
            if name.endswith((".safetensors", ".gguf", ".model")):
                sibling["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "pointerSize": 134}
            siblings.append(sibling)
        return {"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": self.commit(repo_id),
                "private": False, "disabled": False, "downloads": 7, "likes": 1, "tags": [],
                "gated": "manual" if repo_id in self.gated else False,
                "lastModified": "2026-01-01T00:00:00.000Z", "siblings": siblings}


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _json(self, payload: object, status: int = 200, headers: dict | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._json({"error": message}, status, {"X-Error-Code": code,
                                                    "X-Error-Message": message})

        def _authorized(self) -> bool:
            return self.headers.get("Authorization", "") == f"Bearer {hub.token}"

        def _record(self) -> Request:
            entry = Request(self.command, urlparse(self.path).path, self.headers.get("Range"),
                            authorized=self._authorized())
            hub.log.append(entry)
            return entry

        def _repo_and_rest(self, parts: list[str]) -> tuple[str, list[str]]:
            return "/".join(parts[:2]), parts[2:]

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            entry = self._record()
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts[:2] == ["api", "whoami-v2"]:
                if not self._authorized():
                    return self._error(401, "Unauthorized", "Invalid credentials")
                return self._json({"type": "user", "name": "tester", "orgs": [],
                                   "auth": {"accessToken": {"role": "write"}}})
            if parts[:2] == ["api", "models"] and len(parts) == 2:
                query = parse_qs(url.query).get("search", [""])[0].lower()
                hits = [{"id": f"{o.name}/{n.name}", "modelId": f"{o.name}/{n.name}",
                         "downloads": 7, "likes": 1}
                        for o in sorted(hub.root.iterdir()) if o.is_dir()
                        for n in sorted(o.iterdir()) if n.is_dir()
                        and query in f"{o.name}/{n.name}".lower()]
                return self._json(hits)
            if parts[:2] == ["api", "models"]:
                repo, _ = self._repo_and_rest(parts[2:])
                if not hub.repo_folder(repo).is_dir():
                    return self._error(404, "RepoNotFound", f"Repository {repo} not found")
                return self._json(hub.info(repo))
            if len(parts) >= 5 and parts[2] == "resolve":
                repo, rest = self._repo_and_rest(parts)
                name = "/".join(rest[2:])
                return self._file(repo, name, head, entry)
            return self._error(404, "EntryNotFound", f"{url.path} is not served here")

        def _file(self, repo: str, name: str, head: bool, entry: Request) -> None:
            path = hub.repo_folder(repo) / name
            if not hub.repo_folder(repo).is_dir():
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            if repo in hub.gated and not self._authorized():
                return self._error(401, "GatedRepo", f"Access to model {repo} is restricted")
            if not path.is_file():
                return self._error(404, "EntryNotFound", f"{name} not found in {repo}")
            data = path.read_bytes()
            start = 0
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                start = int(wanted[6:].split("-")[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            etag = hashlib.sha256(data).hexdigest()
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", hub.commit(repo))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            limit = hub._holds.get(name)
            sent = 0
            try:
                while sent < len(body):
                    if limit is not None and start + sent >= limit:
                        hub.held.set()
                        while not hub._released.wait(0.05):
                            pass
                        if hub._drop:
                            break
                        limit = None
                    piece = body[sent:sent + CHUNK]
                    if limit is not None:
                        piece = piece[:max(0, limit - start - sent)] or piece[:0]
                        if not piece:
                            continue
                    self.wfile.write(piece)
                    sent += len(piece)
                    entry.bytes_sent = sent
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:  # noqa: N802
            self._record()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization")
            if parts[:3] == ["api", "repos", "create"]:
                request = json.loads(body or b"{}")
                repo = f"{request.get('organization') or 'tester'}/{request['name']}"
                hub.repo_folder(repo).mkdir(parents=True, exist_ok=True)
                return self._json({"url": f"{hub.url}/{repo}", "name": repo})
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                files = json.loads(body).get("files", [])
                return self._json({"files": [{"path": f["path"], "uploadMode": "regular",
                                              "shouldIgnore": False} for f in files]})
            if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                repo = f"{parts[2]}/{parts[3]}"
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        value = item["value"]
                        target = hub.repo_folder(repo) / value["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value["content"]))
                commit = hub.commit(repo)
                return self._json({"commitUrl": f"{hub.url}/{repo}/commit/{commit}",
                                   "commitOid": commit, "success": True})
            return self._error(404, "EntryNotFound", f"POST {self.path} is not served here")

    return Handler


@contextmanager
def serve(root: Path, gated: set[str] | None = None) -> Iterator[LocalHub]:
    """Run a local Hub on a free loopback port for the duration of the block."""
    hub = LocalHub(root=root, gated=set(gated or ()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="local-hub", daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def stalled_server() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (a hung proxy or Hub)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
                accepted.append(connection)  # held open, never read or answered
            except OSError:
                continue

    thread = threading.Thread(target=accept, name="stalled-hub", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=10)
        for connection in accepted:
            connection.close()
        listener.close()
