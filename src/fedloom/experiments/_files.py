"""Writing a file so that a crash leaves either the old one or the new one whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_file",
    "file_mode",
    "fsync_directory",
    "locked_directory",
    "temporary_file",
]


def file_mode() -> int:
    """The permissions a new file gets from the umask (``open`` gives them)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_file(
    directory: Path, prefix: str, suffix: str, *, private: bool = False
) -> tuple[int, str]:
    """``tempfile.mkstemp`` in ``directory`` with :func:`file_mode`'s permissions
    (mkstemp's are the owner's alone, which ``private`` keeps, for secrets): a
    run's files, renamed into place, stay readable by whom the user's umask lets
    read them."""
    handle, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    if not private:
        os.fchmod(handle, file_mode())
    return handle, name


@contextlib.contextmanager
def locked_directory(directory: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (``flock``, POSIX; the system drops
    it when the process ends, however it ends); a ``ValueError`` at once if another
    process holds it, or, with ``wait``, once it lets go."""
    if os.name != "posix":  # pragma: no cover - no flock on directories there
        yield
        return
    import fcntl

    descriptor = os.open(directory, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ValueError(
                f"{directory}: another fedloom process is running there"
            ) from None
        yield
    finally:
        os.close(descriptor)


def directory_locked(directory: Path) -> bool:
    """Whether a process holds :func:`locked_directory`'s lock on ``directory``
    (probed with a shared lock, let go at once)."""
    if os.name != "posix":  # pragma: no cover - no flock on directories there
        return True
    import fcntl

    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # lets go of the lock, if it was taken
    return False


def fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":  # pragma: no cover - directories cannot be opened there
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_file(
    path: Path, mode: str = "w", *, private: bool = False
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path``.

    The data is flushed and fsynced before the rename; on an exception the temporary
    file is removed and ``path`` is untouched. The file gets the permissions the
    umask gives new files, or with ``private`` (keys, tokens) its owner's alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = temporary_file(
        path.parent, f".{path.name}-", ".tmp", private=private
    )
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
        fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
