"""File primitives of the host program: atomic write, undo, attributes, removal. Standard library
only.

A file is written to a temporary sibling (owner and mode set, fsync'd) and renamed over the old
one, so a cut never leaves a half-written file; the old one is first kept as a hard link (no cost
in space) so a failed run can put it back.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import hashlib
import os
import pwd

TMP_SUFFIX = ".pyinfra-synapse-tmp"
PREVIOUS_SUFFIX = TMP_SUFFIX + "-previous"  # the replaced file, kept until the checks pass


class FileError(Exception):
    """A file that cannot be read; the message names it."""


def ids(owner: str, group: str) -> tuple[int, int]:
    return pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid


def file_sha256(path: str) -> str | None:
    """The file's sha256, None if it does not exist; FileError if it cannot be read."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:  # e.g. a directory where the file belongs
        raise FileError(f"cannot read {path}: {error.strerror or error}") from None


def write_atomically(path: str, content: bytes, mode: int, uid: int, gid: int) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = sibling(path, TMP_SUFFIX)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def replace_file(
    path: str, content: bytes, mode: int, owner: str, group: str, backups: dict[str, str | None]
) -> None:
    """Write one file atomically; record in ``backups`` how to undo it, before it happens."""
    uid, gid = ids(owner, group)
    if os.path.lexists(path):
        backup = sibling(path, PREVIOUS_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(backup)  # left by a killed run
        os.link(path, backup)  # the old inode, content, mode and owner
        backups[path] = backup
    else:
        backups[path] = None
    write_atomically(path, content, mode, uid, gid)


def roll_back(backups: dict[str, str | None]) -> list[str]:
    """Put back every file replaced or created (``backups``); returns what could not be put back."""
    problems = []
    for path, backup in reversed(list(backups.items())):
        try:
            if backup is None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                os.replace(backup, path)
        except OSError as error:
            problems.append(f"{path}: {error.strerror or error}")
    backups.clear()
    return problems


def drop_backups(backups: dict[str, str | None]) -> None:
    """The run is committed: the old copies go."""
    for backup in backups.values():
        if backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)


def fix_attributes(path: str, mode: int, owner: str, group: str) -> None:
    """Mode and owner as planned (content untouched)."""
    uid, gid = ids(owner, group)
    st = os.stat(path)
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid)
    if st.st_mode & 0o7777 != mode:
        os.chmod(path, mode)


def ensure_directory(path: str, mode: int, owner: str, group: str) -> None:
    os.makedirs(path, exist_ok=True)
    fix_attributes(path, mode, owner, group)


def remove_file(path: str, prune_empty_parent: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if prune_empty_parent:
        with contextlib.suppress(OSError):  # e.g. a unit's drop-in directory, once empty
            os.rmdir(os.path.dirname(path))


def remove_leftover_temporaries(directories: set[str]) -> None:
    """Temporary files and old copies a cut run left behind; never a live file."""
    for directory in directories:
        for pattern in (f".*{TMP_SUFFIX}", f".*{PREVIOUS_SUFFIX}"):
            for tmp in glob.glob(os.path.join(glob.escape(directory), pattern)):
                os.unlink(tmp)


def sibling(path: str, suffix: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{suffix}")
