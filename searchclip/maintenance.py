"""Describing an index and repairing one whose two stores disagree."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .errors import ImageError, InvalidIndexError
from .images import DEFAULT_MAX_MEGAPIXELS, open_picture
from .model import load_model_for_index
from .storage import METADATA_FILE, READY, VECTORS_FILE, Index

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSummary:
    """What `searchclip info` shows."""

    folder: str
    model_id: str
    dimension: int
    fingerprint: str
    schema_version: int
    images: int
    labels: dict[str, int]  # label -> images carrying it
    disk_bytes: int
    roots: list[str]
    created: str
    updated: str


def describe(index_dir: str | os.PathLike) -> IndexSummary:
    """Summarise an index: model, size on disk, images, labels and roots."""
    index = Index.open(index_dir)
    try:
        info = index.info
        labels = dict(index.db.execute("select label, count(*) from labels group by label order by count(*) desc, label").fetchall())
        folder = Path(index_dir)
        disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        return IndexSummary(
            folder=str(folder.resolve()),
            model_id=info.model_id,
            dimension=info.dimension,
            fingerprint=info.fingerprint,
            schema_version=info.schema_version,
            images=index.count(),
            labels=labels,
            disk_bytes=disk,
            roots=index.roots(),
            created=info.created,
            updated=info.updated,
        )
    finally:
        index.close()


@dataclass(frozen=True)
class RepairReport:
    """What `repair` changed."""

    re_embedded: int  # images that had no vector and were embedded again
    dropped_rows: int  # images whose file is gone or unreadable
    dropped_vectors: int  # vectors that had no image row


def repair(
    index_dir: str | os.PathLike,
    device: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> RepairReport:
    """Make the FAISS file and the SQLite rows agree again.

    Rows without a vector are re-embedded from their files (or dropped when
    the file is gone); vectors without a row are dropped. A missing or
    unreadable FAISS file is rebuilt from the image files. The SQLite side
    holds the paths, so a lost metadata.db cannot be rebuilt from vectors.
    """
    folder = Path(index_dir)
    if (folder / VECTORS_FILE).exists() and not (folder / METADATA_FILE).exists():
        raise InvalidIndexError(
            f"{folder / METADATA_FILE} is missing, and image paths cannot be recovered from vectors; "
            f"move {folder} away and index the photo folders again"
        )
    with Index.open_for_writing(folder, check=False) as index:
        info = index.info
        stored_ids, stored_vectors = index.all_vectors()
        stored = dict(zip(stored_ids.tolist(), stored_vectors))
        rows = dict(index.db.execute("select id, path from images").fetchall())

        kept = {i: v for i, v in stored.items() if i in rows}
        dropped_vectors = len(stored) - len(kept)
        without_vector = {i: p for i, p in rows.items() if i not in stored}
        dropped_rows, re_embedded = [], 0
        if without_vector:
            model = load_model_for_index(info.model_id, info.fingerprint, None, device)
            for image_id, path in without_vector.items():
                try:
                    picture = open_picture(path, max_megapixels, model.draft_size)
                except ImageError as error:
                    log.warning("dropping %s: %s", path, error.reason)
                    dropped_rows.append(image_id)
                    continue
                kept[image_id] = model.embed_images([picture.image])[0]
                re_embedded += 1

        index.rebuild_vectors(kept, dropped_rows)
        index.check_agreement()
        index.close()
    return RepairReport(re_embedded=re_embedded, dropped_rows=len(dropped_rows), dropped_vectors=dropped_vectors)
