"""End-to-end checks of the fake Hub (tests/fake_hub.py) with the real huggingface_hub and transformers clients.

The other Hub tests trust this fake, so these tests pin down that the installed clients really talk to it
(create, upload, download, `from_pretrained`, `push_to_hub`) and that it records exactly what they sent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import huggingface_hub
import pytest
from fake_hub import FAKE_USER, FakeHub, fake_hub_fixture, point_clients_at  # noqa: F401 - fixture `fake_hub`
from huggingface_hub import HfApi, create_repo, hf_hub_download, snapshot_download, upload_folder
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

BINARY = bytes(range(256)) * 3 + b"\x00\xff\r\n\x00"
FILES = {
    "config.json": b'{"model_type": "bert"}\n',
    "weights.bin": BINARY,
    "empty.txt": b"",
    "docs/notes.txt": "caf\u00e9 \u2713\n".encode(),
    "docs/deep/caf\u00e9 #1.md": b"# odd name\n",
}


def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def assert_clean(hub: FakeHub) -> None:
    assert hub.unhandled == [] and hub.errors == []


def test_create_repo_conflict_and_exist_ok(fake_hub: FakeHub) -> None:
    url = create_repo("org/name")  # module-level function: its HfApi was built at import time
    assert url.repo_id == "org/name" and url.startswith(fake_hub.endpoint)
    assert fake_hub.repos == {"org/name": {}}

    with pytest.raises(HfHubHTTPError) as excinfo:
        create_repo("org/name")
    assert excinfo.value.response.status_code == 409
    assert HfApi().create_repo("org/name", exist_ok=True).repo_id == "org/name"

    assert create_repo("no-namespace").repo_id == f"{FAKE_USER}/no-namespace"
    create_repo("org/data", repo_type="dataset", private=True)
    assert "datasets/org/data" in fake_hub.repos
    assert fake_hub.created[-1] == {"name": "data", "organization": "org", "type": "dataset", "visibility": "private"}
    assert_clean(fake_hub)


def test_upload_folder_records_bytes_and_commit(fake_hub: FakeHub, tmp_path: Path) -> None:
    api = HfApi(endpoint=fake_hub.endpoint)
    api.create_repo("org/name")
    folder = make_folder(tmp_path / "upload", FILES)

    info = upload_folder(repo_id="org/name", folder_path=folder, commit_message="Add files")
    assert fake_hub.repos["org/name"] == FILES
    commit = fake_hub.commits[-1]
    assert (commit.repo_id, commit.revision, commit.message) == ("org/name", "main", "Add files")
    assert sorted(commit.added) == sorted(FILES) and commit.deleted == []
    assert info.oid == commit.oid == api.repo_info("org/name").sha
    assert sorted(api.list_repo_files("org/name")) == sorted(FILES)

    # Same folder again: preupload reports the stored blob ids, so the client sends no commit at all.
    upload_folder(repo_id="org/name", folder_path=folder, commit_message="No-op")
    assert len(fake_hub.commits) == 1

    # Changed file plus delete_patterns (which lists the remote tree to find what to delete).
    (folder / "docs" / "notes.txt").unlink()
    (folder / "config.json").write_bytes(b'{"model_type": "bert", "hidden_size": 8}')
    upload_folder(repo_id="org/name", folder_path=folder, commit_message="Update", delete_patterns="*.txt")
    commit = fake_hub.commits[-1]
    assert commit.message == "Update" and commit.added == ["config.json"]
    assert commit.deleted == ["docs/notes.txt"]
    assert sorted(fake_hub.repos["org/name"]) == [
        "config.json",
        "docs/deep/caf\u00e9 #1.md",
        "empty.txt",
        "weights.bin",
    ]
    assert_clean(fake_hub)


def test_downloads_return_identical_bytes(fake_hub: FakeHub, tmp_path: Path) -> None:
    create_repo("org/name")
    upload_folder(repo_id="org/name", folder_path=make_folder(tmp_path / "upload", FILES), commit_message="Add")
    cache = tmp_path / "cache"

    for rel, content in FILES.items():
        assert Path(hf_hub_download("org/name", rel, cache_dir=cache)).read_bytes() == content
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("org/name", "missing.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("org/absent", "config.json", cache_dir=cache)

    snapshot = Path(snapshot_download("org/name", cache_dir=tmp_path / "cache2"))
    got = {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in snapshot.rglob("*") if p.is_file()}
    assert got == FILES
    assert snapshot.name == fake_hub.commits[-1].oid

    # An older revision, by commit id, still serves the old bytes.
    old = fake_hub.commits[-1].oid
    HfApi().upload_file(path_or_fileobj=b"v2", path_in_repo="weights.bin", repo_id="org/name")
    assert Path(hf_hub_download("org/name", "weights.bin", revision=old, cache_dir=cache)).read_bytes() == BINARY
    assert Path(hf_hub_download("org/name", "weights.bin", cache_dir=cache)).read_bytes() == b"v2"
    # The default cache (no cache_dir) is the fixture's temporary one, not the user's.
    assert hf_hub_download("org/name", "config.json").startswith(os.environ["HF_HOME"])
    assert_clean(fake_hub)


def test_transformers_from_pretrained_and_push_to_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    from transformers import AutoConfig, BertConfig

    config = {"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    fake_hub.add_files("org/tiny-bert", {"config.json": json.dumps(config).encode()})
    loaded = AutoConfig.from_pretrained("org/tiny-bert", cache_dir=tmp_path / "cache")
    assert isinstance(loaded, BertConfig) and loaded.hidden_size == 16

    BertConfig(hidden_size=24, num_attention_heads=2).push_to_hub("org/pushed", commit_message="Push config")
    commit = fake_hub.commits[-1]
    assert commit.repo_id == "org/pushed" and commit.message == "Push config"
    assert sorted(commit.added) == ["README.md", "config.json"]
    assert json.loads(fake_hub.repos["org/pushed"]["config.json"])["hidden_size"] == 24
    assert AutoConfig.from_pretrained("org/pushed").hidden_size == 24
    assert_clean(fake_hub)


def test_point_clients_at_patches_clients_built_earlier(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from transformers.utils import hub as tf_hub

    tf_hub.hf_api()  # as if an earlier test had already built transformers' shared HfApi
    with FakeHub() as hub:
        point_clients_at(hub, monkeypatch, tmp_path / "home")
        assert tf_hub.hf_api().endpoint == hub.endpoint
        assert huggingface_hub.hf_api.api.endpoint == hub.endpoint
        default_cache = huggingface_hub.constants.HF_HUB_CACHE
        assert default_cache == str(tmp_path / "home" / "hub")
        hub.add_files("org/seeded", {"a.txt": b"a"})
        assert Path(hf_hub_download("org/seeded", "a.txt")).read_bytes() == b"a"
