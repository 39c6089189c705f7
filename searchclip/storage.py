"""The index folder: a FAISS file of vectors and a SQLite file of metadata.

Layout of an index folder:
    vectors.faiss   IndexIDMap2 over IndexFlatIP; FAISS ids are image row ids
    metadata.db     SQLite (WAL): images, index info, roots, labels
    write.lock      held by the one process allowed to write
    commit.lock     held briefly while both stores change, and by readers while
                    they load both, so a reader never sees half a commit

Two files cannot change atomically together, so each commit runs in three
steps: (1) new rows are committed as `pending` and removed ids are journalled
in `removed_ids`; (2) the FAISS file is replaced atomically; (3) pending rows
become `ready` and the journal is cleared. A crash between any two steps
leaves only journalled differences, which readers ignore and the next writer
resolves, so at most the rows of one commit are re-done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import faiss
import numpy as np
import sqlite_utils

from .errors import IndexBusyError, InvalidIndexError, UsageError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VECTORS_FILE = "vectors.faiss"
METADATA_FILE = "metadata.db"
WRITE_LOCK_FILE = "write.lock"
COMMIT_LOCK_FILE = "commit.lock"
INDEX_ENV = "SEARCHCLIP_INDEX"

READY = "ready"
PENDING = "pending"


@dataclass(frozen=True)
class IndexInfo:
    """Model, dimension and schema version recorded in an index."""

    model_id: str
    dimension: int
    fingerprint: str
    schema_version: int
    created: str
    updated: str


@dataclass(frozen=True)
class ImageRecord:
    """One row of the images table."""

    id: int
    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int
    format: str
    indexed_at: str
    inode: int


@dataclass
class NewImage:
    """An image waiting to be committed: its row values and its vector."""

    path: str
    size: int
    mtime: float
    content_hash: str
    width: int
    height: int
    format: str
    vector: np.ndarray | None
    inode: int = 0


def default_index_dir() -> Path:
    """Return `$SEARCHCLIP_INDEX`, else `indexes/default` under the current folder."""
    value = os.environ.get(INDEX_ENV, "").strip()
    return Path(value).expanduser() if value else Path("indexes") / "default"


def now() -> str:
    """Return the current UTC time as an ISO 8601 string, the format stored in every table."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Index:
    """An open index folder.

    Open one with `Index.open` to read, or `Index.open_for_writing` (a context
    manager holding the write lock) to change it.
    """

    def __init__(self, folder: Path, db: sqlite_utils.Database, vectors: faiss.Index, writable: bool):
        self.folder = folder
        self.db = db
        self.vectors = vectors
        self.writable = writable
        self._write_lock: int | None = None

    # -- opening ----------------------------------------------------------------

    @classmethod
    def exists(cls, folder: str | os.PathLike) -> bool:
        """Whether `folder` holds an index."""
        return (Path(folder) / METADATA_FILE).is_file()

    @classmethod
    def check_not_busy(cls, folder: str | os.PathLike) -> None:
        """Raise `IndexBusyError` now if another process writes to the index.

        Lets a writer fail before seconds of model loading; the lock itself
        is taken later by `open_for_writing`.
        """
        folder = Path(folder)
        if (folder / WRITE_LOCK_FILE).exists():
            os.close(_acquire_write_lock(folder))

    @classmethod
    def open(cls, folder: str | os.PathLike, check: bool = True) -> "Index":
        """Open an existing index for reading.

        Raises:
            InvalidIndexError: the folder holds no index, a newer schema, or
                stores that disagree (then `searchclip repair` fixes it).
        """
        folder = Path(folder)
        _check_folder(folder)
        if not cls.exists(folder):
            raise InvalidIndexError(
                f"no index at {folder}; create one with: searchclip index PHOTO_FOLDER --index {folder}"
            )
        db = _connect(folder / METADATA_FILE, read_only=True)
        _check_schema(db, folder)
        with _locked(folder / COMMIT_LOCK_FILE, fcntl.LOCK_SH):
            vectors = _read_vectors(folder, _info(db).dimension)
            index = cls(folder, db, vectors, writable=False)
            if check:
                index.check_agreement()
        return index

    @classmethod
    @contextlib.contextmanager
    def open_for_writing(
        cls, folder: str | os.PathLike, create_with: "IndexInfo | None" = None, check: bool = True
    ) -> Iterator["Index"]:
        """Open (or, given `create_with`, create) an index holding its write lock.

        Resolves whatever an interrupted commit left journalled before
        yielding, so the index starts consistent.

        Raises:
            IndexBusyError: another process is writing to the index.
        """
        folder = Path(folder)
        _check_folder(folder)
        if create_with is None and not cls.exists(folder):
            raise InvalidIndexError(f"no index at {folder}; create one with: searchclip index PHOTO_FOLDER --index {folder}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UsageError(f"index folder {folder} cannot be created ({error.strerror}); choose another --index") from None
        lock = _acquire_write_lock(folder)
        try:
            if not cls.exists(folder):
                if create_with is None:
                    raise InvalidIndexError(
                        f"no index at {folder}; create one with: searchclip index PHOTO_FOLDER --index {folder}"
                    )
                _create(folder, create_with)
            db = _connect(folder / METADATA_FILE)
            _check_schema(db, folder)
            info = _info(db)
            try:
                vectors = _read_vectors(folder, info.dimension)
            except InvalidIndexError:
                if check:
                    raise
                # Only repair opens without checks; it rebuilds this side.
                log.warning("%s is unreadable; starting from no vectors", folder / VECTORS_FILE)
                vectors = _empty_vectors(info.dimension)
            index = cls(folder, db, vectors, writable=True)
            index._write_lock = lock
            if check:
                index._resolve_journal()
                index.check_agreement()
            yield index
        finally:
            os.close(lock)

    # -- reading ----------------------------------------------------------------

    @property
    def info(self) -> IndexInfo:
        """Model, dimension and schema facts of this index."""
        return _info(self.db)

    def count(self) -> int:
        """Number of searchable images."""
        return self.db.conn.execute("select count(*) from images where state = ?", [READY]).fetchone()[0]

    def records(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        """Return the ready rows of the given ids, by id."""
        ids = [int(i) for i in ids]
        found: dict[int, ImageRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.conn.execute(
                f"select {_RECORD_COLUMNS} from images where state = ? and id in ({marks})", [READY, *chunk]
            ):
                found[row[0]] = ImageRecord(*row)
        return found

    def records_under(self, folder: str) -> Iterator[ImageRecord]:
        """Yield ready rows whose path lies under `folder` (an absolute path)."""
        prefix = folder.rstrip(os.sep) + os.sep
        sql = f"select {_RECORD_COLUMNS} from images where state = ? and (path = ? or substr(path, 1, ?) = ?)"
        for row in self.db.conn.execute(sql, [READY, folder, len(prefix), prefix]):
            yield ImageRecord(*row)

    def record_by_path(self, path: str) -> ImageRecord | None:
        """Return the ready row of an absolute path, if any."""
        row = self.db.conn.execute(f"select {_RECORD_COLUMNS} from images where state = ? and path = ?", [READY, path]).fetchone()
        return ImageRecord(*row) if row else None

    def records_by_hash(self, content_hash: str) -> list[ImageRecord]:
        """Return the ready rows with this content hash."""
        sql = f"select {_RECORD_COLUMNS} from images where state = ? and content_hash = ?"
        return [ImageRecord(*row) for row in self.db.conn.execute(sql, [READY, content_hash])]

    def content_hashes(self) -> set[str]:
        """Return the content hashes of all ready rows."""
        return {row[0] for row in self.db.conn.execute("select content_hash from images where state = ?", [READY])}

    def vector(self, image_id: int) -> np.ndarray:
        """Return the stored vector of one image."""
        return self.vectors.reconstruct(int(image_id))

    def all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (ids, vectors) of everything in the FAISS file, in storage order."""
        ids = faiss.vector_to_array(self.vectors.id_map).astype(np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.info.dimension), np.float32)
        return ids, self.vectors.index.reconstruct_n(0, len(ids))

    def roots(self) -> list[str]:
        """Folders and files given to `searchclip index`, oldest first."""
        return [row[0] for row in self.db.conn.execute("select path from roots order by added_at, path")]

    def check_agreement(self) -> None:
        """Check that every ready row has a vector and every vector a row.

        Rows and ids journalled by an unfinished commit are allowed to differ.

        Raises:
            InvalidIndexError: naming the counts and pointing to `searchclip repair`.
        """
        ready = {row[0] for row in self.db.conn.execute("select id from images where state = ?", [READY])}
        in_flight = {row[0] for row in self.db.conn.execute("select id from images where state = ?", [PENDING])}
        in_flight |= {row[0] for row in self.db.conn.execute("select id from removed_ids")}
        stored = set(faiss.vector_to_array(self.vectors.id_map).tolist())
        without_vector = ready - stored
        without_row = stored - ready - in_flight
        if without_vector or without_row:
            raise InvalidIndexError(
                f"index {self.folder} is inconsistent: {len(without_vector)} images have no vector and "
                f"{len(without_row)} vectors have no image ({len(ready)} images, {len(stored)} vectors); "
                f"run: searchclip repair --index {self.folder}"
            )

    # -- writing ----------------------------------------------------------------

    def commit(self, added: Sequence[NewImage] = (), removed_ids: Sequence[int] = ()) -> list[int]:
        """Add images and remove rows in one crash-safe commit; return the new ids.

        The three steps are described in the module docstring.
        """
        self._require_writable()
        if not added and not removed_ids:
            return []
        with _locked(self.folder / COMMIT_LOCK_FILE, fcntl.LOCK_EX):
            stamp = now()
            with transaction(self.db):
                # Removals first: a changed file's new row reuses its old path.
                for image_id in removed_ids:
                    self.db.conn.execute("insert or ignore into removed_ids (id) values (?)", [int(image_id)])
                    self.db.conn.execute("delete from labels where image_id = ?", [int(image_id)])
                    self.db.conn.execute("delete from images where id = ?", [int(image_id)])
                new_ids = [self._insert_pending(image, stamp) for image in added]

            if removed_ids:
                self.vectors.remove_ids(np.asarray(removed_ids, dtype=np.int64))
            if added:
                matrix = np.stack([image.vector for image in added]).astype(np.float32)
                self.vectors.add_with_ids(matrix, np.asarray(new_ids, dtype=np.int64))
            self._write_vectors()

            with transaction(self.db):
                self.db.conn.execute("update images set state = ? where state = ?", [READY, PENDING])
                self.db.conn.execute("delete from removed_ids")
                self.db.conn.execute("update index_info set updated = ?", [stamp])
        return new_ids

    def move(self, image_id: int, path: str, size: int, mtime: float, inode: int) -> None:
        """Point a row at a new path; the vector is unchanged, so only SQLite changes."""
        self._require_writable()
        with transaction(self.db):
            self.db.conn.execute(
                "update images set path = ?, size = ?, mtime = ?, inode = ?, indexed_at = ? where id = ?",
                [path, size, mtime, inode, now(), image_id],
            )

    def touch(self, image_id: int, size: int, mtime: float, inode: int) -> None:
        """Record a new size, mtime and inode for a file whose content did not change."""
        self._require_writable()
        with transaction(self.db):
            self.db.conn.execute("update images set size = ?, mtime = ?, inode = ? where id = ?", [size, mtime, inode, image_id])

    def add_roots(self, paths: Iterable[str]) -> None:
        """Remember folders and files given to `searchclip index`, with the time of this run."""
        self._require_writable()
        stamp = now()
        with transaction(self.db):
            for path in paths:
                self.db.conn.execute(
                    "insert into roots (path, added_at, indexed_at) values (?, ?, ?) "
                    "on conflict(path) do update set indexed_at = excluded.indexed_at",
                    [path, stamp, stamp],
                )

    def rebuild_vectors(self, vectors_by_id: dict[int, np.ndarray], drop_ids: Sequence[int] = ()) -> None:
        """Replace the FAISS file with the given vectors and delete rows in `drop_ids`."""
        self._require_writable()
        with _locked(self.folder / COMMIT_LOCK_FILE, fcntl.LOCK_EX):
            fresh = _empty_vectors(self.info.dimension)
            if vectors_by_id:
                ids = np.fromiter(vectors_by_id.keys(), dtype=np.int64)
                fresh.add_with_ids(np.stack(list(vectors_by_id.values())).astype(np.float32), ids)
            self.vectors = fresh
            self._write_vectors()
            with transaction(self.db):
                for image_id in drop_ids:
                    self.db.conn.execute("delete from labels where image_id = ?", [int(image_id)])
                    self.db.conn.execute("delete from images where id = ?", [int(image_id)])
                self.db.conn.execute("update images set state = ? where state = ?", [READY, PENDING])
                self.db.conn.execute("delete from removed_ids")
                self.db.conn.execute("update index_info set updated = ?", [now()])

    def close(self) -> None:
        """Close the SQLite connection."""
        self.db.conn.close()

    # -- private ----------------------------------------------------------------

    def _insert_pending(self, image: NewImage, stamp: str) -> int:
        cursor = self.db.conn.execute(
            "insert into images (path, size, mtime, content_hash, width, height, format, indexed_at, inode, state) "
            "values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [image.path, image.size, image.mtime, image.content_hash, image.width, image.height,
             image.format, stamp, image.inode, PENDING],
        )
        return int(cursor.lastrowid)

    def _resolve_journal(self) -> None:
        # A pending row whose vector reached the FAISS file is complete; one
        # whose vector did not is dropped, so the next run embeds it again.
        # Journalled removals are finished on the FAISS side.
        stored = set(faiss.vector_to_array(self.vectors.id_map).tolist())
        pending = [row[0] for row in self.db.conn.execute("select id from images where state = ?", [PENDING])]
        removed = [row[0] for row in self.db.conn.execute("select id from removed_ids")]
        if not pending and not removed:
            return
        log.info("finishing an interrupted commit: %d pending rows, %d removals", len(pending), len(removed))
        leftover = [i for i in removed if i in stored]
        if leftover:
            self.vectors.remove_ids(np.asarray(leftover, dtype=np.int64))
            with _locked(self.folder / COMMIT_LOCK_FILE, fcntl.LOCK_EX):
                self._write_vectors()
        with transaction(self.db):
            for image_id in pending:
                if image_id in stored:
                    self.db.conn.execute("update images set state = ? where id = ?", [READY, image_id])
                else:
                    self.db.conn.execute("delete from images where id = ?", [image_id])
            self.db.conn.execute("delete from removed_ids")

    def _write_vectors(self) -> None:
        # Write a temporary file, flush it to disk, then rename over the old
        # one: a reader or a crash sees either the old file or the new one.
        target = self.folder / VECTORS_FILE
        temporary = target.with_suffix(".faiss.tmp")
        faiss.write_index(self.vectors, str(temporary))
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        _fsync_folder(self.folder)

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("index opened read-only; use Index.open_for_writing")


_RECORD_COLUMNS = "id, path, size, mtime, content_hash, width, height, format, indexed_at, inode"


def _create(folder: Path, info: IndexInfo) -> None:
    db = _connect(folder / METADATA_FILE)
    with transaction(db):
        db.conn.execute(
            """create table if not exists images (
                id integer primary key autoincrement,
                path text not null unique,
                size integer not null,
                mtime real not null,
                content_hash text not null,
                width integer not null,
                height integer not null,
                format text not null,
                indexed_at text not null,
                inode integer not null default 0,
                state text not null default 'ready'
            )"""
        )
        db.conn.execute("create index if not exists images_content_hash on images (content_hash)")
        db.conn.execute("create table if not exists removed_ids (id integer primary key)")
        db.conn.execute(
            """create table if not exists index_info (
                model_id text not null,
                dimension integer not null,
                fingerprint text not null,
                schema_version integer not null,
                created text not null,
                updated text not null
            )"""
        )
        db.conn.execute("create table if not exists roots (path text primary key, added_at text not null, indexed_at text not null)")
        db.conn.execute(
            """create table if not exists labels (
                image_id integer not null references images(id),
                label text not null,
                probability real not null,
                label_set text not null,
                labelled_at text not null,
                primary key (image_id, label_set, label)
            )"""
        )
        db.conn.execute("create index if not exists labels_label on labels (label)")
        db.conn.execute(
            "insert into index_info values (?, ?, ?, ?, ?, ?)",
            [info.model_id, info.dimension, info.fingerprint, SCHEMA_VERSION, info.created, info.updated],
        )
    # The FAISS file is written after the tables, so an index folder with a
    # metadata.db but no vectors.faiss only ever means an empty index.
    faiss.write_index(_empty_vectors(info.dimension), str(folder / VECTORS_FILE))
    db.conn.close()


@contextlib.contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """Run the statements of a `with` block as one SQLite transaction.

    Connections run in autocommit mode, so without this every statement
    would commit on its own and a crash could land between two of them.
    """
    conn = db.conn
    conn.execute("begin immediate")
    try:
        yield conn
    except BaseException:
        conn.execute("rollback")
        raise
    conn.execute("commit")


def _connect(path: Path, read_only: bool = False) -> sqlite_utils.Database:
    try:
        if read_only and not os.access(path.parent, os.W_OK):
            # A WAL database on read-only storage opens only as immutable,
            # which is safe because nobody can be writing to it.
            uri = f"file:{urllib.parse.quote(str(path.resolve()))}?immutable=1"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("pragma journal_mode = wal")
            conn.execute("pragma synchronous = full")
    except sqlite3.DatabaseError as error:
        raise InvalidIndexError(
            f"{path} cannot be opened as a SQLite database ({error}); check that {path.parent} is a searchclip index folder"
        ) from None
    return sqlite_utils.Database(conn)


def _check_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"index folder {folder} is a file; give a folder path with --index or $SEARCHCLIP_INDEX")


def _check_schema(db: sqlite_utils.Database, folder: Path) -> None:
    try:
        version = db.conn.execute("select schema_version from index_info").fetchone()[0]
    except (sqlite3.DatabaseError, TypeError) as error:
        raise InvalidIndexError(
            f"{folder / METADATA_FILE} has no index info ({error}), so {folder} is not a searchclip index; "
            "choose another --index, or move the folder away and index again"
        ) from None
    if version > SCHEMA_VERSION:
        raise InvalidIndexError(
            f"index {folder} has schema version {version}, newer than this searchclip supports "
            f"({SCHEMA_VERSION}); upgrade searchclip: pip install -U searchclip"
        )
    # Older versions would be migrated here, one numbered step at a time;
    # version 1 is the first released schema, so there is nothing to do yet.


def _info(db: sqlite_utils.Database) -> IndexInfo:
    row = db.conn.execute(
        "select model_id, dimension, fingerprint, schema_version, created, updated from index_info"
    ).fetchone()
    return IndexInfo(*row)


def _empty_vectors(dimension: int) -> faiss.Index:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dimension))


def _read_vectors(folder: Path, dimension: int) -> faiss.Index:
    path = folder / VECTORS_FILE
    if not path.exists():
        return _empty_vectors(dimension)
    try:
        vectors = faiss.read_index(str(path))
    except RuntimeError:
        # FAISS's own message names C++ source lines and is no help here.
        raise InvalidIndexError(f"{path} is not a readable FAISS index; run: searchclip repair --index {folder}") from None
    if vectors.d != dimension:
        raise InvalidIndexError(f"{path} holds {vectors.d}-dimensional vectors, not {dimension}; run: searchclip repair --index {folder}")
    return faiss.downcast_index(vectors) if not isinstance(vectors, faiss.IndexIDMap2) else vectors


def _acquire_write_lock(folder: Path) -> int:
    try:
        descriptor = os.open(folder / WRITE_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise InvalidIndexError(
            f"index {folder} cannot be written ({error.strerror}); searching works, but indexing, "
            "labelling and repair need a writable index folder"
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise IndexBusyError(
            f"index {folder} is busy: another searchclip process (pid {holder}) is writing to it; "
            "wait for it to finish, or use another --index"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, str(os.getpid()).encode(), 0)
    return descriptor


@contextlib.contextmanager
def _locked(path: Path, mode: int) -> Iterator[None]:
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # A read-only index folder can still be searched; nobody can write to it.
        yield
        return
    try:
        fcntl.flock(descriptor, mode)
        yield
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
