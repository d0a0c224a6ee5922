"""Hugging Face repositories, fetched only when a user asks (`pensieve models pull`/`convert`).

Downloads go through `huggingface_hub` into its own cache, so HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE and HF_TOKEN mean what they mean for every other Hugging Face tool, and a model
already downloaded by mlx-lm or transformers is not fetched again. The snapshot is then linked
into the model store (hard links: no second copy on the same disk), because the store is the
only place a request's model name may reach.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

from pensieve.modelmgr.facts import model_facts
from pensieve.modelmgr.sources import source_from_path
from pensieve.modelmgr.store import ModelStore, StoreEntry, is_safe_name, write_origin
from pensieve.utils import InvalidRequestError, ModelLoadError, NotFoundError, PensieveError

MODEL_PATTERNS = list(DEFAULT_ALLOW_PATTERNS)
"""mlx-lm's own list, so a pull fetches what mlx_lm.load reads (weights, config, tokenizer,
chat template) and none of the PyTorch or GGUF duplicates a repository may also hold."""


def check_repo_id(repo: str) -> None:
    if "/" not in repo or not is_safe_name(repo):
        raise InvalidRequestError(
            f"'{repo}' is not a Hugging Face repository id; use the form org/name, e.g. "
            "mlx-community/Qwen2.5-0.5B-Instruct-4bit"
        )


def download_snapshot(repo: str, *, revision: str | None = None, filename: str | None = None) -> Path:
    """Fetch `repo` (or one file of it) into the Hugging Face cache; the snapshot folder.

    huggingface_hub shows a progress bar per file (HF_HUB_DISABLE_PROGRESS_BARS=1 hides them)
    and, offline, answers from the cache alone.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    check_repo_id(repo)
    patterns = [filename] if filename else MODEL_PATTERNS
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns))
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo} is gated: accept its license on huggingface.co, then log in with "
            "`hf auth login` or set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise NotFoundError(f"Hugging Face repository {repo} was not found (or is private)") from None
    except RevisionNotFoundError:
        raise NotFoundError(f"{repo} has no revision {revision!r}") from None
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"{repo} is not in the Hugging Face cache ({_cache_dir()}) and the Hub cannot be "
            f"reached or HF_HUB_OFFLINE is set: {exc}"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelLoadError(f"downloading {repo} failed: {exc}") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def link_tree(source: Path, target: Path, only: str | None = None) -> None:
    """Recreate `source` (a snapshot of symlinks to blobs) at `target` with hard links.

    Hard links share the cache's bytes on the same filesystem; elsewhere the files are copied.
    Either way the store holds real files and no link out of it. Only model files are taken:
    offline, the cache's snapshot may also hold files another tool downloaded.
    """
    target.mkdir(parents=True, exist_ok=True)
    files = [source / only] if only else [p for p in source.rglob("*") if p.is_file()]
    for file in files:
        relative = file.relative_to(source)
        if ".cache" in relative.parts:
            continue
        if not only and not any(fnmatch.fnmatch(str(relative), p) for p in MODEL_PATTERNS):
            continue
        dest = target / (file.name if only else file.relative_to(source))
        dest.parent.mkdir(parents=True, exist_ok=True)
        real = file.resolve()
        try:
            os.link(real, dest)
        except OSError:
            shutil.copy2(real, dest)


def pull(
    repo: str,
    store: ModelStore,
    *,
    revision: str | None = None,
    filename: str | None = None,
    name: str | None = None,
    replace: bool = False,
) -> StoreEntry:
    """Download `repo` and add it to the store as `name` (default: the repo id)."""
    check_repo_id(repo)
    name = name or repo
    store.entry_path(name)  # validate before downloading anything
    snapshot = download_snapshot(repo, revision=revision, filename=filename)
    if filename and not (snapshot / filename).is_file():
        raise NotFoundError(f"{repo} has no file {filename}")
    with store.staging(name, replace=replace) as staging:
        link_tree(snapshot, staging, only=filename)
        try:
            model_facts(source_from_path(staging, name))
        except PensieveError as exc:
            hint = "" if filename else " If it is a GGUF repository, choose a file with --file NAME.gguf."
            raise ModelLoadError(f"{repo} is not a model Pensieve can serve: {exc.message}.{hint}") from None
        write_origin(
            staging, name, source="huggingface", repo=repo, revision=snapshot.name, file=filename
        )
    entry = store.find(name)
    assert entry is not None
    return entry
