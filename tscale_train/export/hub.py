"""Pushing an exported folder to the Hugging Face Hub with `huggingface_hub`.

The repo is created if missing (`exist_ok=True`), so re-running an export updates it. The folder goes
up in one commit (`upload_folder`), so a failure mid-upload publishes nothing; the error says so.
The token comes from `--token`, `HF_TOKEN` or the login cache, and is never printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import check_repo_id  # the repo id rule is a settings check; re-exported here

__all__ = ["IGNORE_PATTERNS", "PushResult", "check_repo_id", "folder_files", "push_folder", "resolve_token"]


@dataclass
class PushResult:
    repo_id: str
    repo_type: str
    revision: str | None
    files: list[str]
    url: str | None  # None for a dry run


def resolve_token(token: str | None = None) -> str:
    """The token to push with: the explicit one, else `HF_TOKEN`, else the login cache."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise ValueError("no Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass --token.")
    return found


# Hidden files (the exporters' own markers) stay local.
IGNORE_PATTERNS = [".*", "**/.*"]


def folder_files(folder: Path) -> list[str]:
    """Every file that `upload_folder` will send, relative to `folder`, sorted (hidden files stay local)."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str = "Upload with tscale export",
    dry_run: bool = False,
    api: Any | None = None,
) -> PushResult:
    """Create (or reuse) `repo_id` and upload `folder` to it in one commit.

    `api` is an `huggingface_hub.HfApi` (a stand-in in tests). With `dry_run`, nothing is sent and
    no token is needed: the result lists what would be uploaded.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    files = folder_files(folder)
    if not files:
        raise ValueError(f"{str(folder)!r} holds no file to upload.")
    if dry_run:
        return PushResult(repo_id, repo_type, revision, files, url=None)
    from huggingface_hub import HfApi

    api = api or HfApi(token=resolve_token(token))
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type=repo_type,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS,
        )
    except (
        Exception
    ) as error:  # HTTP errors, and the network errors of whichever HTTP client the hub library uses
        # upload_folder is one commit: when it fails, the repo holds none of these files.
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise OSError(
            f"upload to {repo_type} repo {repo_id!r} failed, nothing was published: {reason}"
        ) from error
    return PushResult(
        repo_id, repo_type, revision, files, url=str(getattr(commit, "commit_url", "") or repo_id)
    )
