"""The append-only JSONL caches of answers and verdicts, which let an interrupted run resume."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orthoguard.errors import DataError

if TYPE_CHECKING:
    from orthoguard.http_eval.client import Endpoint

log = logging.getLogger(__package__)  # "orthoguard.http_eval", the logger name from before the split


# ---------------------------------------------------------------------------------------------------------
# The response cache


class JsonlCache:
    """An append-only JSONL file of rows; each row is flushed as it is written. The last row for a key wins."""

    def __init__(self, path: Path, key_fields: tuple[str, ...]):
        self.path, self.key_fields = path, key_fields
        self._tail_checked = False

    def key(self, row: dict) -> tuple:
        return tuple(row.get(f) for f in self.key_fields)

    def load(self) -> dict[tuple, dict]:
        if not self.path.is_file():
            return {}
        rows: dict[tuple, dict] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if lineno == len(lines):  # the run was killed while writing this line
                    log.warning("%s:%d: ignoring a truncated last line", self.path, lineno)
                    continue
                raise DataError(f"{self.path}:{lineno}: not valid JSON (delete the line or the file)") from None
            rows[self.key(row)] = row
        return rows

    def append(self, row: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self._tail_checked:
            self._drop_partial_last_line()
            self._tail_checked = True
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _drop_partial_last_line(self) -> None:
        """Cut a line that an earlier run was killed while writing, so that new rows start on a line of their own."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            with self.path.open("r+b") as fh:
                fh.truncate(data.rfind(b"\n") + 1)


def response_cache(out_dir: Path, endpoint: Endpoint) -> JsonlCache:
    return JsonlCache(out_dir / "cache" / f"{endpoint.label}.jsonl", ("set", "id"))

