"""Training examples for the demo model: pictures at the model's input size with caption facts.

Each example is a single object, a crop around one object of a scene, or a
picture without objects, so that the model learns whole pictures as well as
the windows that localisation cuts out of scenes. Every example also has a
class per image patch, from the drawn objects' coverage, for the auxiliary
patch loss of train.py.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .shapes import (
    BACKGROUND_LABEL,
    LABELS,
    draw_background,
    draw_object_picture,
    draw_scene_picture,
    pick_background,
    size_word,
    split_label,
)

# Class index of pictures without objects; 0 to 31 are the indices of LABELS.
BACKGROUND_CLASS = len(LABELS)

# Shares of the kinds of draw. A scene draw yields a crop around each of
# its 2-3 objects, which teaches the windows that localisation compares with
# texts, and with BACKGROUND_CROP_SHARE a crop without objects. With plain
# background pictures, about 10 % of examples show no object, which teaches
# the background prompt to win where no object is.
SINGLE_SHARE = 0.55
SCENE_SHARE = 0.4
BACKGROUND_CROP_SHARE = 0.3

# Side of the drawn pictures, in pixels, before resizing to the model input.
# A range, so training covers both upsampled and downsampled pictures.
CANVAS_SIZES = (64, 160)
SCENE_SIZES = (256, 400)
# Window side around a scene object, as a multiple of the object's extent:
# 1.0 is a tight crop, 2.2 leaves wide background around it.
CROP_MARGIN = (1.0, 2.2)
# A window is skipped when another object has more than this fraction of its
# box inside, because its caption would name only one of them.
MAX_INTRUSION = 0.3
# Background crops may hold at most this fraction of an object's box, so a
# sliver at the edge still counts as background.
MAX_SLIVER = 0.08
# Share of scene draws that also yield a crop cutting through one object,
# containing at most MAX_PART of its box. Such a crop is captioned as
# background, because a window that shows only part of an object must not
# match the object. Otherwise localisation boxes shrink to fragments and
# detection reports one object several times.
PART_CROP_SHARE = 0.6
MAX_PART = 0.55
# Share of pictures re-encoded as JPEG at quality 30-90, as many photos are.
JPEG_SHARE = 0.15
# A patch takes the class of the object covering most of it when that object
# covers more than this share of the patch, else the background class.
PATCH_COVERAGE = 0.15

# Caption templates; {a} is the article ("a" or "an") of the phrase after it.
OBJECT_TEMPLATES: tuple[str, ...] = (
    "{phrase}",
    "{a} {phrase}",
    "{a} {phrase}.",
    "the {phrase}",
    "a photo of {a} {phrase}",
    "a photo of {a} {phrase}.",
    "a picture of {a} {phrase}.",
    "an image of {a} {phrase}.",
    "a drawing of {a} {phrase}",
    "a photo of the {phrase}.",
    # The prompt templates of searchclip.model put "a" before any label.
    "a photo of a {phrase}.",
    "a picture of a {phrase}.",
    "an image of a {phrase}.",
)
BACKGROUND_TEMPLATES: tuple[str, ...] = (
    "{phrase}",
    "{a} {phrase}",
    "{a} {phrase}.",
    "a photo of {a} {phrase}.",
    "a picture of {a} {phrase}.",
    "an image of {a} {phrase}.",
    "a photo of the {phrase}.",
    "a photo of a {phrase}.",
    "an image of a {phrase}.",
    "nothing but {a} {phrase}",
)
BACKGROUND_WORDS: tuple[str, ...] = ("plain", "empty", "blank")


@dataclass(frozen=True)
class Example:
    """Facts of a training picture: its class index and what a caption may state about it."""

    class_index: int  # index into LABELS, or BACKGROUND_CLASS
    size_word: str | None
    background: str  # background colour name


def make_examples(
    seed: int, count: int, image_size: int, patch_size: int
) -> tuple[np.ndarray, np.ndarray, list[Example]]:
    """Draw `count` examples.

    Returns:
        Pixels as (count, image_size, image_size, 3) uint8; patch classes as
        (count, grid, grid) int64 with grid = image_size // patch_size; and
        each example's facts.
    """
    rng = np.random.default_rng(seed)
    grid = image_size // patch_size
    pixels = np.empty((count, image_size, image_size, 3), np.uint8)
    patch_classes = np.empty((count, grid, grid), np.int64)
    examples: list[Example] = []
    while len(examples) < count:
        roll = rng.uniform()
        if roll < SINGLE_SHARE:
            drawn = [_single_object(rng)]
        elif roll < SINGLE_SHARE + SCENE_SHARE:
            drawn = _scene_crops(rng)
        else:
            drawn = [_plain_background(rng)]
        for picture in drawn[: count - len(examples)]:
            pixels[len(examples)] = _to_input(rng, picture.image, image_size)
            patch_classes[len(examples)] = _patch_classes(picture, grid)
            examples.append(picture.example)
    return pixels, patch_classes, examples


def sample_caption(rng: np.random.Generator, example: Example) -> str:
    """Write one caption that is true of the example, with a template chosen by `rng`."""
    if example.class_index == BACKGROUND_CLASS:
        word = str(rng.choice(BACKGROUND_WORDS))
        phrase = f"{word} {example.background} background" if rng.uniform() < 0.4 else f"{word} background"
        if rng.uniform() < 0.1:
            return "background"
        return _fill(str(rng.choice(BACKGROUND_TEMPLATES)), phrase)

    colour, shape = split_label(LABELS[example.class_index])
    words = [colour, shape]
    if example.size_word and rng.uniform() < 0.3:
        words.insert(0, example.size_word)
    phrase = " ".join(words)
    template = str(rng.choice(OBJECT_TEMPLATES))
    text = _fill(template, phrase)
    if rng.uniform() < 0.25:
        background = example.background
        text = text.rstrip(".") + f" on {_article(background)} {background} background"
    return text


def caption_corpus() -> list[str]:
    """Return the captions the tokenizer's merges are learnt from.

    Every template appears with every label, size word and background colour,
    though not in every combination, so every word `sample_caption` writes is there.
    """
    from .shapes import BACKGROUND_COLOURS

    corpus = []
    for label in LABELS:
        for size_word in (None, "small", "large"):
            phrase = f"{size_word} {label}" if size_word else label
            corpus.extend(_fill(template, phrase) for template in OBJECT_TEMPLATES)
        for background in BACKGROUND_COLOURS:
            corpus.append(f"{_fill('{a} {phrase}', label)} on {_article(background)} {background} background")
    for word in BACKGROUND_WORDS:
        for background in (None, *BACKGROUND_COLOURS):
            phrase = f"{word} {background} background" if background else f"{word} background"
            corpus.extend(_fill(template, phrase) for template in BACKGROUND_TEMPLATES)
    corpus.append("background")
    corpus.append(f"a photo of a {BACKGROUND_LABEL}.")
    return corpus


# -- example kinds -----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Drawn:
    """A square picture before resizing, with the coverage of each object in it."""

    image: Image.Image
    masks: np.ndarray  # (objects, height, width) float32
    classes: list[int]  # class of each mask
    example: Example


def _single_object(rng: np.random.Generator) -> _Drawn:
    class_index = int(rng.integers(len(LABELS)))
    colour, shape = split_label(LABELS[class_index])
    size = int(rng.integers(CANVAS_SIZES[0], CANVAS_SIZES[1] + 1))
    picture = draw_object_picture(rng, colour, shape, size=size)
    example = Example(class_index, picture.size_word, picture.background.colour)
    return _Drawn(picture.image, picture.mask[None], [class_index], example)


def _plain_background(rng: np.random.Generator) -> _Drawn:
    background = pick_background(rng)
    size = int(rng.integers(CANVAS_SIZES[0], CANVAS_SIZES[1] + 1))
    image = draw_background(rng, (size, size), background)
    masks = np.zeros((0, size, size), np.float32)
    return _Drawn(image, masks, [], Example(BACKGROUND_CLASS, None, background.colour))


def _scene_crops(rng: np.random.Generator) -> list[_Drawn]:
    """Crop a window around every object of one scene, and sometimes one of background."""
    size = (int(rng.integers(*SCENE_SIZES)), int(rng.integers(*SCENE_SIZES)))
    background = pick_background(rng)
    scene = draw_scene_picture(rng, size=size, background=background)
    objects, image = scene.objects, scene.image
    boxes = [o.box for o in objects]
    classes = [LABELS.index(o.label) for o in objects]
    crops = []

    for index, item in enumerate(objects):
        window = _window_around(rng, item.box, size)
        others = boxes[:index] + boxes[index + 1 :]
        if window is None or any(_inside_fraction(box, window) > MAX_INTRUSION for box in others):
            continue
        x0, y0, x1, y1 = item.box
        fraction = max(x1 - x0, y1 - y0) / (window[2] - window[0])
        example = Example(classes[index], size_word(fraction), background.colour)
        crops.append(_Drawn(image.crop(window), _crop_masks(scene.masks, window), classes, example))

    windows = []
    if rng.uniform() < BACKGROUND_CROP_SHARE:
        windows.append(_empty_window(rng, boxes, size))
    if rng.uniform() < PART_CROP_SHARE:
        windows.append(_part_window(rng, boxes, int(rng.integers(len(boxes))), size))
    for window in windows:
        if window is not None:
            example = Example(BACKGROUND_CLASS, None, background.colour)
            crops.append(_Drawn(image.crop(window), _crop_masks(scene.masks, window), classes, example))
    return crops


def _window_around(
    rng: np.random.Generator, box: Sequence[int], size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Choose a square window that contains `box` and lies inside the scene."""
    x0, y0, x1, y1 = box
    extent = max(x1 - x0, y1 - y0)
    side = min(int(math.ceil(extent * rng.uniform(*CROP_MARGIN))), *size)
    if side < extent:
        return None
    left = int(rng.integers(max(0, x1 - side), min(x0, size[0] - side) + 1))
    top = int(rng.integers(max(0, y1 - side), min(y0, size[1] - side) + 1))
    return (left, top, left + side, top + side)


def _empty_window(
    rng: np.random.Generator, boxes: Sequence[Sequence[int]], size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Choose a square window holding at most a sliver of any object, or None after 30 tries."""
    for _ in range(30):
        side = int(rng.integers(32, min(160, *size) + 1))
        left = int(rng.integers(0, size[0] - side + 1))
        top = int(rng.integers(0, size[1] - side + 1))
        window = (left, top, left + side, top + side)
        if all(_inside_fraction(box, window) <= MAX_SLIVER for box in boxes):
            return window
    return None


def _part_window(
    rng: np.random.Generator, boxes: Sequence[Sequence[int]], index: int, size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Choose a square window that cuts through object `index`, or None after 30 tries.

    The window contains between MAX_SLIVER and MAX_PART of that object's box
    and at most MAX_SLIVER of any other object's box.
    """
    x0, y0, x1, y1 = boxes[index]
    extent = max(x1 - x0, y1 - y0)
    for _ in range(30):
        side = min(int(extent * rng.uniform(0.4, 1.2)), *size)
        angle = rng.uniform(0, 2 * math.pi)
        reach = extent * rng.uniform(0.3, 0.8)
        centre_x = (x0 + x1) / 2 + reach * math.cos(angle)
        centre_y = (y0 + y1) / 2 + reach * math.sin(angle)
        left = int(min(max(centre_x - side / 2, 0), size[0] - side))
        top = int(min(max(centre_y - side / 2, 0), size[1] - side))
        window = (left, top, left + side, top + side)
        others = boxes[:index] + boxes[index + 1 :]
        if MAX_SLIVER < _inside_fraction(boxes[index], window) <= MAX_PART and all(
            _inside_fraction(box, window) <= MAX_SLIVER for box in others
        ):
            return window
    return None


# -- helpers -----------------------------------------------------------------------


def _to_input(rng: np.random.Generator, image: Image.Image, image_size: int) -> np.ndarray:
    """Resize a square picture to the model input as `CLIPImageProcessor` does (bicubic)."""
    if rng.uniform() < JPEG_SHARE:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(30, 91)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BICUBIC))


def _patch_classes(picture: _Drawn, grid: int) -> np.ndarray:
    """Return the (grid, grid) class of each patch: its main object's class, or the background's."""
    classes = np.full((grid, grid), BACKGROUND_CLASS, np.int64)
    if not picture.classes:
        return classes
    coverage = np.stack([
        np.asarray(Image.fromarray(mask, mode="F").resize((grid, grid), Image.Resampling.BOX)) for mask in picture.masks
    ])
    main = coverage.argmax(axis=0)
    covered = coverage.max(axis=0) > PATCH_COVERAGE
    classes[covered] = np.asarray(picture.classes)[main[covered]]
    return classes


def _crop_masks(masks: np.ndarray, window: Sequence[int]) -> np.ndarray:
    left, top, right, bottom = window
    return np.ascontiguousarray(masks[:, top:bottom, left:right])


def _inside_fraction(box: Sequence[int], window: Sequence[int]) -> float:
    """Return the fraction of `box`'s area that lies inside `window`."""
    width = min(box[2], window[2]) - max(box[0], window[0])
    height = min(box[3], window[3]) - max(box[1], window[1])
    if width <= 0 or height <= 0:
        return 0.0
    return width * height / ((box[2] - box[0]) * (box[3] - box[1]))


def _fill(template: str, phrase: str) -> str:
    return template.format(a=_article(phrase), phrase=phrase)


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"


