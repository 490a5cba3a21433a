"""Push adapters to the hub (private unless asked otherwise) and pull them back atomically."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from orthoguard.hub.adapters import (_HUB_ID_RE, ALLOWED_PATTERNS, DEFAULT_PREFIX, STALE_PATTERNS, _stage, repo_id_for,
                                     validate_adapter)
from orthoguard.io import apply_umask
from orthoguard.hub.cards import _find_loss_log, build_model_card, is_attack_adapter
from orthoguard.hub.safety import HubError, _hub_call, resolve_token

log = logging.getLogger(__package__)  # "orthoguard.hub", the logger name from before the split


def _default_api(token: str | None):
    from huggingface_hub import HfApi

    return HfApi(token=token)


# --------------------------------------------------------------------------------------------------------
# Push and pull


def push_adapters(
    namespace: str,
    adapters: dict[str, str | Path],
    *,
    public: bool = False,
    repo_prefix: str = DEFAULT_PREFIX,
    run_dir: str | Path | None = None,
    token: str | None = None,
    api: Any = None,
) -> list[str]:
    """Upload each adapter folder to ``{namespace}/{repo_prefix}-{name}`` with a model card; return the repo URLs.

    Repositories are private unless ``public``. Every folder is validated before anything is uploaded. The card
    is written into a temporary copy of the folder, never into the folder itself.
    """
    if not adapters:
        raise HubError("push: no adapters given (--adapter NAME=PATH)")
    if run_dir is not None and not Path(run_dir).is_dir():
        raise HubError(f"push: run directory not found: {run_dir}")
    plan = [(name, validate_adapter(path, name), repo_id_for(namespace, name, repo_prefix)) for name, path in adapters.items()]
    token = resolve_token(token)
    if token is None:
        raise HubError("push: no Hugging Face token: set HF_TOKEN or log in with `hf auth login`")
    if api is None:
        from orthoguard import hub  # looked up on the package, so that patching orthoguard.hub._default_api works

        api = hub._default_api(token)

    urls: list[str] = []
    pushed: list[str] = []
    for name, path, repo_id in plan:
        failure = None
        try:
            urls.append(_push_one(api, name, path, repo_id, public=public, run_dir=run_dir, token=token))
        except HubError as exc:
            failure = str(exc)
        if failure is not None:  # raised here, not in the except block, so the error chains to nothing
            done = f" (already pushed: {', '.join(pushed)})" if pushed else ""
            raise HubError(f"push {name} -> {repo_id}: {failure}{done}")
        pushed.append(name)
    return urls


def _push_one(api, name: str, path: Path, repo_id: str, *, public: bool, run_dir, token: str) -> str:
    card = build_model_card(name, path, run_dir, repo_id)
    attack = is_attack_adapter(name, _find_loss_log(Path(run_dir), name) if run_dir else None)
    visibility = "public" if public else "private"
    if public and attack:
        log.warning("pushing attack adapter '%s' to a PUBLIC repository %s", name, repo_id)
    log.info("creating %s repository %s", visibility, repo_id)
    url = _hub_call("create_repo", api.create_repo, repo_id, private=not public, exist_ok=True, repo_type="model", token=token)
    info = _hub_call("repo_info", api.repo_info, repo_id, repo_type="model", token=token)
    is_private = getattr(info, "private", None)
    if not public and is_private is False:
        raise HubError(f"{repo_id} already exists and is public; pass --public to push to it anyway, "
                       "or make it private on the Hub first")
    if public and is_private:
        log.warning("%s already exists and is private; it stays private (change it on the Hub)", repo_id)
    with tempfile.TemporaryDirectory(prefix="orthoguard-push-") as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        files = _stage(path, card, staged)
        log.info("uploading %s -> %s (%s)", path, repo_id, ", ".join(files))
        _hub_call("upload_folder", api.upload_folder, repo_id=repo_id, folder_path=str(staged), repo_type="model",
                  commit_message=f"orthoguard: upload adapter '{name}'", delete_patterns=STALE_PATTERNS, token=token)
    return str(url) if url else f"https://huggingface.co/{repo_id}"


def pull_adapter(
    repo_id: str,
    dest: str | Path,
    *,
    revision: str | None = None,
    token: str | None = None,
    api: Any = None,
) -> Path:
    """Download an adapter repo's json/safetensors/markdown files (never pickles) into ``dest``, atomically.

    The files land in a temporary folder beside ``dest`` that is renamed to ``dest`` once the download is
    complete and is a valid adapter folder. ``dest`` must not exist, or be an empty folder.
    """
    if not _HUB_ID_RE.match(repo_id or ""):
        raise HubError(f"pull: invalid repository id '{repo_id}' (expected NAMESPACE/NAME)")
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise HubError(f"pull: {dest} already exists; choose another --dest or remove it")
    token = resolve_token(token)
    if api is not None:
        download = api.snapshot_download
    else:
        from huggingface_hub import snapshot_download as download
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        log.info("downloading %s%s -> %s", repo_id, f"@{revision}" if revision else "", dest)
        _hub_call(f"pull {repo_id}: snapshot_download", download, repo_id, repo_type="model", revision=revision,
                  local_dir=str(tmp), allow_patterns=list(ALLOWED_PATTERNS), token=token)
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
        validate_adapter(tmp, repo_id)
        if dest.exists():
            dest.rmdir()
        apply_umask(tmp)  # mkdtemp made it 0700
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest

