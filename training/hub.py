"""Pushing trained folders to the Hugging Face Hub (token from `--hub_token`, `HF_TOKEN` or `hf auth login`)."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi


def push_folder(folder: Path, repo_id: str, path_in_repo: str | None, token: str | None) -> str:
    """Create `repo_id` if needed and upload `folder` into it (at `path_in_repo`, or the root); returns the
    commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        path_in_repo=path_in_repo,
        commit_message=f"Upload {path_in_repo or folder.name} from hf-vitvq training",
    )
    return commit.commit_url
