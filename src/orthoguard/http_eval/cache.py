"""The append-only JSONL caches of answers and verdicts, which let an interrupted run resume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from orthoguard.io import JsonlCache

if TYPE_CHECKING:
    from orthoguard.http_eval.client import Endpoint

# ---------------------------------------------------------------------------------------------------------
# The response cache


def response_cache(out_dir: Path, endpoint: Endpoint) -> JsonlCache:
    return JsonlCache(out_dir / "cache" / f"{endpoint.label}.jsonl", ("set", "id"))

