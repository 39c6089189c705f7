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
from .images import DEFAULT_MAX_MEGAPIXELS, Picture, open_picture
from .model import DEFAULT_TEMPLATES, ClipModel
from .windows import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_GRID,
    DEFAULT_STRIDE,
    DEFAULT_WINDOW_SIZES,
    Box,
    WindowSettings,
    box_iou,
    combine_sizes,
    embed_crops,
    layout_windows,
    peak_region,
    region_box,
    size_maps,
    square_around,
    upsample,
)

__all__ = [
    "DEFAULT_GRID", "DEFAULT_STRIDE", "DEFAULT_WINDOW_SIZES", "Box", "Detection", "Localisation",
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

# Side of the square region that refinement searches again, as a multiple of
# the first box's longer side. Measured on the demo scenes, 1.6 leaves room
# for a first box that is off by a quarter of its size while keeping the
# object at about half the region, the scale the windows resolve best.
REFINE_GROWTH = 1.6

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
    the final box. `detect` costs the windows over the picture, one crop per
    candidate (at most `MAX_CANDIDATES_PER_LABEL` per label) and, with
    `refine`, a square region's windows plus one crop per detection.
    """
    settings = settings or WindowSettings()
    square = settings.grid * 8  # any square of at least `grid` pixels has the same layout
    return settings.count_windows(width, height) + (settings.count_windows(square, square) if refine else 0) + 1


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
            peak, that a cell must reach to join the box around the peak.
        background: texts whose similarity is subtracted from each window's
            score, each embedded with `templates`; empty to subtract nothing.
        refine: run the windows a second time over a square region around
            the first box, with the grid spanning that region, for tighter
            box edges. `count_crops` includes its cost.

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
        box = _refine_boxes(model, image, [box], query[None], background_embeddings, settings, threshold, batch_size)[0]

    crop = embed_crops(model, image, np.array([square_around(box, image.size)]), batch_size)
    return Localisation(box=box, score=float(crop[0] @ query), heatmap=heatmap, picture_size=image.size)


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
    settings = settings or WindowSettings()
    layout = layout_windows(image.size, settings)

    classes = model.embed_labels([*labels, *background], templates)
    embeddings = embed_crops(model, image, layout.boxes, batch_size)
    probabilities = _softmax(model.logit_scale * embeddings @ classes.T)[:, : len(labels)]
    maps = combine_sizes(size_maps(layout, probabilities), normalise=False)

    candidates = [(index, box) for index, heatmap in enumerate(maps) for box in _candidate_boxes(heatmap, threshold, image.size)]
    detections = _score_boxes(model, image, candidates, labels, classes, batch_size)
    detections = _suppress([detection for detection in detections if detection.score >= min_score], nms_iou)
    if not refine or not detections:
        return detections

    indices = [labels.index(detection.label) for detection in detections]
    boxes = _refine_boxes(
        model, image, [detection.box for detection in detections], classes[indices],
        classes[len(labels) :], settings, threshold, batch_size,
    )
    detections = _score_boxes(model, image, list(zip(indices, boxes)), labels, classes, batch_size)
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
        return picture if picture.mode == "RGB" else picture.convert("RGB")
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
    # Each size's map is stretched to [0, 1] before the sizes are combined,
    # because cosine similarities have no common scale across window sizes.
    return combine_sizes(size_maps(layout, scores), normalise=True)[0]


def _refine_boxes(
    model: ClipModel,
    image: Image.Image,
    boxes: Sequence[Box],
    queries: np.ndarray,
    background_embeddings: np.ndarray | None,
    settings: WindowSettings,
    threshold: float,
    batch_size: int,
) -> list[Box]:
    """Locate each query again inside a square region around its box and return the new boxes.

    In the region, grid cells are a fraction of the object rather than of the
    whole picture, so the box edges fall on a finer grid. Neighbouring objects
    that blur into one region on the full map mostly fall outside the region.
    The windows of all regions are embedded in the same batches.
    """
    regions = [_region_around(box, REFINE_GROWTH, image.size) for box in boxes]
    searched = [index for index, region in enumerate(regions) if min(region[2] - region[0], region[3] - region[1]) >= settings.grid]
    refined = list(boxes)
    if not searched:
        return refined

    layouts = {}
    for index in searched:
        x0, y0, x1, y1 = regions[index]
        layouts[index] = layout_windows((x1 - x0, y1 - y0), settings)
    window_boxes = np.concatenate([layouts[index].boxes + np.tile(regions[index][:2], 2) for index in searched])
    embeddings = embed_crops(model, image, window_boxes, batch_size)

    start = 0
    for index in searched:
        layout = layouts[index]
        rows = embeddings[start : start + len(layout.boxes)]
        start += len(layout.boxes)
        fine = upsample(_similarity_map(layout, rows, queries[index], background_embeddings))
        x0, y0, x1, y1 = region_box(peak_region(fine, threshold, floor=float(fine.min())), layout.size)
        left, top = regions[index][:2]
        refined[index] = (x0 + left, y0 + top, x1 + left, y1 + top)
    return refined


def _region_around(box: Box, growth: float, size: tuple[int, int]) -> Box:
    """Return the square of `growth` times the box's longer side around its centre, inside the picture."""
    x0, y0, x1, y1 = box
    half = max(x1 - x0, y1 - y0) * growth / 2
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    grown = (int(centre_x - half), int(centre_y - half), int(np.ceil(centre_x + half)), int(np.ceil(centre_y + half)))
    return square_around(grown, size)


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
) -> list[Detection]:
    """Classify the square crop around each (label index, box) among `classes` and keep the label's probability."""
    if not boxes:
        return []
    squares = np.array([square_around(box, image.size) for _, box in boxes])
    probabilities = _softmax(model.logit_scale * embed_crops(model, image, squares, batch_size) @ classes.T)
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
