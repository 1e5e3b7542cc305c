"""A local Hugging Face Hub stand-in for tests: stdlib HTTP on 127.0.0.1, repos kept in memory.

Why it exists: this project has no network, yet pushing and pulling models and datasets must be
tested with the STOCK clients (huggingface_hub, transformers, datasets), not with mocks of them.
The stand-in speaks the subset of the Hub HTTP protocol that those clients call for create /
upload (regular + Git LFS "basic" transfer) / commit / info / tree / download. Anything else is
answered with 501 and recorded in ``HubStandIn.unknown_requests``; the ``hub_endpoint`` fixture
fails the test when that list grows, so an unserved route can never pass silently.

Client code must run in a subprocess (``run_client``) because huggingface_hub reads
``HF_ENDPOINT`` once, at import time. The subprocess gets a socket guard that refuses every
address but loopback and reports each refusal on stderr, so a test proves it reached nothing else.
"""
from __future__ import annotations

import base64
import datetime as _dt
import fnmatch
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
GUARD_MARKER = "HUB-STAND-IN GUARD: refused"
# The default .gitattributes the Hub writes into every new repo: it decides which files go to LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib",
        "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot",
        "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors",
        "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip",
        "*.zst", "*tfevents*",
    )
)
# datasets.load_dataset asks the dataset viewer (HF_ENDPOINT with "datasets-server." in front) for
# a Parquet export, best effort and with no switch; the guard refuses it, the load goes on.
DATASET_VIEWER_HOST = "datasets-server.127.0.0.1"
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub sends files of 10 MiB and more to LFS
REPO_TYPES = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
YAML_BLOCK = re.compile(r"^\s*---\r?\n([\S\s]*?)\r?\n---[ \t]*(\r?\n|$)")


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as ``oid`` / ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class RepoFileEntry:
    """One file of a commit: regular files keep their bytes, LFS files point into the LFS store."""

    size: int
    blob_oid: str
    content: bytes | None = None
    lfs_sha256: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None


@dataclass
class Commit:
    oid: str
    title: str
    date: str
    files: dict[str, RepoFileEntry]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An error answer in the Hub's format (status + ``X-Error-Code`` the clients map to exceptions)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = body or {}


class HubStandIn:
    """The in-memory Hub: repos, LFS store, and a request log. Thread-safe through one lock."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.unknown_requests: list[str] = []
        self.request_log: list[tuple[str, str, int]] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def storage_endpoint(self) -> str:
        """Where LFS bytes live: another origin (``localhost``), as the Hub's CDN / S3 is another host.

        The clients treat a redirect to another origin like the real CDN: they do not follow it on
        HEAD, and they must not send the Hub token there (the storage routes refuse it).
        """
        return self.endpoint.replace("127.0.0.1", "localhost")

    def start(self) -> "HubStandIn":
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-stand-in",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def served_routes(self) -> list[str]:
        """Distinct ``METHOD route`` pairs answered so far, for reports and assertions."""
        return sorted({f"{method} {route}" for method, route, _ in self.request_log})

    # -- repo state ---------------------------------------------------------------------------
    def _now(self) -> str:
        return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _new_commit(self, repo: Repo, branch: str, title: str, files: dict[str, RepoFileEntry]) -> Commit:
        listing = "".join(f"{p}\0{e.blob_oid}\n" for p, e in sorted(files.items()))
        seed = f"{repo.repo_type}/{repo.repo_id}\n{repo.branches.get(branch)}\n{title}\n{next(self._counter)}\n"
        commit = Commit(hashlib.sha1((seed + listing).encode()).hexdigest(), title, self._now(), files)
        repo.commits[commit.oid] = commit
        repo.branches[branch] = commit.oid
        return commit

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository Not Found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def get_commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if (repo_type, repo_id) in self.repos:
                # The Hub names the existing repo in the 409 body; create_repo(exist_ok=True) reads it.
                url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
                raise HubError(409, "You already created this repo", body={"url": url})
            repo = Repo(repo_type, repo_id, private, self._now())
            attributes = DEFAULT_GITATTRIBUTES.encode()
            entry = RepoFileEntry(len(attributes), git_blob_oid(attributes), content=attributes)
            self._new_commit(repo, "main", "initial commit", {".gitattributes": entry})
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def add_files(self, repo_type: str, repo_id: str, files: dict[str, bytes], title: str = "add files") -> Commit:
        """Seed a repo directly (creating it if needed), routing files to LFS like an upload would:
        for tests whose subject is the download side."""
        with self.lock:
            repo = self.repos.get((repo_type, repo_id)) or self.create_repo(repo_type, repo_id, private=False)
            head = self.get_commit(repo, "main")
            lines: list[dict] = [{"key": "header", "value": {"summary": title}}]
            for path, content in files.items():
                if self.upload_mode(head, path, len(content), content[:512]) == "lfs":
                    oid = hashlib.sha256(content).hexdigest()
                    self.lfs_objects[oid] = content
                    lines.append({"key": "lfsFile", "value": {"path": path, "algo": "sha256", "oid": oid}})
                else:
                    encoded = base64.b64encode(content).decode()
                    lines.append({"key": "file", "value": {"path": path, "content": encoded, "encoding": "base64"}})
            return self.apply_commit(repo, "main", lines)

    def upload_mode(self, commit: Commit, path: str, size: int, sample: bytes) -> str:
        """LFS when .gitattributes says so, when the file is large, or when it looks binary."""
        attributes = commit.files.get(".gitattributes")
        patterns = []
        if attributes is not None and attributes.content is not None:
            patterns = [
                line.split()[0] for line in attributes.content.decode().splitlines()
                if "filter=lfs" in line and line.strip() and not line.startswith("#")
            ]
        name = path.rsplit("/", 1)[-1]
        for pattern in patterns:
            if fnmatch.fnmatch(path if "/" in pattern else name, pattern):
                return "lfs"
        return "lfs" if size >= LFS_SIZE_THRESHOLD or b"\0" in sample else "regular"

    def apply_commit(self, repo: Repo, revision: str, lines: list[dict]) -> Commit:
        """Apply an NDJSON commit payload atomically: validate every line, then write one commit."""
        with self.lock:
            head = self.get_commit(repo, revision)
            if revision not in repo.branches:
                raise HubError(400, f"Commits are only accepted on branches, got {revision!r}")
            if not lines or lines[0].get("key") != "header":
                raise HubError(400, "the commit payload must start with a header line")
            header = lines[0]["value"]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HubError(412, f"parentCommit {parent} is not the head {head.oid} of {revision}")
            files = dict(head.files)
            for line in lines[1:]:
                self._apply_operation(files, line)
            title = header.get("summary") or "commit"
            return self._new_commit(repo, revision, title, files)

    def _apply_operation(self, files: dict[str, RepoFileEntry], line: dict) -> None:
        key, value = line.get("key"), line.get("value", {})
        path = value.get("path", "")
        if key == "file":
            if value.get("encoding") != "base64":
                raise HubError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
            content = base64.b64decode(value["content"])
            files[path] = RepoFileEntry(len(content), git_blob_oid(content), content=content)
        elif key == "lfsFile":
            oid = value.get("oid")
            blob = self.lfs_objects.get(oid)
            if blob is None:
                raise HubError(400, f"LFS object {oid} for {path} was never uploaded")
            if "size" in value and value["size"] != len(blob):
                raise HubError(400, f"LFS object {oid} for {path}: size {value['size']} != stored {len(blob)}")
            pointer = lfs_pointer(oid, len(blob))
            files[path] = RepoFileEntry(len(blob), git_blob_oid(pointer), lfs_sha256=oid)
        elif key == "deletedFile":
            if path not in files:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            del files[path]
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            for name in [name for name in files if name.startswith(prefix)]:
                del files[name]
        else:
            raise HubError(501, f"commit operation {key!r} is not served by the stand-in", "NotServed")

    # -- views ---------------------------------------------------------------------------------
    def tree_entries(self, commit: Commit, path: str, recursive: bool, expand: bool) -> list[dict]:
        """Entries under ``path`` like ``/api/.../tree``: folders first-level or all, files."""
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in commit.files):
            raise HubError(404, f"{path} does not exist in commit {commit.oid}", "EntryNotFound")
        folders: set[str] = set()
        files: list[str] = []
        for name in sorted(commit.files):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                files.append(name)
        entries = [self.folder_entry(commit, folder, expand) for folder in sorted(folders)]
        return entries + [self.file_entry(commit, name, expand) for name in files]

    def file_entry(self, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.files[path]
        data: dict = {"type": "file", "oid": entry.blob_oid, "size": entry.size, "path": path}
        if entry.is_lfs:
            pointer_size = len(lfs_pointer(entry.lfs_sha256, entry.size))
            data["lfs"] = {"oid": entry.lfs_sha256, "size": entry.size, "pointerSize": pointer_size}
        if expand:
            data["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return data

    def folder_entry(self, commit: Commit, path: str, expand: bool) -> dict:
        children = "".join(f"{n}{e.blob_oid}" for n, e in sorted(commit.files.items()) if n.startswith(path + "/"))
        data: dict = {"type": "directory", "oid": hashlib.sha1(children.encode()).hexdigest(), "size": 0, "path": path}
        if expand:
            data["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return data

    def repo_info(self, repo: Repo, commit: Commit, blobs: bool) -> dict:
        siblings = []
        for name, entry in sorted(commit.files.items()):
            sibling: dict = {"rfilename": name}
            if blobs:
                sibling.update(size=entry.size, blobId=entry.blob_oid)
                if entry.is_lfs:
                    pointer_size = len(lfs_pointer(entry.lfs_sha256, entry.size))
                    sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_sha256, "pointerSize": pointer_size}
            siblings.append(sibling)
        card = _card_data(commit)
        author = repo.repo_id.split("/")[0]
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": author, "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created_at,
            "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": list(card.get("tags") or []), "siblings": siblings, "cardData": card or None,
        }
        if repo.repo_type == "model":
            info.update(library_name=card.get("library_name"), pipeline_tag=card.get("pipeline_tag"),
                        modelId=repo.repo_id)
        return info


def _card_data(commit: Commit) -> dict:
    readme = commit.files.get("README.md")
    if readme is None or readme.content is None:
        return {}
    match = YAML_BLOCK.search(readme.content.decode("utf-8", errors="replace"))
    data = yaml.safe_load(match.group(1)) if match else None
    return data if isinstance(data, dict) else {}


def validate_card_yaml(content: str) -> list[str]:
    """The errors the Hub's validate-yaml would report for the README front matter we care about."""
    match = YAML_BLOCK.search(content)
    if match is None:
        return []
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        return [f"YAML front matter does not parse: {exc}"]
    if data is None:
        return []
    if not isinstance(data, dict):
        return [f"YAML front matter must be a mapping, got {type(data).__name__}"]
    errors = []
    for index in data.get("model-index") or []:
        if not isinstance(index, dict) or "name" not in index or not isinstance(index.get("results"), list):
            errors.append(f"model-index entries need 'name' and a 'results' list, got {index!r}")
            continue
        for result in index["results"]:
            for key in ("task", "dataset", "metrics"):
                if key not in result:
                    errors.append(f"model-index result lacks {key!r}: {result!r}")
    return errors


# ----------------------------------------------------------------------------------------------
# HTTP layer
# ----------------------------------------------------------------------------------------------
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_TYPE = r"(?P<rtype>models|datasets)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/{_TYPE}/{_REPO}/paths-info/(?P<rev>[^/]+)$"), "paths_info"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}/revision/(?P<rev>[^/]+)$"), "info"),
    ("GET", re.compile(rf"^/api/{_TYPE}/{_REPO}$"), "info"),
    ("POST", re.compile(rf"^/(?P<dprefix>datasets/)?{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/upload/(?P<oid>[0-9a-f]{64})$"), "lfs_upload"),
    ("POST", re.compile(r"^/_lfs/verify/(?P<oid>[0-9a-f]{64})$"), "lfs_verify"),
    ("GET", re.compile(r"^/_lfs/objects/(?P<oid>[0-9a-f]{64})$"), "lfs_object"),
    ("HEAD", re.compile(r"^/_lfs/objects/(?P<oid>[0-9a-f]{64})$"), "lfs_object"),
    ("GET", re.compile(rf"^/(?P<dprefix>datasets/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("HEAD", re.compile(rf"^/(?P<dprefix>datasets/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
]


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to ``HubStandIn``; speaks HTTP/1.1 keep-alive like the real Hub."""

    protocol_version = "HTTP/1.1"
    hub: HubStandIn

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the request log lives in ``hub.request_log``."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -----------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        body = self._read_body()
        for route_method, pattern, name in _ROUTES:
            match = pattern.match(split.path)
            if match and route_method == method:
                try:
                    status = getattr(self, f"_route_{name}")(method, body, **match.groupdict())
                except HubError as err:
                    status = self._send_error(err)
                self.hub.request_log.append((method, name, status))
                return
        message = f"{method} {self.path}"
        self.hub.unknown_requests.append(message)
        print(f"hub stand-in: route not served: {message}", file=sys.stderr)
        self._send_error(HubError(501, f"The hub stand-in does not serve {message}", "NotServed"))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json", head_only: bool = False) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head_only and self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _json(self, payload, status: int = 200, content_type: str = "application/json") -> int:
        return self._send(status, json.dumps(payload).encode(), content_type=content_type)

    def _send_error(self, err: HubError) -> int:
        headers = {"X-Error-Message": err.message.replace("\n", " "), **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        return self._send(err.status, json.dumps({"error": err.message, **err.body}).encode(), headers=headers)

    def _repo_commit(self, rtype: str, repo: str, rev: str) -> tuple[Repo, Commit]:
        hub_repo = self.hub.get_repo(rtype, unquote(repo))
        return hub_repo, self.hub.get_commit(hub_repo, unquote(rev))

    def _flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[-1].lower() in ("1", "true")

    def _reject_unserved_params(self, *names: str) -> None:
        for name in names:
            if self._flag(name):
                raise HubError(501, f"query parameter {name}=1 is not served by the stand-in", "NotServed")

    # -- routes ---------------------------------------------------------------------------------
    def _route_create_repo(self, method: str, body: bytes) -> int:
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(501, f"repo type {repo_type!r} is not served by the stand-in", "NotServed")
        if not payload.get("organization"):
            raise HubError(400, "the stand-in needs a namespaced repo id (ORG/NAME)")
        repo_id = f"{payload['organization']}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.hub.create_repo(repo_type, repo_id, private)
        url = f"{self.hub.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _route_validate_yaml(self, method: str, body: bytes) -> int:
        errors = validate_card_yaml(json.loads(body).get("content", ""))
        status = 400 if errors else 200
        return self._json({"errors": [{"message": e} for e in errors], "warnings": []}, status=status)

    def _route_agent_harnesses(self, method: str, body: bytes) -> int:
        """The registry the hf CLI fetches to detect AI agents; empty means "detect none"."""
        return self._json({"standardEnvVars": [], "harnesses": {}})

    def _route_preupload(self, method: str, body: bytes, rtype: str, repo: str, rev: str) -> int:
        self._reject_unserved_params("create_pr")
        _, commit = self._repo_commit(REPO_TYPES[rtype], repo, rev)
        answers = []
        for item in json.loads(body)["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            mode = self.hub.upload_mode(commit, item["path"], item["size"], sample)
            existing = commit.files.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.is_lfs else existing.blob_oid
            answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return self._json({"files": answers, "commitOid": commit.oid})

    def _route_commit(self, method: str, body: bytes, rtype: str, repo: str, rev: str) -> int:
        self._reject_unserved_params("create_pr", "hot_reload")
        hub_repo = self.hub.get_repo(REPO_TYPES[rtype], unquote(repo))
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        commit = self.hub.apply_commit(hub_repo, unquote(rev), lines)
        url = f"{self.hub.endpoint}/{URL_PREFIX[hub_repo.repo_type]}{hub_repo.repo_id}/commit/{commit.oid}"
        return self._json({"success": True, "commitOid": commit.oid, "commitUrl": url,
                           "commitMessage": commit.title, "hookOutput": "", "pullRequestUrl": None})

    def _route_paths_info(self, method: str, body: bytes, rtype: str, repo: str, rev: str) -> int:
        _, commit = self._repo_commit(REPO_TYPES[rtype], repo, rev)
        form = parse_qs(body.decode())
        expand = form.get("expand", ["False"])[-1].lower() in ("1", "true")
        answers = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                answers.append(self.hub.file_entry(commit, path, expand))
            elif any(name.startswith(path + "/") for name in commit.files):
                answers.append(self.hub.folder_entry(commit, path, expand))
        return self._json(answers)

    def _route_tree(self, method: str, body: bytes, rtype: str, repo: str, rev: str, path: str | None) -> int:
        _, commit = self._repo_commit(REPO_TYPES[rtype], repo, rev)
        entries = self.hub.tree_entries(commit, unquote(path or ""), self._flag("recursive"), self._flag("expand"))
        return self._json(entries)

    def _route_info(self, method: str, body: bytes, rtype: str, repo: str, rev: str | None = None) -> int:
        if "expand" in self.query or "securityStatus" in self.query:
            raise HubError(501, f"info parameters {sorted(self.query)} are not served by the stand-in", "NotServed")
        hub_repo, commit = self._repo_commit(REPO_TYPES[rtype], repo, rev or "main")
        return self._json(self.hub.repo_info(hub_repo, commit, blobs=self._flag("blobs")))

    def _route_lfs_batch(self, method: str, body: bytes, repo: str, dprefix: str | None) -> int:
        self.hub.get_repo("dataset" if dprefix else "model", unquote(repo))
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(501, f"LFS batch {payload.get('operation')} / {payload.get('transfers')} not served",
                           "NotServed")
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_objects:
                answer["actions"] = {
                    "upload": {"href": f"{self.hub.storage_endpoint}/_lfs/upload/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.endpoint}/_lfs/verify/{obj['oid']}"},
                }
            objects.append(answer)
        return self._json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _refuse_hub_token(self) -> None:
        if self.headers.get("Authorization"):
            raise HubError(400, "the Hub token was sent to the storage host; clients must drop it there")

    def _route_lfs_upload(self, method: str, body: bytes, oid: str) -> int:
        self._refuse_hub_token()
        actual = hashlib.sha256(body).hexdigest()
        if actual != oid:
            raise HubError(400, f"LFS upload: body sha256 {actual} does not match the announced oid {oid}")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = body
        return self._send(200)

    def _route_lfs_verify(self, method: str, body: bytes, oid: str) -> int:
        payload = json.loads(body)
        stored = self.hub.lfs_objects.get(oid)
        if stored is None or payload.get("oid") != oid or payload.get("size") != len(stored):
            raise HubError(422, f"LFS verify failed for {oid}: {payload}")
        return self._send(200)

    def _route_lfs_object(self, method: str, body: bytes, oid: str) -> int:
        self._refuse_hub_token()
        blob = self.hub.lfs_objects.get(oid)
        if blob is None:
            raise HubError(404, f"LFS object {oid} not found")
        return self._send_content(blob, {"ETag": f'"{oid}"'})

    def _route_resolve(self, method: str, body: bytes, repo: str, rev: str, path: str, dprefix: str | None) -> int:
        _, commit = self._repo_commit("dataset" if dprefix else "model", repo, rev)
        path = unquote(path)
        entry = commit.files.get(path)
        headers = {"X-Repo-Commit": commit.oid}
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", headers)
        headers["ETag"] = f'"{entry.blob_oid}"'
        if entry.is_lfs:
            # Like the real Hub: LFS files redirect to a storage URL and announce their linked etag/size.
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": entry.size,
                            "Location": f"{self.hub.storage_endpoint}/_lfs/objects/{entry.lfs_sha256}"})
            return self._send(302, headers=headers)
        return self._send_content(entry.content, headers)

    def _send_content(self, content: bytes, headers: dict) -> int:
        headers = {**headers, "Accept-Ranges": "bytes"}
        spec = self.headers.get("Range")
        if not spec:
            return self._send(200, content, headers, content_type="application/octet-stream")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if match is None or match.groups() == ("", ""):
            raise HubError(416, f"unsupported Range {spec!r}")
        start_text, end_text = match.groups()
        total = len(content)
        if start_text:
            start, end = int(start_text), min(int(end_text) if end_text else total - 1, total - 1)
        else:
            start, end = max(total - int(end_text), 0), total - 1
        if start >= total or start > end:
            raise HubError(416, f"Range {spec!r} outside 0..{total}", headers={"Content-Range": f"bytes */{total}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{total}"
        return self._send(206, content[start:end + 1], headers, content_type="application/octet-stream")


# ----------------------------------------------------------------------------------------------
# Client subprocesses
# ----------------------------------------------------------------------------------------------
_GUARD = textwrap.dedent(
    f"""
    import socket as _socket, sys as _sys
    _LOOPBACK = {{"127.0.0.1", "::1", "localhost"}}
    _orig_getaddrinfo, _orig_connect, _orig_connect_ex = (
        _socket.getaddrinfo, _socket.socket.connect, _socket.socket.connect_ex)

    def _refuse(what):
        print("{GUARD_MARKER} " + repr(what), file=_sys.stderr, flush=True)
        raise ConnectionRefusedError("hub stand-in guard: only 127.0.0.1 may be reached, not " + repr(what))

    def _getaddrinfo(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in _LOOPBACK:
            _refuse(host)
        return _orig_getaddrinfo(host, *args, **kwargs)

    def _check(sock, address):
        if sock.family in (_socket.AF_INET, _socket.AF_INET6) and address[0] not in _LOOPBACK:
            _refuse(address)

    def _connect(self, address):
        _check(self, address)
        return _orig_connect(self, address)

    def _connect_ex(self, address):
        _check(self, address)
        return _orig_connect_ex(self, address)

    _socket.getaddrinfo, _socket.socket.connect, _socket.socket.connect_ex = _getaddrinfo, _connect, _connect_ex
    """
)

_HIDE_PACKAGE = textwrap.dedent(
    """
    import importlib.abc as _abc, importlib.util as _util

    class _HideScegg(_abc.MetaPathFinder):
        # Simulates a machine without the scegg package, even when it is installed (editable or not).
        def find_spec(self, name, path=None, target=None):
            if name == "modeling_scegg" or name.startswith("modeling_scegg."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden by the hub stand-in test)", name=name)
            return None

    _sys.meta_path.insert(0, _HideScegg())
    try:
        import modeling_scegg
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("modeling_scegg is importable although the test hid it")
    """
)


def client_env(endpoint: str, hf_home: Path) -> dict[str, str]:
    """Environment of a client subprocess: online, but only towards the stand-in."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "PYTHON"))
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({
        "HF_ENDPOINT": endpoint, "HF_TOKEN": "dummy-token", "HF_HOME": str(hf_home),
        "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "HF_UPDATE_DOWNLOAD_COUNTS": "0", "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
    })
    return env


def run_client(code: str, endpoint: str, workdir: Path, *, name: str = "client", with_package: bool = True,
               tolerated_hosts: tuple[str, ...] = (), timeout: float = 180.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter talking to the stand-in; fail the test on any error.

    ``with_package=False`` hides ``modeling_scegg`` (``python -I``, cwd in ``workdir``, a finder
    that refuses the name), so remote-code loading is proven not to rely on the installed package.
    Every connection attempt the guard refused fails the test, except lookups of
    ``tolerated_hosts`` (best-effort calls a client makes without a switch to turn them off,
    e.g. ``DATASET_VIEWER_HOST``); those were refused too, so nothing left the machine.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    prelude = _GUARD + (f"_sys.path.insert(0, {str(REPO_ROOT)!r})\n" if with_package else _HIDE_PACKAGE)
    script = workdir / f"{name}.py"
    script.write_text(prelude + "\n" + textwrap.dedent(code))
    result = subprocess.run([sys.executable, "-I", str(script)], cwd=workdir, capture_output=True, text=True,
                            env=client_env(endpoint, workdir / f"hf_home_{name}"), timeout=timeout)
    output = f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, f"client {name} failed (rc={result.returncode})\n{output}"
    refused = [line for line in result.stderr.splitlines() if line.startswith(GUARD_MARKER)]
    unexpected = [line for line in refused if not any(repr(host) in line for host in tolerated_hosts)]
    assert not unexpected, f"client {name} tried to reach non-loopback addresses {unexpected}\n{output}"
    return result


@pytest.fixture(scope="module")
def hub_server() -> Iterator[HubStandIn]:
    """One stand-in per test module, on a free loopback port."""
    hub = HubStandIn().start()
    yield hub
    hub.stop()


@pytest.fixture
def hub_endpoint(hub_server: HubStandIn) -> Iterator[HubStandIn]:
    """The stand-in, failing the test if the clients called any route it does not serve."""
    seen = len(hub_server.unknown_requests)
    yield hub_server
    unknown = hub_server.unknown_requests[seen:]
    assert not unknown, f"clients called routes the hub stand-in does not serve: {unknown}"

