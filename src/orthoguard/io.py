"""Atomic file writes (temp file + rename) and small JSON/JSONL helpers, so no stage reads a half-written file."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from orthoguard.errors import DataError, OrthoguardError

log = logging.getLogger(__name__)


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc/self/status); elsewhere
    set and restored under a lock (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (0o666) or folder (0o777) under the umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def apply_umask(path: str | Path) -> None:
    """Give a file or folder made by ``tempfile`` (always 0600/0700) the mode any other tool would give it, so
    that renaming it into place does not leave outputs that only their owner can read. Folders: recursively,
    sub-folders and files alike."""
    path = Path(path)
    targets = [path, *(c for c in path.rglob("*") if not c.is_symlink())] if path.is_dir() else [path]
    for target in targets:
        _chmod(target, default_mode(directory=target.is_dir()))


def _chmod(path: str | Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as exc:  # a file system without Unix modes (some network or FAT mounts): keep what it gave
        log.debug("cannot chmod %s: %s", path, exc)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The file gets the usual ``0o666 & ~umask`` mode (``mkstemp`` alone would leave it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.isfile(tmp):
            _chmod(tmp, default_mode())
        try:
            os.replace(tmp, path)
        except OSError as exc:  # e.g. ``path`` is a folder: name it, not the temp file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
    except OSError as exc:
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # write() names no file: name it
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive lock held for the block, on the lock file ``path`` (created if absent): several processes
    (``orthoguard run --jobs N``, SLURM jobs on a shared file system) that read-modify-write one file take it
    first. ``fcntl.flock``; where it is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def check_writable_dir(path: str | Path, what: str = "output directory") -> Path:
    """Create ``path`` (and its parents) if absent and check that files can be written in it.

    One-line ``OrthoguardError`` naming the path when it (or a parent) is a file, or when the folder cannot be
    created or written (read-only file system, no permission, disk full)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"cannot be created: {parent} is a file"
            raise OrthoguardError(f"{what} {path} {where}, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".orthoguard-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OrthoguardError(f"{what} {path} is not writable ({exc.strerror or exc})") from None
    return path


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line of a JSONL file; a line that is not a JSON object is a
    ``DataError`` naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [record for _, record in iter_jsonl(path)]


def fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's relative file names and their hashes; "missing" if absent.

    Digests are memoised by (path, size, mtime), so a run hashes each unchanged file once."""
    path = Path(path)
    if path.is_file():
        return _file_digest(str(path), *_stat_key(path))
    if path.is_dir():
        h = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{file.relative_to(path).as_posix()}\0{_file_digest(str(file), *_stat_key(file))}\n".encode())
        return h.hexdigest()
    return "missing"


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        # several stage processes may append to one cache (``run --jobs N``): one writer at a time
        with file_lock(self.path.with_name(f".{self.path.name}.lock")):
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
