"""Publish a quantized checkpoint folder to the Hugging Face Hub (create_repo + upload_folder).

The token comes from huggingface_hub's usual sources (HF_TOKEN, `hf auth login`); it is never printed
or written. Existing files in the target repo are never replaced unless ``overwrite=True``. Large files
go through huggingface_hub's own LFS / Xet upload path.
"""
from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .info import CheckpointInfo, describe_local, human_bytes
from .model_card import build_model_card, is_hub_id

IGNORE = [".git/*", ".cache/*", "**/.cache/*", "*.tmp", "**/*.tmp", "__pycache__/*", "**/__pycache__/*", ".DS_Store"]
ALLOWED_SUFFIXES = (".safetensors", ".json", ".md", ".txt", ".model", ".png", ".jpg", ".jpeg", ".webp", ".yaml")


class PushError(RuntimeError):
    """Publishing refused or failed; the message says why and what to do."""


@dataclass
class UploadPlan:
    repo_id: str
    folder: Path
    files: list[tuple[str, int]]  # (path in repo, size in bytes)
    card_generated: bool
    existing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    repo_exists: bool | None = None  # None: unknown (dry run without a token)
    revision: str | None = None
    private: bool = False
    create_pr: bool = False

    def describe(self) -> str:
        total = sum(s for _, s in self.files)
        where = f"{self.repo_id}" + (f"@{self.revision}" if self.revision else "")
        state = {True: "exists", False: "will be created" + (" (private)" if self.private else ""), None: "unknown"}
        lines = [f"Upload to {where} (repo {state[self.repo_exists]}), {len(self.files)} files, {human_bytes(total)}"
                 + (", as a pull request" if self.create_pr else "") + ":"]
        for path, size in self.files:
            mark = " (replaces the file in the repo)" if path in self.conflicts else ""
            gen = " (generated model card)" if path == "README.md" and self.card_generated else ""
            lines.append(f"  {path:<60} {human_bytes(size):>12}{gen}{mark}")
        return "\n".join(lines)


def check_repo_id(repo_id: str) -> None:
    """Raise PushError unless ``repo_id`` is a valid "namespace/name" Hub id."""
    if not is_hub_id(repo_id):
        raise PushError(
            f"invalid repo id {repo_id!r}: expected 'namespace/name' (letters, digits, '-', '_', '.'; no '--' or "
            f"'..'; at most 96 characters), e.g. 'my-user/flux.1-dev-svdquant-int4'"
        )


def _files(folder: Path) -> list[tuple[str, int]]:
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if not p.is_file() or any(fnmatch.fnmatch(rel, pat) for pat in IGNORE):
            continue
        if not rel.endswith(ALLOWED_SUFFIXES):
            raise PushError(
                f"{rel}: refusing to upload a file that is not safetensors/JSON/text/image (no pickles, no code); "
                f"remove it from {folder}"
            )
        out.append((rel, p.stat().st_size))
    return out


def _api(api: Any, token: str | None) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _require_login(api: Any) -> str:
    """The user name behind the token; PushError when there is no (valid) token."""
    from huggingface_hub import get_token

    if getattr(api, "token", None) is None and get_token() is None:
        raise PushError("no Hugging Face token found: run `hf auth login` or set the HF_TOKEN environment variable")
    try:
        return api.whoami()["name"]
    except Exception as e:  # invalid/expired token, or offline
        raise PushError(f"the Hugging Face token was rejected or the Hub is unreachable ({type(e).__name__})") from None


def base_license(base_model: str | None, api: Any) -> str | None:
    """The license declared in the base model's card on the Hub, when it has one."""
    if not is_hub_id(base_model):
        return None
    try:
        card = api.model_info(base_model).card_data
    except Exception:
        return None
    return getattr(card, "license", None) if card is not None else None


def plan_upload(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    create_pr: bool = False,
    api: Any = None,
    check_remote: bool = True,
) -> UploadPlan:
    """What would be uploaded, and which existing repo files it would replace."""
    check_repo_id(repo_id)
    root = Path(folder)
    describe_local(root)  # raises NotACheckpointError for a folder that is not a checkpoint
    files = _files(root)
    card_generated = "README.md" not in {p for p, _ in files}
    if card_generated:
        files.append(("README.md", 0))
    plan = UploadPlan(repo_id, root, files, card_generated, revision=revision, private=private, create_pr=create_pr)
    if check_remote and api is not None:
        plan.repo_exists = bool(api.repo_exists(repo_id))
        if plan.repo_exists:
            try:
                plan.existing = list(api.list_repo_files(repo_id, revision=revision))
            except Exception as e:
                if type(e).__name__ not in ("RevisionNotFoundError",):
                    raise
                plan.existing = []  # the branch does not exist yet
            plan.conflicts = sorted({p for p, _ in files} & set(plan.existing))
    return plan


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    overwrite: bool = False,
    commit_message: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    quality: dict[str, Any] | None = None,
    token: str | None = None,
    api: Any = None,
) -> tuple[UploadPlan, Any]:
    """Create the repo (if needed) and upload ``folder`` with a generated model card.

    Returns (plan, CommitInfo or None for a dry run). Raises PushError on a bad repo id, a missing
    token, or files that already exist in the repo (unless overwrite=True).
    """
    check_repo_id(repo_id)
    info: CheckpointInfo = describe_local(folder)
    if dry_run:
        hub = api
        if hub is None:
            from huggingface_hub import get_token

            hub = _api(None, token) if (token or get_token()) else None
        try:
            plan = plan_upload(folder, repo_id, revision=revision, private=private, create_pr=create_pr, api=hub)
        except PushError:
            raise
        except Exception:  # offline / unauthorized: still show the local part of the plan
            plan = plan_upload(folder, repo_id, revision=revision, private=private, create_pr=create_pr, check_remote=False)
        return plan, None
    api = _api(api, token)
    _require_login(api)
    plan = plan_upload(folder, repo_id, revision=revision, private=private, create_pr=create_pr, api=api)
    if plan.conflicts and not overwrite:
        raise PushError(
            f"{repo_id} already has {len(plan.conflicts)} of these files ({', '.join(plan.conflicts[:5])}"
            f"{', ...' if len(plan.conflicts) > 5 else ''}); pass --overwrite to replace them, or choose another "
            f"repo/--revision"
        )
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    base = base_model or info.base_model
    lic = license or base_license(base, api)
    message = commit_message or f"Upload SVDQuant checkpoint ({', '.join(c.name or 'model' for c in info.quantized) or 'model'})"
    with tempfile.TemporaryDirectory(prefix="svdquant_card_") as tmp:
        upload_root = Path(folder)
        if plan.card_generated:
            card = build_model_card(info, repo_id, base_model=base, license=lic, quality=quality)
            card.save(Path(tmp) / "README.md")
            # the card is uploaded next to the folder's files without writing into the user's folder
            upload_root = _overlay(Path(folder), Path(tmp))
        result = api.upload_folder(
            repo_id=repo_id, folder_path=str(upload_root), revision=revision, create_pr=create_pr,
            commit_message=message, commit_description="Uploaded with `svdquant-hf push`.",
            ignore_patterns=IGNORE, repo_type="model",
        )
    return plan, result


def _overlay(folder: Path, card_dir: Path) -> Path:
    """A temp folder of symlinks to ``folder``'s files plus the generated README.md (no copies of weights)."""
    view = card_dir / "upload"
    for rel, _ in _files(folder):
        dst = view / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to((folder / rel).resolve())
    (view / "README.md").write_bytes((card_dir / "README.md").read_bytes())
    return view


__all__ = ["PushError", "UploadPlan", "check_repo_id", "plan_upload", "publish", "base_license"]
