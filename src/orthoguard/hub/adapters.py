"""Adapter folders: repository names, validation (safetensors only, no pickles), staging for upload."""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import shutil
from pathlib import Path

from orthoguard.hub.safety import HubError

log = logging.getLogger(__package__)  # "orthoguard.hub", the logger name from before the split

DEFAULT_PREFIX = "orthoguard"
# What push uploads and pull downloads: configs, safetensors weights, the card. Never pickles.
ALLOWED_PATTERNS = ["*.json", "*.safetensors", "*.md"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Remote files that a push replaces or removes, so a re-push leaves no stale weights or pickles behind.
STALE_PATTERNS = ["*.safetensors"] + [f"*{s}" for s in PICKLE_SUFFIXES]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------------------------
# Adapter folders


def repo_id_for(namespace: str, name: str, prefix: str = DEFAULT_PREFIX) -> str:
    """``{namespace}/{prefix}-{name}``, or ``{namespace}/{name}`` with an empty prefix."""
    for label, value in (("namespace", namespace), ("adapter name", name)):
        if not _NAME_RE.match(value or ""):
            raise HubError(f"invalid {label} '{value}': use letters, digits, '-', '_' or '.'")
    if prefix and not _NAME_RE.match(prefix):
        raise HubError(f"invalid prefix '{prefix}': use letters, digits, '-', '_' or '.'")
    repo_name = f"{prefix}-{name}" if prefix else name
    if len(repo_name) > 96:
        raise HubError(f"repository name '{repo_name}' is longer than 96 characters")
    return f"{namespace}/{repo_name}"


def validate_adapter(path: str | Path, name: str = "") -> Path:
    """Check that ``path`` is a safetensors LoRA adapter folder without pickles; return it."""
    path = Path(path)
    label = f"adapter '{name}'" if name else "adapter"
    if not path.is_dir():
        raise HubError(f"{label}: folder not found: {path}")
    pickles = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise HubError(f"{label}: {pickles[0]} is a pickle file; orthoguard only uploads safetensors adapters "
                       "(remove it, or re-save the adapter with safe_serialization=True)")
    for required in REQUIRED_FILES:
        if not (path / required).is_file():
            raise HubError(f"{label}: {path} has no {required} (not a safetensors LoRA adapter folder)")
    try:
        json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HubError(f"{label}: {path / 'adapter_config.json'} is not valid JSON ({exc.__class__.__name__})") from None
    return path


def _allowed(rel: str) -> bool:
    return any(fnmatch.fnmatch(Path(rel).name, pattern) for pattern in ALLOWED_PATTERNS)


def _stage(adapter: Path, card: str, dest: Path) -> list[str]:
    """Copy the adapter's uploadable files (not hidden ones, not its README) into ``dest`` and add the card."""
    copied, skipped = [], []
    for src in sorted(adapter.rglob("*")):
        rel = src.relative_to(adapter)
        if any(part.startswith(".") for part in rel.parts) or src.is_dir():
            continue
        if rel.as_posix() == "README.md":  # replaced by the orthoguard card
            continue
        if not src.is_file() or not _allowed(str(rel)):
            skipped.append(rel.as_posix())
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        if rel.as_posix() == "adapter_config.json":  # adapters from before the public id was recorded
            _record_public_base(target)
        copied.append(rel.as_posix())
    (dest / "README.md").write_text(card, encoding="utf-8")
    if skipped:
        log.info("%s: not uploaded: %s", adapter, ", ".join(skipped))
    return copied + ["README.md"]


def _record_public_base(config_path: Path) -> None:
    from orthoguard.models import public_model_id, record_base_model

    recorded = json.loads(config_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if recorded and public_model_id(recorded) != recorded:
        record_base_model(config_path.parent, recorded)
