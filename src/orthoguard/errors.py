"""Errors that the CLI reports as one line with exit code 2 (bad input), never as a traceback."""

import errno
from pathlib import Path


class OrthoguardError(Exception):
    """Base class for expected, user-facing errors."""


class ConfigError(OrthoguardError):
    """A config file is missing, malformed, or has an unknown key or a wrong type."""


class DataError(OrthoguardError):
    """A data file is missing or malformed, or splits overlap."""


class DirectionError(OrthoguardError):
    """A direction file does not fit the model being trained."""


# OSError numbers that are about the disk or the output path the user chose, not a bug: one line, exit 2.
_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EISDIR,
                errno.EDQUOT}
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
            errno.ENOTDIR: "a folder on the path is a file", errno.EEXIST: "it is a file, not a folder",
            errno.EISDIR: "it is a folder, not a file"}
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def disk_error_line(exc: BaseException) -> str | None:
    """One line for an OSError about the disk or an output path (full disk, read-only, no permission, a file
    where a folder should be), also when a library wrapped it (safetensors, torch); None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
            path = exc.filename
            if exc.errno == errno.EEXIST and (path is None or Path(path).is_dir()):
                return None  # "already exists" on a folder: not the user's output path being a file
            reason = _REASONS[exc.errno]
            if path is None:
                return f"{reason} ({exc.strerror or exc})"
            # a permission error or a file in the way can come from reading too; a full or read-only disk cannot
            return f"cannot write {path}: {reason}" if exc.errno in _WRITE_ERRNOS else f"{path}: {reason}"
        text = str(exc)
        if "No space left on device" in text or "os error 28" in text:
            return f"no space left on the device ({text.splitlines()[0]})"
        exc = exc.__cause__ or exc.__context__
    return None
