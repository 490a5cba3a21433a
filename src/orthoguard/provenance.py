"""What made a result: orthoguard's version (and git commit, when run from a checkout) and the versions of the
libraries whose numerics it depends on. Every stage record and every ``summary.json`` carries it."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "trl")


@functools.cache
def versions() -> dict[str, str]:
    """``{"orthoguard": "0.1.0", "git_commit": "<sha>[+dirty]", "python": ..., "torch": ..., ...}``; a library
    that is not installed is left out, as is the commit outside a git checkout."""
    from orthoguard import __version__

    out = {"orthoguard": __version__}
    commit = _git_commit(Path(__file__).resolve().parent)
    if commit:
        out["git_commit"] = commit
    out["python"] = platform.python_version()
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _git_commit(folder: Path) -> str | None:
    try:
        sha = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha or None


def describe(found: dict[str, str] | None) -> str:
    """One line for a report or a card: ``orthoguard 0.1.0 (abc1234), torch 2.13.0, transformers 5.24.0, peft …``."""
    if not found:
        return "unknown versions"
    commit = found.get("git_commit")
    head = f"orthoguard {found.get('orthoguard', '?')}" + (f" ({commit[:7]}{'+dirty' if commit.endswith('+dirty') else ''})" if commit else "")
    return ", ".join([head] + [f"{k} {v}" for k, v in found.items() if k in LIBRARIES])
