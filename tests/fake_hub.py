"""A fake Hugging Face Hub HTTP server for tests: standard library only, on 127.0.0.1, never the network.

`FakeHub` answers the endpoints that `huggingface_hub` (2.x, which talks through `httpx2`, so request mocks do not
intercept it) and `transformers` use for `create_repo`, `upload_folder` / `create_commit` / `push_to_hub`,
`hf_hub_download`, `snapshot_download` and `from_pretrained("org/name")`. It keeps every repo in memory with its git
history, so tests can assert exactly what was sent (`repos`, `commits`) and download it back.

Uploads are kept inline: the preupload answer is always `uploadMode: "regular"`, so no LFS/Xet transfer happens.
Not supported: pull requests (`create_pr=True`), LFS/Xet uploads, copies from other repos, tags, pagination.

Use the `fake_hub` fixture (it also points the already-imported clients at the server and isolates the cache),
or `with FakeHub() as hub:` plus `point_clients_at(hub, monkeypatch, tmp_path)`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

FAKE_USER = "fake-user"
FAKE_TOKEN = "hf_fakehubtoken0000000000000000000000"
_PREFIXES = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}
_API_RE = re.compile(
    r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)"
    r"(?:/(?P<op>preupload|commit|tree|revision|paths-info|branch)(?:/(?P<rest>.*))?)?$"
)
_RESOLVE_RE = re.compile(
    r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: what the Hub sends as a regular file's ETag and tree `oid`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeCommit:
    """One commit received by the fake Hub (`repo_id` keeps the `datasets/` or `spaces/` prefix, as in `repos`).

    `added` lists the paths sent with content, `deleted` the paths removed (a deleted folder ends with "/").
    """

    repo_id: str
    revision: str
    message: str
    description: str
    added: list[str]
    deleted: list[str]
    oid: str


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)  # branch name -> commit oid
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> {path: content}


class _HubError(Exception):
    """An error answer: status, `X-Error-Code` (what huggingface_hub maps to its exception classes), JSON extras."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.headers, self.extra = status, code, headers or {}, extra


class FakeHub:
    """In-memory Hub on `endpoint` ("http://127.0.0.1:PORT"), served by a background thread while started.

    Attributes tests read: `repos` (key -> {path: bytes} of the `main` branch; the key is the repo id for models and
    `"datasets/<id>"` / `"spaces/<id>"` otherwise), `commits` (every `FakeCommit` received, in order), `created`
    (the JSON payloads of `create_repo` calls), `requests` and `unhandled` ((method, path) of all / unanswered calls),
    `errors` (exceptions raised while answering: a non-empty list means the fake, not the client, is at fault).
    """

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.commits: list[FakeCommit] = []
        self.created: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._git: dict[str, _Repo] = {}
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            for conn in list(self._connections):  # a pooled client connection must not reach a stopped hub
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----- state (also usable directly by tests to seed repos) -----

    def create_repo(self, repo_id: str, repo_type: str = "model") -> str:
        """Create an empty repo whose `main` branch has one empty commit; return its key in `repos`."""
        key = _PREFIXES[repo_type + "s"] + repo_id
        with self._lock:
            if key in self._git:
                raise _HubError(409, f"You already created this {repo_type} repo", url=f"{self.endpoint}/{key}")
            oid = self._new_oid(key)
            self._git[key] = _Repo(branches={"main": oid}, snapshots={oid: {}})
            self.repos[key] = {}
        return key

    def add_files(self, repo_id: str, files: dict[str, bytes], message: str = "seed", repo_type: str = "model") -> str:
        """Commit `files` to `main` of a repo (created if missing) without HTTP; return the commit oid."""
        key = _PREFIXES[repo_type + "s"] + repo_id
        with self._lock:
            if key not in self._git:
                self.create_repo(repo_id, repo_type)
            return self._commit(key, "main", message, "", dict(files), [])

    def _new_oid(self, key: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{key}:{self._counter}".encode()).hexdigest()

    def _commit(
        self, key: str, branch: str, message: str, description: str, added: dict[str, bytes], deleted: list[str]
    ) -> str:
        repo = self._repo(key)
        files = dict(repo.snapshots[self._resolve(key, branch)])
        for path in deleted:  # a file, or a folder given with a trailing "/"
            gone = [p for p in files if p == path or p.startswith(path.rstrip("/") + "/")]
            if not gone:
                raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            for p in gone:
                del files[p]
        files.update(added)
        oid = self._new_oid(key)
        repo.snapshots[oid], repo.branches[branch] = files, oid
        if branch == "main":
            self.repos[key] = files
        self.commits.append(FakeCommit(key, branch, message, description, list(added), list(deleted), oid))
        return oid

    def _repo(self, key: str) -> _Repo:
        if key not in self._git:
            raise _HubError(404, "Repository not found", "RepoNotFound")
        return self._git[key]

    def _resolve(self, key: str, revision: str) -> str:
        repo = self._repo(key)
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.snapshots:
            return revision
        raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _files(self, key: str, revision: str) -> dict[str, bytes]:
        return self._git[key].snapshots[self._resolve(key, revision)]

    def _entries(self, files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
        """Tree entries (files and folders) under `prefix`, in the shape of the Hub's /tree answer."""
        base = prefix.strip("/") + "/" if prefix.strip("/") else ""
        out: dict[str, dict[str, Any]] = {}
        for path in sorted(files):
            if not path.startswith(base):
                continue
            parts = path[len(base) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                folder = base + "/".join(parts[:i])
                out.setdefault(
                    folder,
                    {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder},
                )
            if recursive or len(parts) == 1:
                out[path] = {"type": "file", "oid": git_blob_sha1(files[path]), "size": len(files[path]), "path": path}
        return list(out.values())

    # ----- HTTP routes -----

    def handle(
        self,
        method: str,
        raw_path: str,
        query: dict[str, list[str]],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.requests.append((method, raw_path))
            try:
                return self._route(method, raw_path, query, body)
            except _HubError as err:
                headers = {"X-Error-Message": str(err).encode("ascii", "backslashreplace").decode(), **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                return err.status, headers, json.dumps({"error": str(err), **err.extra}).encode()
            except Exception as err:  # a bug here, or a request we misparse: 400 (not 5xx, which clients retry)
                self.errors.append(f"{method} {raw_path}: {err!r}")
                return 400, {}, json.dumps({"error": f"FakeHub failed: {err!r}"}).encode()

    def _route(
        self,
        method: str,
        raw_path: str,
        query: dict[str, list[str]],
        body: bytes,
    ) -> tuple[int, dict[str, str], bytes]:
        if method == "POST" and raw_path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
            key = self.create_repo(repo_id, payload.get("type") or "model")
            return _json({"url": f"{self.endpoint}/{key}", "name": repo_id})
        if method in ("POST", "DELETE") and raw_path == "/api/repos/delete":
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or FAKE_USER}/{payload['name']}"
            key = _PREFIXES[(payload.get("type") or "model") + "s"] + repo_id
            self._repo(key)
            del self._git[key], self.repos[key]
            return _json({})
        if method == "GET" and raw_path == "/api/whoami-v2":
            return _json(
                {
                    "type": "user",
                    "name": FAKE_USER,
                    "fullname": FAKE_USER,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
                }
            )
        if method == "POST" and raw_path == "/api/validate-yaml":
            return _json({"errors": [], "warnings": []})
        if (m := _RESOLVE_RE.match(raw_path)) and method in ("GET", "HEAD"):
            key = _PREFIXES[(m["kind"] or "models")] + unquote(m["repo"])
            oid = self._resolve(key, unquote(m["rev"]))
            files, path = self._files(key, oid), unquote(m["path"])
            if path not in files:
                raise _HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
            content = files[path]
            return (
                200,
                {
                    "ETag": f'"{git_blob_sha1(content)}"',
                    "X-Repo-Commit": oid,
                    "Content-Type": "application/octet-stream",
                },
                content,
            )
        if not (m := _API_RE.match(raw_path)):
            self.unhandled.append((method, raw_path))
            return 404, {}, b'{"error": "not served by FakeHub"}'
        key = _PREFIXES[m["kind"]] + unquote(m["repo"])
        op, rest = m["op"], m["rest"] or ""
        rev, _, sub = rest.partition("/")
        rev = unquote(rev) or "main"
        if op in ("preupload", "commit") and "create_pr" in query:
            raise _HubError(400, "FakeHub does not support pull requests")
        if method == "GET" and op in (None, "revision"):
            oid = self._resolve(key, rev)
            files = self._files(key, oid)
            return _json(
                {
                    "id": unquote(m["repo"]),
                    "sha": oid,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                    "tags": [],
                    "downloads": 0,
                }
            )
        if method == "POST" and op == "preupload":
            files = self._files(key, rev)
            return _json(
                {
                    "files": [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
                        }
                        for f in json.loads(body)["files"]
                    ]
                }
            )
        if method == "POST" and op == "commit":
            if rev not in self._repo(key).branches:  # commits go to branches only, as on the Hub
                raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            header, added, deleted = {}, {}, []
            for line in body.splitlines():
                item = json.loads(line) if line.strip() else None
                if item is None:
                    continue
                if item["key"] == "header":
                    header = item["value"]
                elif item["key"] == "file":
                    added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    path = item["value"]["path"]
                    deleted.append(path.rstrip("/") + "/" if item["key"] == "deletedFolder" else path)
                else:
                    raise _HubError(400, f"FakeHub does not support {item['key']} operations")
            oid = self._commit(key, rev, header.get("summary", ""), header.get("description", ""), added, deleted)
            return _json(
                {
                    "success": True,
                    "commitOid": oid,
                    "commitUrl": f"{self.endpoint}/{key}/commit/{oid}",
                    "pullRequestUrl": None,
                }
            )
        if method == "GET" and op == "tree":
            files = self._files(key, rev)
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = self._entries(files, unquote(sub), recursive)
            if unquote(sub) and not entries:
                raise _HubError(404, f"{unquote(sub)} does not exist on {rev}", "EntryNotFound")
            return _json(entries)
        if method == "POST" and op == "paths-info":
            files = self._files(key, rev)
            wanted = set(parse_qs(body.decode()).get("paths", []))
            entries = self._entries(files, "", recursive=True)
            return _json([e for e in entries if e["path"] in wanted])
        if method == "POST" and op == "branch":
            branch, repo = unquote(rest), self._repo(key)
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: {branch}")
            start = (json.loads(body) if body else {}).get("startingPoint") or "main"
            repo.branches[branch] = self._resolve(key, start)
            return _json({})
        self.unhandled.append((method, raw_path))
        return 404, {}, b'{"error": "not served by FakeHub"}'


def _json(obj: Any) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries a Content-Length
    fake_hub: FakeHub

    def setup(self) -> None:
        super().setup()
        self.fake_hub._connections.add(self.connection)

    def finish(self) -> None:
        self.fake_hub._connections.discard(self.connection)
        super().finish()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers, then the final blank line
                pass
        else:
            body = self.rfile.read(length) if length else b""
        url = urlsplit(self.path)
        status, headers, payload = self.fake_hub.handle(self.command, url.path, parse_qs(url.query), body)
        if status == 200 and (rng := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))):
            payload = payload[int(rng[1]) : int(rng[2]) + 1 if rng[2] else None]
            status = 206
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""


def point_clients_at(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Point huggingface_hub, transformers and datasets (imported or not yet) at `hub`, with a cache under `home`.

    Environment variables cover modules imported later and subprocesses; the patches cover the values that
    already-imported modules computed at import time (endpoint, URL template, offline flag, cache dir, and the
    module-level `HfApi` instances of huggingface_hub and transformers).
    """
    import huggingface_hub
    import huggingface_hub.hf_api
    from huggingface_hub import constants

    cache = home / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for name, value in {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGINGFACE_CO_STAGING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
    template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)
    if (tf_hub := sys.modules.get("transformers.utils.hub")) is not None:
        monkeypatch.setattr(tf_hub, "_hf_api", None)  # its shared HfApi is rebuilt from the patched ENDPOINT
    if (ds_config := sys.modules.get("datasets.config")) is not None:
        monkeypatch.setattr(ds_config, "HF_ENDPOINT", hub.endpoint)
        ds_template = hub.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
        monkeypatch.setattr(ds_config, "HUB_DATASETS_URL", ds_template)
        monkeypatch.setattr(ds_config, "HF_HUB_OFFLINE", False)


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """Fixture `fake_hub`: a started `FakeHub`, all Hub clients pointed at it, HF_HOME under `tmp_path / "hf_home"`.

    Registered under the name `fake_hub`; make it visible with `from fake_hub import fake_hub_fixture  # noqa: F401`
    in a test module or conftest (the function has another name so that ruff's F811 stays quiet).
    """
    with FakeHub() as hub:
        point_clients_at(hub, monkeypatch, tmp_path / "hf_home")
        yield hub
        tf_hub = sys.modules.get("transformers.utils.hub")
        if tf_hub is not None and getattr(tf_hub._hf_api, "endpoint", None) == hub.endpoint:
            tf_hub._hf_api = None  # built during the test (transformers imported late): don't leak a dead endpoint


fake_hub = fake_hub_fixture  # same fixture; `from fake_hub import fake_hub` also works (then F811 needs a noqa)
