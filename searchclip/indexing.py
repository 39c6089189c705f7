"""Incremental indexing of photo folders into an index folder.

Unchanged files (same size and mtime) are skipped without being opened.
Other files are read once: their bytes are hashed, and only content the
index has never seen is decoded and embedded, so moved files and copies
reuse stored vectors.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import logging
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ImageError, UsageError
from .images import DEFAULT_MAX_MEGAPIXELS, open_picture
from .model import DEFAULT_MODEL, ClipModel, load_model, load_model_for_index
from .storage import ImageRecord, Index, IndexInfo, NewImage, now
from .walking import FoundFile, Skipped, display_path, resolve_root, walk

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
# Images embedded between two commits, at least. Each commit rewrites the
# whole FAISS file, so once that takes SLOW_WRITE_SECONDS or more, commits are
# also spaced to keep writing under a tenth of the run time. A crash re-does
# at most one commit.
DEFAULT_COMMIT_SIZE = 256
SLOW_WRITE_SECONDS = 1.0


@dataclass
class IndexReport:
    """Counts of what one indexing run did, and the files it skipped."""

    index_dir: Path
    indexed: int = 0  # embedded by the model
    copied: int = 0  # byte-identical to an indexed file; vector reused
    unchanged: int = 0
    moved: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)


ProgressCallback = Callable[[int, int], None]  # (files done, files to read)


def index_paths(
    paths: Sequence[str | os.PathLike],
    index_dir: str | os.PathLike,
    model: str | None = None,
    device: str | None = None,
    exclude: Sequence[str] = (),
    include_hidden: bool = False,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    commit_size: int = DEFAULT_COMMIT_SIZE,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> IndexReport:
    """Index image files and folders into `index_dir`, creating it if needed.

    With no `paths`, the folders and files indexed before are indexed again.

    Args:
        model: hub id, local folder or `demo`; defaults to the index's own
            model, or `openai/clip-vit-base-patch32` for a new index.
        exclude: glob patterns of files and folders to leave out.
        workers: threads that read and decode files while the model runs;
            defaults to the number of CPUs.

    Raises:
        UsageError: a path does not exist, or there is nothing to index.
        ModelError, InvalidIndexError, IndexBusyError: see `storage` and `model`.
    """
    index_dir = Path(index_dir).expanduser()
    missing = [str(p) for p in paths if not os.path.lexists(os.path.expanduser(p))]
    if missing:
        raise UsageError(f"path not found: {display_path(missing[0])}; check the folder or file name")
    roots = [resolve_root(p) for p in paths]
    if not roots and not Index.exists(index_dir):
        raise UsageError("no folders to index; give one or more: searchclip index PHOTO_FOLDER")
    if max_megapixels != max_megapixels or max_megapixels <= 0:  # NaN compares unequal to itself
        raise UsageError(f"--max-megapixels {max_megapixels}: must be a positive number of megapixels")
    Index.check_not_busy(index_dir)

    clip, create_with = _model_and_info(index_dir, model, device)
    with Index.open_for_writing(index_dir, create_with=create_with) as index:
        if not roots:
            roots = index.roots()
            if not roots:
                raise UsageError("no folders to index; give one or more: searchclip index PHOTO_FOLDER")
        report = IndexReport(index_dir=index_dir)
        run = _Run(index, clip, report, batch_size, commit_size, max_megapixels)
        run.execute(roots, exclude, include_hidden, workers or os.cpu_count() or 1, progress)
        index.add_roots(r for r in roots if os.path.exists(r))
        index.close()
    return report


def _model_and_info(index_dir: Path, requested: str | None, device: str | None) -> tuple[ClipModel, IndexInfo | None]:
    if Index.exists(index_dir):
        index = Index.open(index_dir, check=False)
        info = index.info
        index.close()
        return load_model_for_index(info.model_id, info.fingerprint, requested, device), None
    clip = load_model(requested or DEFAULT_MODEL, device)
    stamp = now()
    info = IndexInfo(clip.model_id, clip.dimension, clip.fingerprint, 0, stamp, stamp)
    return clip, info


@dataclass
class _Read:
    """A file after the worker read it: its hash and, for new content, its pixels."""

    file: FoundFile
    content_hash: str = ""
    pixels: np.ndarray | None = None
    width: int = 0
    height: int = 0
    format: str = ""
    error: str | None = None


class _Run:
    """One indexing run over an open, write-locked index."""

    def __init__(self, index: Index, clip: ClipModel, report: IndexReport, batch_size: int, commit_size: int, max_megapixels: float):
        self.index = index
        self.clip = clip
        self.report = report
        self.batch_size = batch_size
        self.max_megapixels = max_megapixels
        self.committer = _Committer(index, commit_size)
        # Rows of files that vanished: by content hash, so a moved file finds its row.
        self.vanished: dict[str, list[ImageRecord]] = collections.defaultdict(list)
        # Images of this run waiting for the model, grouped by content hash,
        # so byte-identical files are embedded once.
        self.waiting: dict[str, list[NewImage]] = {}
        self.batch: list[tuple[str, np.ndarray]] = []
        self.embedded: dict[str, np.ndarray] = {}
        # Read by worker threads, which must not query SQLite themselves.
        self.known_hashes = index.content_hashes()

    def execute(self, roots: Sequence[str], exclude: Sequence[str], include_hidden: bool, workers: int, progress: ProgressCallback | None) -> None:
        found: dict[str, FoundFile] = {}
        for item in walk(roots, exclude, include_hidden):
            if isinstance(item, Skipped):
                self._skip(item.path, item.reason)
            else:
                found[item.path] = item

        known: dict[str, ImageRecord] = {}
        for root in roots:
            for record in self.index.records_under(root):
                known[record.path] = record
        for path, record in known.items():
            if path not in found and _is_deleted(path):
                self.vanished[record.content_hash].append(record)

        to_read: list[tuple[FoundFile, ImageRecord | None]] = []
        for path, file in found.items():
            record = known.get(path)
            if record is not None and (record.size, record.mtime, record.inode) == (file.size, file.mtime, file.inode):
                self.report.unchanged += 1
            else:
                to_read.append((file, record))

        self._read_all(to_read, workers, progress)
        self._embed_batch()
        deleted = [record.id for records in self.vanished.values() for record in records]
        self.report.removed += len(deleted)
        self.committer.remove(deleted)
        self.committer.flush()

    def _read_all(self, to_read, workers: int, progress: ProgressCallback | None) -> None:
        # Reading and decoding run in a thread pool ahead of the model: Pillow
        # and NumPy release the GIL, so decoding overlaps inference. The
        # look-ahead window bounds memory to a few batches of pixels.
        look_ahead = max(self.batch_size * 2, workers * 4)
        pending: collections.deque = collections.deque()
        items = iter(to_read)
        done = 0
        if progress:
            progress(0, len(to_read))
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="searchclip-read") as pool:
            while True:
                while len(pending) < look_ahead:
                    item = next(items, None)
                    if item is None:
                        break
                    pending.append((item[1], pool.submit(self._read, item[0])))
                if not pending:
                    break
                record, future = pending.popleft()
                self._handle(future.result(), record)
                done += 1
                if progress:
                    progress(done, len(to_read))

    def _read(self, file: FoundFile) -> _Read:
        # Runs in a worker thread: touches nothing shared but read-only sets.
        result = _Read(file=file)
        try:
            with open(file.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            result.error = "file was removed during the run"
            return result
        except OSError as error:
            result.error = f"cannot read file ({error.strerror})"
            return result
        if not data:
            result.error = "empty file (0 bytes)"
            return result
        result.content_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
        if result.content_hash in self.vanished or result.content_hash in self.known_hashes:
            return result  # probably a move or a copy; `_handle` decodes it if not
        self._decode(result, data)
        return result

    def _decode(self, result: _Read, data: bytes | None = None) -> None:
        try:
            picture = open_picture(result.file.path, self.max_megapixels, self.clip.draft_size, data=data)
        except ImageError as error:
            result.error = error.reason
            return
        result.pixels = self.clip.preprocess(picture.image)
        result.width, result.height, result.format = picture.width, picture.height, picture.format

    def _handle(self, read: _Read, old: ImageRecord | None) -> None:
        file = read.file
        if read.error:
            self._skip(file.path, read.error)
            return
        if old is not None and old.content_hash == read.content_hash:
            self.index.touch(old.id, file.size, file.mtime, file.inode)
            self.report.unchanged += 1
            return

        removed = [old.id] if old is not None else []
        moved_from = self.vanished.get(read.content_hash)
        if moved_from:
            record = moved_from.pop()
            if not moved_from:
                del self.vanished[read.content_hash]
            if removed:
                # The file moved onto an indexed path: drop that path's row first.
                self.committer.remove(removed)
                self.committer.flush()
            self.index.move(record.id, file.path, file.size, file.mtime, file.inode)
            self.report.moved += 1
            log.debug("moved %s -> %s", display_path(record.path), display_path(file.path))
            return

        new = NewImage(file.path, file.size, file.mtime, read.content_hash, read.width, read.height, read.format,
                       vector=None, inode=file.inode)
        existing = self.index.records_by_hash(read.content_hash)
        if existing:
            source = existing[0]
            new.width, new.height, new.format = source.width, source.height, source.format
            new.vector = self.index.vector(source.id)
            self.report.copied += 1
            self.committer.add(new, removed)
            return
        if read.content_hash in self.embedded:
            # Embedded earlier in this run but not committed yet.
            new.vector = self.embedded[read.content_hash]
            self.report.copied += 1
            self.committer.add(new, removed)
            return
        if read.content_hash in self.waiting:
            self.waiting[read.content_hash].append(new)
            self.report.copied += 1
            self.committer.remove_later(removed)
            return

        if read.pixels is None:
            # The hash matched a row that a removal or move in this run took away.
            self._decode(read)
            if read.error:
                self._skip(file.path, read.error)
                return
        self.waiting[read.content_hash] = [new]
        self.committer.remove_later(removed)
        self.batch.append((read.content_hash, read.pixels))
        self.report.indexed += 1
        if len(self.batch) >= self.batch_size:
            self._embed_batch()

    def _embed_batch(self) -> None:
        if not self.batch:
            return
        hashes = [content_hash for content_hash, _ in self.batch]
        vectors = self.clip.embed_pixels(np.stack([pixels for _, pixels in self.batch]))
        self.batch = []
        for content_hash, vector in zip(hashes, vectors):
            self.embedded[content_hash] = vector
            for image in self.waiting.pop(content_hash):
                image.vector = vector
                self.committer.add(image)

    def _skip(self, path: str, reason: str) -> None:
        self.report.skipped.append(Skipped(path, reason))
        log.warning("skipped %s: %s", display_path(path), reason)


def _is_deleted(path: str) -> bool:
    # A file that is gone, or replaced by a folder, counts as deleted. One
    # under a folder that cannot be listed right now keeps its row, vector
    # and labels, and so does one whose name this locale cannot encode.
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, UnicodeEncodeError):
        return False
    return not stat.S_ISREG(info.st_mode)


class _Committer:
    """Collects added and removed rows and commits them in crash-safe steps."""

    def __init__(self, index: Index, commit_size: int):
        self.index = index
        self.commit_size = commit_size
        self.added: list[NewImage] = []
        self.removed: list[int] = []
        self.removed_later: list[int] = []
        self.last_commit = time.monotonic()
        self.last_write_seconds = 0.0

    def add(self, image: NewImage, removed: Sequence[int] = ()) -> None:
        self.added.append(image)
        self.removed.extend(removed)
        self._maybe_flush()

    def remove(self, ids: Sequence[int]) -> None:
        self.removed.extend(ids)

    def remove_later(self, ids: Sequence[int]) -> None:
        # Rows of changed files whose new content is still waiting for the
        # model; they go out in the same commit as their replacement.
        self.removed_later.extend(ids)

    def flush(self) -> None:
        if not self.added and not self.removed and not self.removed_later:
            return
        started = time.monotonic()
        self.index.commit(self.added, self.removed + self.removed_later)
        self.last_write_seconds = time.monotonic() - started
        self.last_commit = time.monotonic()
        self.added, self.removed, self.removed_later = [], [], []

    def _maybe_flush(self) -> None:
        if len(self.added) < self.commit_size:
            return
        # Large indexes take seconds to rewrite; space their commits so that
        # writing stays under a tenth of the run. Small ones commit on count.
        slow_write = self.last_write_seconds >= SLOW_WRITE_SECONDS
        if slow_write and time.monotonic() - self.last_commit < 10 * self.last_write_seconds:
            return
        self.flush()
