"""Locating a text, or any query embedding, inside a picture with CLIP and no fine-tuning.

The picture is split into a grid of cells. Square windows of several sizes
slide over the grid, every window crop is embedded, and each window's score
is averaged back onto the cells it covers. The resulting map shows where the
query matches, and the connected region around its peak gives a box.
`detect` does the same for several labels at once, with a background class
so that windows showing none of the labels produce no box.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from PIL import Image

from .drawing import render_heatmap, save_image
from .errors import UsageError
from .images import DEFAULT_MAX_MEGAPIXELS, Picture, open_picture, to_rgb
from .model import DEFAULT_TEMPLATES, ClipModel
from .windows import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DETECT_WINDOW_SIZES,
    DEFAULT_GRID,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW_SIZES,
    Box,
    WindowSettings,
    box_iou,
    combine_sizes,
    coverage_map,
    crop_padded,
    embed_crops,
    layout_windows,
    peak_region,
    region_box,
    size_maps,
    square_around,
    upsample,
)

__all__ = [
    "DEFAULT_DETECT_WINDOW_SIZES", "DEFAULT_GRID", "DEFAULT_STRIDE", "DEFAULT_WINDOW_SIZES", "Box", "Detection", "Localisation",
    "WindowSettings", "box_iou", "count_crops", "detect", "explain", "load_image", "locate", "locate_embedding",
]

log = logging.getLogger(__name__)

PictureInput = Union[Image.Image, Picture, str, os.PathLike]

# Fraction of the map's range, from its minimum to its peak, that a cell must
# reach to belong to the region around the peak. Measured on the demo scenes,
# 0.7 separates an object from the background that large windows blur into
# it; 0.5 gives boxes about twice too wide.
DEFAULT_THRESHOLD = 0.7

# Texts that compete with the query and the labels. In `locate`, a window's
# score is its similarity to the query minus its best similarity to these,
# which removes how much the window looks like an object at all. In `detect`,
# they are classes of their own, so a window that shows none of the labels
# goes to the background instead of to the closest label.
DEFAULT_BACKGROUND: tuple[str, ...] = ("plain background", "empty background", "blank background")

# Refinement searches a square region around a first box again, with finer
# windows of its own. The region's side is REFINE_GROWTH times the box's
# longer side, so an object that the first box cuts in half still lies
# inside it. 12 cells span the region, and windows of 2 to 12 cells (a third
# of the first box to twice it) slide over it one cell at a time. So a first
# box up to 3 times too large still has windows tight around the object.
# That is 506 crops; 16 cells gave slightly better boxes for twice the cost.
REFINE_GROWTH = 2.0
# Regions tried per box, each twice the side of the one before, while the
# refined box does not match the query (see `_refine_boxes`).
REFINE_ATTEMPTS = 3
REFINE_SETTINGS = WindowSettings(grid=12, window_sizes=tuple(range(2, 13)), stride=1)
# A cell belongs to the refined box when the windows that match the query
# cover it with at least this share of their weight (see `coverage_map`).
# Of 0.8, 0.85 and 0.9, 0.8 located the most objects of generated demo
# scenes; higher values give boxes smaller than the object.
REFINE_COVERAGE = 0.8

DEFAULT_MIN_SCORE = 0.5
DEFAULT_NMS_IOU = 0.5
# Regions tried per label before non-maximum suppression.
MAX_CANDIDATES_PER_LABEL = 3
# A label map peak below this probability starts no candidate: averaged over
# every window on a cell, it is well under any useful `min_score`.
CANDIDATE_FLOOR = 0.1


@dataclass(frozen=True)
class Localisation:
    """Where a query matches in a picture.

    `heatmap` has one value per grid cell, shape (rows, columns), from 0 (no
    match) to 1 (best match). Cell (r, c) covers the pixels from
    `c * width / columns` to `(c + 1) * width / columns` horizontally, and
    likewise vertically. `score` is the cosine similarity between the query
    and the square crop around `box`, the measure that search ranks by.
    """

    box: Box
    score: float
    heatmap: np.ndarray
    picture_size: tuple[int, int]  # (width, height) in pixels, upright


@dataclass(frozen=True)
class Detection:
    """One labelled box. `score` is the probability, from 0 to 1, that the crop
    around the box shows `label` rather than another label or the background."""

    label: str
    box: Box
    score: float


def count_crops(width: int, height: int, settings: WindowSettings | None = None, refine: bool = True) -> int:
    """Return how many crops `locate` embeds for one picture of this size in pixels.

    That is the windows over the picture, with `refine` the windows over a
    square region (the same count for any size of region), and one crop for
    the final box. When the refined box does not match the query,
    refinement runs again in a larger region, at most `REFINE_ATTEMPTS`
    times in all, which this count leaves out. `detect` costs the windows
    over the picture, one crop per candidate (at most
    `MAX_CANDIDATES_PER_LABEL` per label) and, with `refine`, the same
    refinement and final crop per detection.
    """
    settings = settings or WindowSettings()
    square = REFINE_SETTINGS.grid * 8  # any square of at least `grid` pixels has the same layout
    # The crop around the final box is embedded once. With refinement, that
    # embedding checks the refined box and also gives the score.
    refinement = REFINE_SETTINGS.count_windows(square, square) if refine else 0
    return settings.count_windows(width, height) + refinement + 1


def locate(
    model: ClipModel,
    picture: PictureInput,
    text: str,
    *,
    settings: WindowSettings | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    background: Sequence[str] = DEFAULT_BACKGROUND,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    refine: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Localisation:
    """Find where `text` matches best in a picture.

    Args:
        model: any loaded CLIP model.
        picture: a PIL image, a `Picture` or an image file path.
        text: the description, embedded as it is, without templates.
        settings: window layout; `count_crops` gives its cost.
        threshold: fraction of the map's range, from its minimum to its
            peak, that a cell must reach to join the first box around the peak.
        background: texts whose similarity is subtracted from each window's
            score, each embedded with `templates`; empty to subtract nothing.
        refine: search a square region around the first box again with
            `REFINE_SETTINGS` windows, for tighter box edges. `count_crops`
            includes its cost.

    Raises:
        UsageError: `text` is empty or the settings do not fit the picture.
        ImageError: the picture file cannot be read.
    """
    if not text or not text.strip():
        raise UsageError('empty text; describe what to find, for example "a red circle"')
    query = model.embed_texts([text.strip()])[0]
    return locate_embedding(
        model, picture, query, settings=settings, threshold=threshold,
        background=background, templates=templates, refine=refine, batch_size=batch_size,
    )


def locate_embedding(
    model: ClipModel,
    picture: PictureInput,
    query: np.ndarray,
    *,
    settings: WindowSettings | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    background: Sequence[str] = DEFAULT_BACKGROUND,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    refine: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Localisation:
    """Find where a query embedding matches best in a picture.

    The query can be any vector in the model's joint space: a text, a
    picture or a mix of both, as search builds it. Arguments and errors are
    those of `locate`, plus `UsageError` for a query of the wrong dimension.
    """
    query = _check_query(model, query)
    _check_threshold(threshold)
    image = load_image(picture)
    settings = settings or WindowSettings()
    background_embeddings = model.embed_labels(list(background), templates) if len(background) else None

    heatmap = _query_map(model, image, query, background_embeddings, settings, batch_size)
    fine = upsample(heatmap)
    box = region_box(peak_region(fine, threshold, floor=float(fine.min())), image.size)
    if refine:
        box, crop = _refine_boxes(model, image, [box], query[None], background_embeddings, batch_size)[0]
    else:
        crop = _embed_squares(model, image, [box], batch_size)[0]
    return Localisation(box=box, score=float(crop @ query), heatmap=heatmap, picture_size=image.size)


def detect(
    model: ClipModel,
    picture: PictureInput,
    labels: Sequence[str],
    *,
    settings: WindowSettings | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    nms_iou: float = DEFAULT_NMS_IOU,
    threshold: float = DEFAULT_THRESHOLD,
    background: Sequence[str] = DEFAULT_BACKGROUND,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    refine: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Detection]:
    """Find every region that shows one of `labels`, best score first.

    Each window is classified among the labels and `background` (softmax at
    the model's logit scale), which gives one probability map per label.
    The regions around each map's peaks become candidate boxes. The square
    crop around each candidate is classified again to score it, and of
    same-label boxes that overlap, only the best is kept.

    Args:
        labels: names of what to find, each embedded with `templates`.
        min_score: detections below this probability are dropped.
        nms_iou: intersection over union above which the weaker of two
            boxes of one label is dropped.
        background: classes that absorb windows showing none of the labels;
            at least one is needed.
        settings, threshold, refine, batch_size: as in `locate`; refinement
            runs once per detection, with the label as the query, and the
            refined box is classified again.

    Raises:
        UsageError: no labels, an empty label, no background, out-of-range
            numbers, or settings that do not fit the picture.
        ImageError: the picture file cannot be read.
    """
    labels = _check_labels(labels)
    _check_threshold(threshold)
    if not 0.0 <= min_score <= 1.0:
        raise UsageError(f"minimum score {min_score} is invalid; scores are probabilities from 0 to 1")
    if not 0.0 <= nms_iou <= 1.0:
        raise UsageError(f"NMS IoU {nms_iou} is invalid; use a fraction from 0 to 1")
    if not len(background):
        raise UsageError("no background texts given; detection needs at least one, for example \"plain background\"")
    image = load_image(picture)
    settings = settings or WindowSettings(window_sizes=DEFAULT_DETECT_WINDOW_SIZES)
    layout = layout_windows(image.size, settings)

    classes = model.embed_labels([*labels, *background], templates)
    embeddings = embed_crops(model, image, layout.boxes, batch_size)
    probabilities = _softmax(model.logit_scale * embeddings @ classes.T)[:, : len(labels)]
    # Sizes are combined by their arithmetic mean. Windows smaller than an
    # object show a fragment, which a model may rightly call background, so
    # a geometric mean would erase the object from the map.
    maps = size_maps(layout, probabilities).mean(axis=1).astype(np.float32)

    candidates = [(index, box) for index, heatmap in enumerate(maps) for box in _candidate_boxes(heatmap, threshold, image.size)]
    detections = _score_boxes(model, image, candidates, labels, classes, batch_size)
    detections = _suppress([detection for detection in detections if detection.score >= min_score], nms_iou)
    if not refine or not detections:
        return detections

    indices = [labels.index(detection.label) for detection in detections]
    refined = _refine_boxes(
        model, image, [detection.box for detection in detections], classes[indices], classes[len(labels) :], batch_size
    )
    boxes = [(index, box) for index, (box, _) in zip(indices, refined)]
    crops = np.stack([crop for _, crop in refined])
    detections = _score_boxes(model, image, boxes, labels, classes, batch_size, crops)
    return _suppress([detection for detection in detections if detection.score >= min_score], nms_iou)


def explain(
    model: ClipModel,
    picture: PictureInput,
    query: np.ndarray,
    out_path: str | os.PathLike,
    *,
    settings: WindowSettings | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> Localisation:
    """Write the picture with the query's score map and box drawn over it to `out_path`.

    This shows why a search result matched: `query` is the search's query
    embedding, whatever mix of texts and pictures built it.

    Raises:
        ImageError: the picture cannot be read.
        UsageError: `out_path` names no image format.
        SearchclipError: `out_path` cannot be written.
    """
    image = load_image(picture)
    result = locate_embedding(model, image, query, settings=settings, threshold=threshold)
    save_image(render_heatmap(image, result.heatmap, result.box), out_path)
    return result


def load_image(picture: PictureInput) -> Image.Image:
    """Return the upright RGB image of a PIL image, a `Picture` or an image file path.

    Raises:
        ImageError: the file is missing, unreadable or not an image.
    """
    if isinstance(picture, Picture):
        return picture.image
    if isinstance(picture, Image.Image):
        return to_rgb(picture)
    return open_picture(picture, max_megapixels=DEFAULT_MAX_MEGAPIXELS).image


def _query_map(
    model: ClipModel,
    image: Image.Image,
    query: np.ndarray,
    background_embeddings: np.ndarray | None,
    settings: WindowSettings,
    batch_size: int,
) -> np.ndarray:
    """Return the (rows, columns) map of how well each cell matches `query`, from 0 to 1."""
    layout = layout_windows(image.size, settings)
    embeddings = embed_crops(model, image, layout.boxes, batch_size)
    return _similarity_map(layout, embeddings, query, background_embeddings)


def _similarity_map(layout, embeddings: np.ndarray, query: np.ndarray, background_embeddings: np.ndarray | None) -> np.ndarray:
    scores = embeddings @ query
    if background_embeddings is not None:
        scores = scores - (embeddings @ background_embeddings.T).max(axis=1)
    return combine_sizes(size_maps(layout, scores))[0]


def _refine_boxes(
    model: ClipModel,
    image: Image.Image,
    boxes: Sequence[Box],
    queries: np.ndarray,
    background_embeddings: np.ndarray | None,
    batch_size: int,
) -> list[tuple[Box, np.ndarray]]:
    """Locate each query again inside a square region around its box.

    Returns each new box with the embedding of the square crop around it,
    which callers score instead of embedding that crop again.

    The region extends past the picture's edges where needed, padded with
    the colour of the picture's border. Without padding, every window around
    an object at an edge would reach inwards, and the box would drift inwards
    with them. Each window is scored by the probability that it shows the
    query rather than the background, and the box is the part of the region
    that the matching windows share (`coverage_map`).

    A first box may cover only a fragment of a large object, and then no
    window of the region contains the whole object. So when the crop around
    the refined box does not match the query better than the background,
    the search is repeated in a region twice as large, up to
    `REFINE_ATTEMPTS` times, and the best-matching box is kept.
    """
    refined = []
    longest = max(image.size)
    for box, query in zip(boxes, queries):
        best, best_probability = None, -1.0
        growth = REFINE_GROWTH
        for _ in range(REFINE_ATTEMPTS):
            region = _region_around(box, growth)
            candidate = _refine_in_region(model, image, region, query, background_embeddings, batch_size, box)
            crop = _embed_squares(model, image, [candidate], batch_size)[0]
            # Without background texts there is nothing to compare with, so every box matches.
            probability = 1.0
            if background_embeddings is not None:
                probability = float(_query_probabilities(model, crop[None], query, background_embeddings)[0])
            if probability > best_probability:
                best, best_probability = (candidate, crop), probability
            if probability >= 0.5 or region[2] - region[0] >= 2 * longest:
                break
            growth *= 2
        refined.append(best)
    return refined


def _refine_in_region(
    model: ClipModel,
    image: Image.Image,
    region: Box,
    query: np.ndarray,
    background_embeddings: np.ndarray | None,
    batch_size: int,
    fallback: Box,
) -> Box:
    """Return the box that the windows of `region` matching `query` share, or `fallback` for a tiny region."""
    side = region[2] - region[0]
    if side < REFINE_SETTINGS.grid:
        return fallback
    layout = layout_windows((side, side), REFINE_SETTINGS)
    embeddings = embed_crops(model, crop_padded(image, region), layout.boxes, batch_size)
    probabilities = _query_probabilities(model, embeddings, query, background_embeddings)
    fine = upsample(coverage_map(layout, probabilities))
    x0, y0, x1, y1 = region_box(peak_region(fine, REFINE_COVERAGE, floor=0.0), layout.size)
    left, top = region[:2]
    return _clip_box((x0 + left, y0 + top, x1 + left, y1 + top), image.size, fallback)


def _embed_squares(model: ClipModel, image: Image.Image, boxes: Sequence[Box], batch_size: int) -> np.ndarray:
    """Embed the square crop around each box.

    CLIP preprocessing centre-crops to a square, which would cut off the ends of an elongated box.
    """
    return embed_crops(model, image, np.array([square_around(box, image.size) for box in boxes]), batch_size)


def _query_probabilities(
    model: ClipModel, embeddings: np.ndarray, query: np.ndarray, background_embeddings: np.ndarray | None
) -> np.ndarray:
    """Return, per embedding, the softmax probability of the query against the background texts.

    Without background texts, return exp(logit - best logit), which is 1 for
    the best-matching embedding and falls with the logit.
    """
    logits = model.logit_scale * embeddings @ query
    if background_embeddings is None:
        return np.exp(logits - logits.max())
    others = model.logit_scale * embeddings @ background_embeddings.T
    return _softmax(np.concatenate([logits[:, None], others], axis=1))[:, 0]


def _region_around(box: Box, growth: float) -> Box:
    """Return the square of `growth` times the box's longer side around its centre, which may leave the picture."""
    x0, y0, x1, y1 = box
    side = int(np.ceil(max(x1 - x0, y1 - y0) * growth))
    left = int(round((x0 + x1 - side) / 2))
    top = int(round((y0 + y1 - side) / 2))
    return (left, top, left + side, top + side)


def _clip_box(box: Box, size: tuple[int, int], fallback: Box) -> Box:
    """Clip a box to the picture, or return `fallback` when no part of the box is inside it."""
    width, height = size
    x0, y0, x1, y1 = max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else fallback


def _candidate_boxes(heatmap: np.ndarray, threshold: float, size: tuple[int, int]) -> list[Box]:
    """Return boxes around up to `MAX_CANDIDATES_PER_LABEL` separate peaks of a probability map."""
    fine = upsample(heatmap)
    boxes: list[Box] = []
    while len(boxes) < MAX_CANDIDATES_PER_LABEL and float(fine.max()) >= CANDIDATE_FLOOR:
        region = peak_region(fine, threshold, floor=0.0)
        boxes.append(region_box(region, size))
        fine[region] = 0.0
    return boxes


def _score_boxes(
    model: ClipModel,
    image: Image.Image,
    boxes: list[tuple[int, Box]],
    labels: list[str],
    classes: np.ndarray,
    batch_size: int,
    crops: np.ndarray | None = None,
) -> list[Detection]:
    """Classify the square crop around each (label index, box) among `classes` and keep the label's probability.

    `crops` are the embeddings of those square crops when the caller has them already.
    """
    if not boxes:
        return []
    if crops is None:
        crops = _embed_squares(model, image, [box for _, box in boxes], batch_size)
    probabilities = _softmax(model.logit_scale * crops @ classes.T)
    return [
        Detection(label=labels[index], box=box, score=float(probabilities[row, index]))
        for row, (index, box) in enumerate(boxes)
    ]


def _suppress(detections: list[Detection], nms_iou: float) -> list[Detection]:
    """Keep the best of every group of same-label boxes that overlap by more than `nms_iou`."""
    kept: list[Detection] = []
    for detection in sorted(detections, key=lambda item: item.score, reverse=True):
        if all(other.label != detection.label or box_iou(other.box, detection.box) <= nms_iou for other in kept):
            kept.append(detection)
    return kept


# -- checks and small helpers -----------------------------------------------

def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        labels = [labels]
    cleaned = [label.strip() for label in labels]
    if not cleaned:
        raise UsageError('no labels given; pass at least one, for example --labels "cat,dog"')
    if any(not label for label in cleaned):
        raise UsageError(f"empty label in {list(labels)!r}; remove the extra comma or blank entry")
    return list(dict.fromkeys(cleaned))


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"threshold {threshold} is invalid; use a fraction above 0 and at most 1")


def _check_query(model: ClipModel, query: np.ndarray) -> np.ndarray:
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if query.shape[0] != model.dimension:
        raise UsageError(
            f"query embedding has {query.shape[0]} dimensions but model {model.model_id} "
            f"embeds into {model.dimension}; embed the query with the same model"
        )
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm == 0.0:
        raise UsageError("query embedding is zero or not finite; embed a non-empty query")
    return query / norm


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
