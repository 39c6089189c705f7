"""Text, image and combined queries against an index."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np

from .errors import InvalidIndexError, UsageError
from .images import DEFAULT_MAX_MEGAPIXELS, open_picture
from .model import ClipModel, load_model_for_index
from .storage import Index

DEFAULT_K = 10

_WEIGHTED = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*:(.*)$")


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or an image file, and its weight."""

    value: str
    weight: float = 1.0
    is_image: bool = False


@dataclass(frozen=True)
class SearchResult:
    """One matching image."""

    path: str
    score: float  # cosine similarity between the query and the image, in [-1, 1]
    id: int
    width: int
    height: int


def parse_weighted(value: str, is_image: bool = False) -> Term:
    """Read `WEIGHT:VALUE` (for example `2:a red car`) or a plain value of weight 1."""
    match = _WEIGHTED.match(value)
    if match and match.group(2).strip():
        return Term(match.group(2).strip(), float(match.group(1)), is_image)
    return Term(value.strip(), 1.0, is_image)


def query_vector(
    model: ClipModel,
    terms: Sequence[Term],
    negatives: Sequence[Term] = (),
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> np.ndarray:
    """Combine weighted texts and images, minus negatives, into one unit vector.

    Each part is embedded and normalised on its own, so weights compare
    parts on an equal footing; the weighted sum is normalised again.

    Raises:
        UsageError: no terms, an empty text, or parts that cancel out.
        ImageError: a query image cannot be read.
    """
    if not terms:
        raise UsageError("empty query; give a text, --text or --image")
    for term in [*terms, *negatives]:
        if not term.value:
            raise UsageError("empty query text; give words to search for, e.g. searchclip search \"a red car\"")

    total = np.zeros(model.dimension, dtype=np.float32)
    for sign, group in ((1.0, terms), (-1.0, negatives)):
        texts = [t for t in group if not t.is_image]
        images = [t for t in group if t.is_image]
        if texts:
            total += sign * np.asarray([t.weight for t in texts], np.float32) @ model.embed_texts([t.value for t in texts])
        if images:
            pictures = [open_picture(t.value, max_megapixels, model.draft_size).image for t in images]
            total += sign * np.asarray([t.weight for t in images], np.float32) @ model.embed_images(pictures)

    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query's parts cancel out; change the weights or drop a --not")
    return total / norm


class Searcher:
    """An open index with its model, for running many queries.

    Args:
        index_dir: the index folder.
        model: checked against the index's model when given.
        device: `cpu`, `cuda` or `cuda:N`; default CUDA when available.
    """

    def __init__(self, index_dir: str | os.PathLike, model: str | None = None, device: str | None = None):
        self.index = Index.open(index_dir)
        info = self.index.info
        self.model = load_model_for_index(info.model_id, info.fingerprint, model, device)

    def search(
        self,
        terms: Sequence[Term],
        negatives: Sequence[Term] = (),
        k: int = DEFAULT_K,
        under: str | os.PathLike | None = None,
        min_score: float | None = None,
        label: str | None = None,
        max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    ) -> list[SearchResult]:
        """Return the `k` best images for the query, best first, after filters."""
        vector = self.embed_query(terms, negatives, max_megapixels)
        return self.search_vector(vector, k, under, min_score, label)

    def embed_query(
        self, terms: Sequence[Term], negatives: Sequence[Term] = (), max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
    ) -> np.ndarray:
        """Check that the index has images, then combine the query into one unit vector."""
        if self.index.count() == 0:
            raise InvalidIndexError(
                f"index {self.index.folder} is empty; add images with: searchclip index PHOTO_FOLDER --index {self.index.folder}"
            )
        return query_vector(self.model, terms, negatives, max_megapixels)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = DEFAULT_K,
        under: str | os.PathLike | None = None,
        min_score: float | None = None,
        label: str | None = None,
    ) -> list[SearchResult]:
        """Return the `k` images nearest to a unit query vector, after filters."""
        if k < 1:
            raise UsageError(f"-k {k}: must be 1 or more")
        if min_score is not None and not -1.0 <= min_score <= 1.0:
            raise UsageError(f"--min-score {min_score}: must be a cosine similarity between -1 and 1")
        allowed = self._allowed_ids(under, label)
        if allowed is not None and len(allowed) == 0:
            return []

        # Vectors of a commit still in flight have no ready row; ask for
        # enough extra neighbours that dropping them still leaves k.
        extra = max(0, self.index.vectors.ntotal - self.index.count())
        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed)) if allowed is not None else None
        wanted = min(k + extra, self.index.vectors.ntotal)
        if wanted == 0:
            return []
        scores, ids = self.index.vectors.search(vector.reshape(1, -1).astype(np.float32), wanted, params=params)

        found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        records = self.index.records(i for i, _ in found)
        results = []
        for image_id, score in found:
            record = records.get(image_id)
            if record is None or (min_score is not None and score < min_score):
                continue
            results.append(SearchResult(record.path, score, image_id, record.width, record.height))
        return results[:k]

    def close(self) -> None:
        """Release the index's SQLite connection."""
        self.index.close()

    def _allowed_ids(self, under: str | os.PathLike | None, label: str | None) -> np.ndarray | None:
        allowed: set[int] | None = None
        if under is not None:
            folder = os.path.realpath(os.path.expanduser(under))
            allowed = {record.id for record in self.index.records_under(folder)}
            if not allowed and not os.path.isdir(folder):
                raise UsageError(f"--under {under}: folder not found, and no indexed image lies under it")
        if label is not None:
            conn = self.index.db.conn
            labelled = {row[0] for row in conn.execute("select image_id from labels where label = ?", [label])}
            if not labelled:
                # A label that was offered but won no image is an empty result, not an error.
                offered = {name for (label_set,) in conn.execute("select distinct label_set from labels") for name in label_set.split(",")}
                if not offered:
                    raise UsageError(
                        f"--label {label!r}: this index has no labels yet; run: searchclip label --labels ... --index {self.index.folder}"
                    )
                if label not in offered:
                    known = ", ".join(sorted(offered)[:20])
                    raise UsageError(f"--label {label!r}: not among the stored labels ({known}); run searchclip label with it first")
            allowed = labelled if allowed is None else allowed & labelled
        return None if allowed is None else np.fromiter(sorted(allowed), dtype=np.int64)


def search(
    index_dir: str | os.PathLike,
    query: str | None = None,
    *,
    texts: Sequence[str] = (),
    images: Sequence[str | os.PathLike] = (),
    negatives: Sequence[str] = (),
    k: int = DEFAULT_K,
    under: str | os.PathLike | None = None,
    min_score: float | None = None,
    label: str | None = None,
    model: str | None = None,
    device: str | None = None,
) -> list[SearchResult]:
    """Search an index by text, by image, or by a weighted mix of both.

    `texts`, `images` and `negatives` accept `WEIGHT:VALUE` to weight a part;
    negatives are subtracted ("dog" but not "beach").
    """
    terms = [parse_weighted(query)] if query is not None else []
    terms += [parse_weighted(t) for t in texts]
    terms += [parse_weighted(str(p), is_image=True) for p in images]
    searcher = Searcher(index_dir, model, device)
    try:
        return searcher.search(terms, [parse_weighted(n) for n in negatives], k, under, min_score, label)
    finally:
        searcher.close()
