"""Finding the image files under the folders and files given to `searchclip index`."""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class FoundFile:
    """A regular file that may be an image, with what `stat` reported."""

    path: str  # absolute, symbolic links in folder names kept as given
    size: int  # bytes
    mtime: float  # seconds since the epoch
    inode: int  # tells apart two files swapped by renames that kept sizes and mtimes


@dataclass(frozen=True)
class Skipped:
    """A file that was not indexed, and why."""

    path: str
    reason: str


def walk(
    roots: Sequence[str],
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
) -> Iterator[FoundFile | Skipped]:
    """Yield image files under `roots` and the files that had to be skipped.

    Folders are walked recursively, following symbolic links but never into a
    folder already visited, so link cycles end. Files given directly are taken
    whatever their suffix; inside folders only image suffixes are considered.
    `exclude` holds glob patterns matched against both the name and the full
    path of every file and folder.
    """
    visited: set[tuple[int, int]] = set()
    for root in roots:
        root_path = resolve_root(root)
        if _excluded(root_path, exclude):
            continue
        if os.path.isdir(root_path):
            yield from _walk_folder(root_path, exclude, include_hidden, visited)
        else:
            yield _check_file(root_path)


def resolve_root(path: str | os.PathLike) -> str:
    """Return the absolute path, with symbolic links resolved, under which a root's files are stored.

    Resolving makes a folder reached through a link and through its real
    path one root, so its files are never stored twice.
    """
    return os.path.realpath(os.path.expanduser(path))


def display_path(path: str) -> str:
    """Return a path safe to print on one line: control characters are escaped."""
    if path.isprintable():
        return path
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in path)


def _walk_folder(
    folder: str, exclude: Sequence[str], include_hidden: bool, visited: set[tuple[int, int]]
) -> Iterator[FoundFile | Skipped]:
    try:
        info = os.stat(folder)
    except OSError as error:
        yield Skipped(folder, f"cannot open folder ({error.strerror})")
        return
    key = (info.st_dev, info.st_ino)
    if key in visited:
        return
    visited.add(key)

    try:
        with os.scandir(folder) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
    except OSError as error:
        yield Skipped(folder, f"cannot list folder ({error.strerror})")
        return

    for entry in children:
        path = entry.path
        if not include_hidden and entry.name.startswith("."):
            continue
        if _excluded(path, exclude):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk_folder(path, exclude, include_hidden, visited)
        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            yield _check_file(path)


def _check_file(path: str) -> FoundFile | Skipped:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Skipped(path, "file name is not valid UTF-8; rename the file to index it")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return Skipped(path, "broken symbolic link")
        return Skipped(path, "file not found")
    except OSError as error:
        return Skipped(path, f"cannot read file ({error.strerror})")
    if not stat.S_ISREG(info.st_mode):
        return Skipped(path, "not a regular file")
    if info.st_size == 0:
        return Skipped(path, "empty file (0 bytes)")
    return FoundFile(path=path, size=info.st_size, mtime=info.st_mtime, inode=info.st_ino)


def _excluded(path: str, patterns: Sequence[str]) -> bool:
    name = os.path.basename(path)
    return any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern) for pattern in patterns)
