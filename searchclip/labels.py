"""Zero-shot labels: which of a set of texts fits each picture best."""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UsageError
from .images import DEFAULT_MAX_MEGAPIXELS, open_picture
from .model import DEFAULT_TEMPLATES, ClipModel, load_model_for_index
from .storage import READY, Index, now, transaction


@dataclass(frozen=True)
class LabelScore:
    """A label and its probability among the labels it was compared with."""

    label: str
    probability: float


def parse_labels(text: str) -> list[str]:
    """Split a comma-separated label list, dropping blanks and repeats, keeping order."""
    labels = [label.strip() for label in text.split(",")]
    return list(dict.fromkeys(label for label in labels if label))


def read_labels_file(path: str | os.PathLike) -> list[str]:
    """Read labels from a file, one a line; blank lines and `#` comments are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"--labels-file {path}: cannot read it ({error.strerror}); give a text file, one label a line") from None
    except UnicodeDecodeError:
        raise UsageError(f"--labels-file {path}: not UTF-8 text; save it as UTF-8, one label a line") from None
    return list(dict.fromkeys(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")))


def check_labels(labels: Sequence[str], templates: Sequence[str]) -> None:
    """Raise `UsageError` for an empty label list or a template without `{}`."""
    if not labels:
        raise UsageError('no labels given; pass --labels "cat,dog,car" or --labels-file FILE')
    for template in templates:
        if template.count("{}") != 1:
            raise UsageError(f"--template {template!r}: must contain {{}} exactly once, where the label goes")


def probabilities(model: ClipModel, image_vectors: np.ndarray, label_vectors: np.ndarray) -> np.ndarray:
    """Softmax over labels of the model's scaled cosine similarities; shape (images, labels)."""
    logits = model.logit_scale * (image_vectors @ label_vectors.T)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def classify(
    model: ClipModel,
    image: str | os.PathLike,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> list[LabelScore]:
    """Return every label with its probability for one image file, best first."""
    check_labels(labels, templates)
    picture = open_picture(image, max_megapixels, model.draft_size)
    row = probabilities(model, model.embed_images([picture.image]), model.embed_labels(labels, templates))[0]
    order = np.argsort(-row, kind="stable")
    return [LabelScore(labels[i], float(row[i])) for i in order]


@dataclass
class LabelReport:
    """What `label_index` stored: images labelled and how many got each label."""

    images: int
    counts: dict[str, int]


def label_index(
    index_dir: str | os.PathLike,
    labels: Sequence[str],
    multi: bool = False,
    threshold: float = 0.5,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    model: str | None = None,
    device: str | None = None,
) -> LabelReport:
    """Label every image of an index and store the labels in its SQLite file.

    Uses the stored image vectors, so no image is decoded again. Without
    `multi` each image keeps its best label; with it, every label whose
    probability is at least `threshold`. Labelling again with the same label
    set replaces the earlier result.
    """
    check_labels(labels, templates)
    if multi and not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold {threshold}: must be a probability between 0 and 1")

    label_set = ",".join(labels)
    with Index.open_for_writing(index_dir) as index:
        info = index.info
        clip = load_model_for_index(info.model_id, info.fingerprint, model, device)
        ids, vectors = index.all_vectors()
        ready = {row[0] for row in index.db.execute("select id from images where state = ?", [READY])}
        keep = np.asarray([i in ready for i in ids.tolist()], dtype=bool)
        ids, vectors = ids[keep], vectors[keep]

        table = probabilities(clip, vectors, clip.embed_labels(labels, templates)) if len(ids) else np.zeros((0, len(labels)))
        counts: collections.Counter[str] = collections.Counter()
        stamp = now()
        rows = []
        for image_id, row in zip(ids.tolist(), table):
            chosen = [j for j in range(len(labels)) if row[j] >= threshold] if multi else [int(np.argmax(row))]
            for j in chosen:
                rows.append((image_id, labels[j], float(row[j]), label_set, stamp))
                counts[labels[j]] += 1

        with transaction(index.db):
            index.db.conn.execute("delete from labels where label_set = ?", [label_set])
            index.db.conn.executemany(
                "insert into labels (image_id, label, probability, label_set, labelled_at) values (?, ?, ?, ?, ?)", rows
            )
        index.close()
    return LabelReport(images=len(ids), counts=dict(counts))
