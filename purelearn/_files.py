"""Crash-safe files: locked temporary files beside a target, and the cleanup of dead ones.

A writer creates ``<prefix><16 hex digits><suffix>`` in the target's directory
and holds an exclusive ``flock`` on it until it has moved it into place (or
removed it). A killed writer's file stays behind, but the kernel drops its
lock, so :func:`remove_stale` can tell debris (a lock it can take) from the
live file of a concurrent writer (a lock it cannot). Where ``fcntl`` is
missing (Windows) nothing is locked and debris is left alone.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable
from types import ModuleType

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = [
    "same_file",
    "close_temp",
    "remove_stale",
    "open_locked_temp",
    "fsync_directory",
    "TOKEN",
]

#: the random part of every temporary name, as a regex
TOKEN = r"[0-9a-f]{16}"


def same_file(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def close_temp(path: str, fd: int) -> None:
    """Close the temporary file ``fd``, removing it first if ``path`` still names it.

    Call it in a ``finally`` after ``os.replace(path, target)``: once renamed into
    place the file is kept; a write that failed (an error, or an interrupt) leaves
    no temporary behind. It is unlinked before closing, as the open file's lock
    tells concurrent cleaners it is live.
    """
    try:
        if same_file(path, fd):
            os.unlink(path)
    finally:
        os.close(fd)


def remove_stale(
    directory: str | os.PathLike[str],
    pattern: re.Pattern[str],
    *,
    keep: Callable[[re.Match[str], int], bool] | None = None,
) -> None:
    """Delete the files of ``directory`` whose names match ``pattern`` and whose writer is gone.

    A file whose lock we can take belongs to a dead writer and is removed,
    unless ``keep(match, fd)`` (called with the lock held) says otherwise;
    a locked one is a live writer's and is left alone, as is everything in
    an unlistable directory.
    """
    if fcntl is None:
        return
    try:
        with os.scandir(directory) as entries:
            matches = [(e.path, pattern.fullmatch(e.name)) for e in entries]
    except OSError:
        return
    for path, match in matches:
        if match is None:
            continue
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:  # gone already, or not ours to touch
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if (keep is None or not keep(match, fd)) and same_file(path, fd):
                os.unlink(path)
        except OSError:  # locked by a live writer (or no lock support): leave it
            pass
        finally:
            os.close(fd)


def open_locked_temp(
    directory: str | os.PathLike[str], prefix: str, suffix: str
) -> tuple[int, str]:
    """Create ``<prefix><16 hex><suffix>`` in ``directory`` (mode 0o666 less the umask),
    locked; return its descriptor and path. Close the descriptor only once the file is
    in place or removed: the lock tells cleaners it is live."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        path = os.path.join(os.fspath(directory), prefix + secrets.token_hex(8) + suffix)
        try:
            fd = os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        if fcntl is None:
            return fd, path
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks: cleaners cannot lock it either
            return fd, path
        if same_file(path, fd):  # else a cleaner took it for debris between open and flock
            return fd, path
        os.close(fd)
    raise OSError(f"could not create a temporary file {prefix}*{suffix} in {directory}")


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Flush a directory's entries (a rename in it) to disk, where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible everywhere (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
