"""The Hub stand-in against the stock clients: huggingface_hub, transformers and datasets.

Each client runs in a fresh subprocess pointed at the stand-in (HF_ENDPOINT is read at import
time); the socket guard in ``run_client`` fails a test that tries to reach any other address.
"""
import hashlib
import http.client
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_server import (  # noqa: F401 - fixtures are used by name
    DATASET_VIEWER_HOST,
    GUARD_MARKER,
    HubError,
    HubStandIn,
    git_blob_oid,
    hub_endpoint,
    hub_server,
    run_client,
)

HUB_CLIENT = r"""
import hashlib, json, os
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

api = HfApi()
repo = api.create_repo("alice/files")
assert repo.repo_id == "alice/files", repo
assert api.create_repo("alice/files", exist_ok=True).repo_id == "alice/files"

folder = Path("upload")
(folder / "nested").mkdir(parents=True)
(folder / "notes.txt").write_text("plain text file\n")
big = os.urandom(11 * 1024 * 1024)  # above the Hub's 10 MiB LFS threshold
(folder / "nested" / "big.dat").write_bytes(big)
small_weights = os.urandom(4096)
(folder / "weights.safetensors").write_bytes(small_weights)  # LFS through .gitattributes

first = api.upload_file(path_or_fileobj=b"one line\n", path_in_repo="single.txt", repo_id="alice/files")
second = api.upload_folder(folder_path=folder, repo_id="alice/files", commit_message="add folder")
again = api.upload_folder(folder_path=folder, repo_id="alice/files", commit_message="unchanged")

big_path = hf_hub_download("alice/files", "nested/big.dat")
snapshot = Path(snapshot_download("alice/files"))
info = api.model_info("alice/files", files_metadata=True)
first_file = hf_hub_download("alice/files", "single.txt", revision=first.oid)
paths = api.get_paths_info("alice/files", ["nested", "notes.txt", "absent.txt"])
errors = {}
for label, call in {
    "entry": lambda: hf_hub_download("alice/files", "missing.txt"),
    "repo": lambda: api.model_info("alice/nothing"),
    "revision": lambda: hf_hub_download("alice/files", "notes.txt", revision="no-such-branch"),
}.items():
    try:
        call()
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        errors[label] = type(exc).__name__

print(json.dumps({
    "big_ok": Path(big_path).read_bytes() == big,
    "snapshot": sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file()),
    "notes": (snapshot / "notes.txt").read_text(),
    "weights_ok": (snapshot / "weights.safetensors").read_bytes() == small_weights,
    "lfs": sorted(s.rfilename for s in info.siblings if s.lfs is not None),
    "sha": info.sha, "second": second.oid, "again": again.oid,
    "first_file": Path(first_file).read_text(),
    "paths": sorted(f"{type(p).__name__}:{p.path}" for p in paths),
    "errors": errors,
}))
"""


def _last_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hub_client_upload_and_download(hub_endpoint: HubStandIn, tmp_path: Path) -> None:
    report = _last_json(run_client(HUB_CLIENT, hub_endpoint.endpoint, tmp_path, name="hub"))
    assert report["big_ok"] and report["weights_ok"]
    assert report["snapshot"] == [".gitattributes", "nested/big.dat", "notes.txt", "single.txt",
                                  "weights.safetensors"]
    assert report["notes"] == "plain text file\n"
    assert report["lfs"] == ["nested/big.dat", "weights.safetensors"]
    assert report["sha"] == report["second"] == report["again"], "an unchanged upload must not commit"
    assert report["first_file"] == "one line\n"
    assert report["paths"] == ["RepoFile:notes.txt", "RepoFolder:nested"]
    assert report["errors"] == {"entry": "RemoteEntryNotFoundError", "repo": "RepositoryNotFoundError",
                                "revision": "RevisionNotFoundError"}
    routes = hub_endpoint.served_routes()
    for route in ("POST preupload", "POST lfs_batch", "PUT lfs_upload", "POST lfs_verify", "POST commit",
                  "HEAD resolve", "GET lfs_object", "GET tree", "GET info", "POST paths_info"):
        assert route in routes, f"{route} was never exercised: {routes}"
    stored = hub_endpoint.repos[("model", "alice/files")]
    head = stored.commits[stored.branches["main"]]
    assert head.files["notes.txt"].blob_oid == git_blob_oid(b"plain text file\n")
    assert head.files["nested/big.dat"].is_lfs and head.files["nested/big.dat"].content is None


TRANSFORMERS_PUSH = r"""
import torch, datasets
from transformers import BertConfig, BertModel

torch.manual_seed(0)
config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37)
model = BertModel(config).eval()
with torch.no_grad():
    expected = model(torch.arange(12).reshape(2, 6)).last_hidden_state
torch.save(expected, "expected.pt")
model.push_to_hub("alice/tiny-bert")
table = datasets.Dataset.from_dict({"x": [[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]], "label": [0, 1, 0]})
table.push_to_hub("alice/tiny-table")
"""

TRANSFORMERS_PULL = r"""
import json, torch, datasets
from transformers import AutoModel

model = AutoModel.from_pretrained("alice/tiny-bert").eval()
with torch.no_grad():
    output = model(torch.arange(12).reshape(2, 6)).last_hidden_state
expected = torch.load("expected.pt", weights_only=True)
table = datasets.load_dataset("alice/tiny-table", split="train")
print(json.dumps({"identical": bool(torch.equal(output, expected)), "rows": table.to_dict()}))
"""


@pytest.mark.slow
def test_transformers_and_datasets_round_trip(hub_endpoint: HubStandIn, tmp_path: Path) -> None:
    run_client(TRANSFORMERS_PUSH, hub_endpoint.endpoint, tmp_path, name="push")
    pulled = run_client(TRANSFORMERS_PULL, hub_endpoint.endpoint, tmp_path, name="pull",
                        tolerated_hosts=(DATASET_VIEWER_HOST,))
    report = _last_json(pulled)
    assert report["identical"], "from_pretrained after push_to_hub changed the outputs"
    assert report["rows"] == {"x": [[0.5, 1.5], [2.5, 3.5], [4.5, 5.5]], "label": [0, 1, 0]}
    dataset_repo = hub_endpoint.repos[("dataset", "alice/tiny-table")]
    files = dataset_repo.commits[dataset_repo.branches["main"]].files
    parquet = [name for name in files if name.endswith(".parquet")]
    assert parquet and all(files[name].is_lfs for name in parquet), files.keys()
    model_repo = hub_endpoint.repos[("model", "alice/tiny-bert")]
    assert model_repo.commits[model_repo.branches["main"]].files["model.safetensors"].is_lfs


def test_guard_refuses_other_addresses(hub_endpoint: HubStandIn, tmp_path: Path) -> None:
    code = """
    import socket
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except ConnectionRefusedError:
        pass
    socket.socket().connect(("192.0.2.1", 443))
    """
    with pytest.raises(AssertionError) as caught:
        run_client(code, hub_endpoint.endpoint, tmp_path, name="escape")
    message = str(caught.value)
    assert f"{GUARD_MARKER} 'huggingface.co'" in message and f"{GUARD_MARKER} ('192.0.2.1', 443)" in message
    assert "ConnectionRefusedError" in message


def test_unknown_route_is_reported(hub_server: HubStandIn) -> None:
    before = len(hub_server.unknown_requests)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{hub_server.endpoint}/api/spaces/alice/x/runtime")
    assert caught.value.code == 501
    assert hub_server.unknown_requests[before:] == ["GET /api/spaces/alice/x/runtime"]
    del hub_server.unknown_requests[before:]


def test_commit_rejects_stale_parent_and_missing_lfs(hub_server: HubStandIn) -> None:
    repo = hub_server.create_repo("model", "alice/direct", private=False)
    head = repo.branches["main"]
    line = {"key": "file", "value": {"path": "a.txt", "content": "YQ==", "encoding": "base64"}}
    hub_server.apply_commit(repo, "main", [{"key": "header", "value": {"summary": "a"}}, line])
    with pytest.raises(HubError, match="parentCommit"):
        hub_server.apply_commit(repo, "main", [{"key": "header", "value": {"summary": "b", "parentCommit": head}}])
    missing = {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": "0" * 64, "size": 3}}
    with pytest.raises(HubError, match="never uploaded"):
        hub_server.apply_commit(repo, "main", [{"key": "header", "value": {"summary": "c"}}, missing])


def test_resolve_headers_and_ranges(hub_server: HubStandIn) -> None:
    """What hf_hub_download / HfFileSystem rely on: X-Repo-Commit and ETag on every file, a
    redirect with X-Linked-Etag / X-Linked-Size for LFS files, and byte ranges."""
    weights = bytes(range(256)) * 8
    commit = hub_server.add_files("model", "alice/ranges", {"notes.txt": b"0123456789", "w.safetensors": weights})
    host, port = urlsplit(hub_server.endpoint).hostname, urlsplit(hub_server.endpoint).port

    def request(method: str, path: str, headers: dict | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection(host, port, timeout=5)
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        response.body = response.read()
        connection.close()
        return response

    head = request("HEAD", "/alice/ranges/resolve/main/notes.txt")
    assert head.status == 200 and head.headers["X-Repo-Commit"] == commit.oid
    assert head.headers["ETag"] == f'"{git_blob_oid(b"0123456789")}"' and head.headers["Content-Length"] == "10"
    part = request("GET", "/alice/ranges/resolve/main/notes.txt", {"Range": "bytes=2-5"})
    assert part.status == 206 and part.body == b"2345" and part.headers["Content-Range"] == "bytes 2-5/10"
    assert request("GET", "/alice/ranges/resolve/main/notes.txt", {"Range": "bytes=-3"}).body == b"789"
    assert request("GET", "/alice/ranges/resolve/main/notes.txt", {"Range": "bytes=20-"}).status == 416

    lfs = request("HEAD", f"/alice/ranges/resolve/{commit.oid}/w.safetensors")
    sha256 = hashlib.sha256(weights).hexdigest()
    assert lfs.status == 302 and lfs.headers["X-Linked-Etag"] == f'"{sha256}"'
    assert lfs.headers["X-Linked-Size"] == str(len(weights))
    storage = urlsplit(lfs.headers["Location"])
    assert storage.hostname == "localhost", "LFS bytes must come from another origin, like the Hub's CDN"
    blob = request("GET", storage.path, {"Range": "bytes=100-199"})
    assert blob.status == 206 and blob.body == weights[100:200]
    assert request("GET", storage.path, {"Authorization": "Bearer dummy"}).status == 400
    missing = request("HEAD", "/alice/ranges/resolve/main/absent.txt")
    assert missing.status == 404 and missing.headers["X-Error-Code"] == "EntryNotFound"
    assert request("GET", "/alice/ranges/resolve/no-branch/notes.txt").headers["X-Error-Code"] == "RevisionNotFound"
