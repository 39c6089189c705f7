"""Generated pictures of coloured shapes, whose content is known exactly.

The bundled demo model is trained on these pictures, and tests use them as
ground truth: single objects for classification and search, scenes with two
or three objects at known boxes for localisation. Every function takes a
`numpy.random.Generator`, so the same seed always draws the same pictures.

Robustness mode (`held_out=True`) draws with variations that training never
uses: background colours from `HELD_OUT_BACKGROUND_COLOURS` (lavender, mint,
peach, tan, slate) and background textures from `HELD_OUT_TEXTURES`
(stripes, checkerboard, dots). Object colours, shapes, sizes and positions
are drawn as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
LABELS: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

# A label for pictures without any object, worded so that the usual prompt
# templates read naturally ("a photo of a plain background."). The demo model
# is trained with it and with phrasings such as "an empty background".
BACKGROUND_LABEL = "plain background"

# Object colours as RGB centres. Each drawing shifts every channel by up to
# COLOUR_JITTER levels, little enough that orange stays apart from red and yellow.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 160, 60),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 40),
    "orange": (245, 135, 25),
    "purple": (135, 55, 175),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
}
COLOUR_JITTER = 14

# Background colours used in training, named as captions name them.
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light gray": (205, 205, 205),
    "gray": (135, 135, 135),
    "dark gray": (70, 70, 70),
    "black": (15, 15, 15),
    "beige": (225, 210, 180),
    "pink": (240, 195, 205),
    "light blue": (175, 205, 235),
    "brown": (120, 90, 65),
    "dark green": (45, 75, 55),
}
# Background colours that training never uses, for robustness mode.
HELD_OUT_BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "lavender": (200, 190, 235),
    "mint": (185, 230, 200),
    "peach": (250, 210, 175),
    "tan": (185, 155, 115),
    "slate": (95, 105, 125),
}
# Each drawing shifts every background channel by up to this many levels.
BACKGROUND_JITTER = 16

TEXTURES: tuple[str, ...] = ("plain", "grain", "gradient", "mottled")
HELD_OUT_TEXTURES: tuple[str, ...] = ("stripes", "checker", "dots")

# Object extent (the longer side of its box) as a fraction of the picture's
# side, from loose crops to tight ones.
OBJECT_FRACTION = (0.4, 0.92)
# Object extent in scenes, as a fraction of the scene's shorter side.
SCENE_OBJECT_FRACTION = (0.16, 0.4)
# Minimum empty space between the boxes of two scene objects, in pixels.
SCENE_GAP = 8

# Size words in captions, by object extent as a fraction of the picture's
# shorter side; sizes in between get no size word.
SMALL_BELOW = 0.5
LARGE_ABOVE = 0.8

# Smallest Euclidean RGB distance between an object colour and a background
# colour drawn behind it. At 90, white is never drawn on light gray or beige,
# nor black on dark gray, and every object colour keeps at least two
# backgrounds in each palette.
MIN_CONTRAST = 90.0

# Shapes are rasterised at this multiple of the output size and reduced, so
# edges are anti-aliased as in a rendered photo rather than jagged.
SUPERSAMPLING = 4
STAR_INNER_RADIUS = 0.42  # inner vertices of the five-pointed star, as a fraction of the outer radius


@dataclass(frozen=True)
class Background:
    """A background colour, by the name captions use, and its texture."""

    colour: str
    texture: str

    @property
    def rgb(self) -> tuple[int, int, int]:
        return _background_rgb(self.colour)


@dataclass(frozen=True)
class SceneObject:
    """One drawn object and its box (x0, y0, x1, y1) in pixels, x1 and y1 exclusive.

    The box is the tight bounding box of the drawn shape, so `image.crop(box)`
    cuts out exactly the object.
    """

    colour: str
    shape: str
    box: tuple[int, int, int, int]

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class ObjectPicture:
    """A picture of one object, with what is in it."""

    image: Image.Image
    item: SceneObject
    background: Background
    mask: np.ndarray  # (height, width) float32, the share of each pixel the object covers

    @property
    def label(self) -> str:
        return self.item.label

    @property
    def size_word(self) -> str | None:
        """"small", "large" or None, from the object's extent within the picture."""
        x0, y0, x1, y1 = self.item.box
        return size_word(max(x1 - x0, y1 - y0) / min(self.image.size))


@dataclass(frozen=True, eq=False)
class ScenePicture:
    """A scene with its objects, background and per-object coverage masks."""

    image: Image.Image
    objects: list[SceneObject]
    background: Background
    masks: np.ndarray  # (objects, height, width) float32, as ObjectPicture.mask


def size_word(fraction: float) -> str | None:
    """Return "small", "large" or None for an object extent given as a fraction of the picture's side."""
    if fraction < SMALL_BELOW:
        return "small"
    if fraction > LARGE_ABOVE:
        return "large"
    return None


def split_label(label: str) -> tuple[str, str]:
    """Split a label such as "red circle" into its colour and shape.

    Raises:
        ValueError: the label is not one of `LABELS`.
    """
    colour, _, shape = label.partition(" ")
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown label {label!r}; expected a colour and a shape, one of {', '.join(LABELS)}")
    return colour, shape


def pick_background(
    rng: np.random.Generator,
    held_out: bool = False,
    visible: Sequence[str] = (),
) -> Background:
    """Choose a background colour and texture that contrast with every object colour in `visible`.

    Raises:
        ValueError: no background colour of the chosen palette contrasts
            with all of `visible`.
    """
    palette = HELD_OUT_BACKGROUND_COLOURS if held_out else BACKGROUND_COLOURS
    names = [name for name, rgb in palette.items() if all(_contrast(COLOUR_RGB[c], rgb) >= MIN_CONTRAST for c in visible)]
    if not names:
        raise ValueError(f"no background colour contrasts with all of {', '.join(visible)}")
    textures = HELD_OUT_TEXTURES if held_out else TEXTURES
    return Background(colour=str(rng.choice(names)), texture=str(rng.choice(textures)))


def draw_background(rng: np.random.Generator, size: tuple[int, int], background: Background) -> Image.Image:
    """Draw a background of `size` (width, height) pixels, with the texture's details chosen by `rng`."""
    return Image.fromarray(_to_uint8(_background_pixels(rng, size, background)))


def draw_object_picture(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    size: int = 128,
    held_out: bool = False,
    background: Background | None = None,
) -> ObjectPicture:
    """Draw one object on a background, in a square picture of `size` pixels.

    The object's extent, position, rotation and exact colour, and the
    background (unless given), are chosen by `rng`. With `held_out`, the
    background comes from the held-out colours and textures.
    """
    _check_colour_shape(colour, shape)
    if background is None:
        background = pick_background(rng, held_out, visible=(colour,))
    pixels = _background_pixels(rng, (size, size), background)

    extent = max(4.0, rng.uniform(*OBJECT_FRACTION) * size)
    polygon = _unit_outline(rng, shape)
    width, height = _outline_size(polygon, extent)
    left = rng.uniform(0, size - width)
    top = rng.uniform(0, size - height)
    mask = np.zeros((size, size), np.float32)
    box = _paint(pixels, mask, rng, colour, polygon, extent, (left, top))

    image = Image.fromarray(_to_uint8(pixels))
    return ObjectPicture(image=image, item=SceneObject(colour, shape, box), background=background, mask=mask)


def draw_object(
    rng: np.random.Generator,
    colour: str,
    shape: str,
    size: int = 128,
    held_out: bool = False,
) -> Image.Image:
    """Draw one object on a background; see `draw_object_picture` for what varies."""
    return draw_object_picture(rng, colour, shape, size=size, held_out=held_out).image


def draw_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (320, 256),
    count: int | None = None,
    held_out: bool = False,
    labels: Sequence[str] | None = None,
    background: Background | None = None,
) -> tuple[Image.Image, list[SceneObject]]:
    """Draw a scene of `size` (width, height) pixels with non-overlapping objects.

    Args:
        rng: chooses everything not given.
        size: at least 128 pixels on each side, so that objects fit.
        count: number of objects, 2 or 3 at random when None.
        held_out: draw with the held-out background colours and textures.
        labels: the objects to draw, such as ["red circle", "blue star"];
            chosen at random (distinct, and visible on the background) when None.
        background: chosen at random when None.

    Returns:
        The picture and its objects, whose boxes are at least `SCENE_GAP`
        pixels apart.

    Raises:
        ValueError: invalid size, count or labels, or objects that do not fit.
    """
    scene = draw_scene_picture(rng, size, count, held_out, labels, background)
    return scene.image, scene.objects


def draw_scene_picture(
    rng: np.random.Generator,
    size: tuple[int, int] = (320, 256),
    count: int | None = None,
    held_out: bool = False,
    labels: Sequence[str] | None = None,
    background: Background | None = None,
) -> ScenePicture:
    """Draw a scene as `draw_scene` does, and return it with its background and object masks."""
    width, height = size
    if min(width, height) < 128:
        raise ValueError(f"scene size {width}x{height} is too small; use at least 128 pixels on each side")
    if labels is not None:
        requested = [split_label(label) for label in labels]
        if count is not None and count != len(requested):
            raise ValueError(f"count {count} differs from the {len(requested)} labels given")
    else:
        count = int(rng.integers(2, 4)) if count is None else count
        if not 1 <= count <= len(LABELS):
            raise ValueError(f"count {count} is out of range; use 1 to {len(LABELS)}")
        requested = None

    if background is None:
        visible = [colour for colour, _ in requested] if requested else ()
        background = pick_background(rng, held_out, visible=visible)
    if requested is None:
        allowed = [label for label in LABELS if _contrast(COLOUR_RGB[split_label(label)[0]], background.rgb) >= MIN_CONTRAST]
        chosen = rng.choice(len(allowed), size=min(count, len(allowed)), replace=False)
        requested = [split_label(allowed[i]) for i in chosen]

    pixels = _background_pixels(rng, size, background)
    masks = np.zeros((len(requested), height, width), np.float32)
    objects: list[SceneObject] = []
    for index, (colour, shape) in enumerate(requested):
        polygon = _unit_outline(rng, shape)
        extent, left, top = _place(rng, polygon, size, [o.box for o in objects])
        box = _paint(pixels, masks[index], rng, colour, polygon, extent, (left, top))
        objects.append(SceneObject(colour, shape, box))

    image = Image.fromarray(_to_uint8(pixels))
    return ScenePicture(image=image, objects=objects, background=background, masks=masks)


def caption(colour: str, shape: str, size_word: str | None = None, background: str | None = None) -> str:
    """Describe one object in plain English, such as "a small red circle on a gray background"."""
    _check_colour_shape(colour, shape)
    words = " ".join(word for word in (size_word, colour, shape) if word)
    text = f"{_article(words)} {words}"
    if background:
        text += f" on {_article(background)} {background} background"
    return text


def background_caption(background: str | None = None) -> str:
    """Describe a picture without objects, such as "a plain gray background"."""
    return f"a plain {background} background" if background else "a plain background"


# -- drawing ---------------------------------------------------------------------


def _paint(
    pixels: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    colour: str,
    polygon: np.ndarray | None,
    extent: float,
    top_left: tuple[float, float],
) -> tuple[int, int, int, int]:
    """Paint a shape into `pixels` (height, width, 3) with its box's corner at `top_left`.

    `polygon` is the shape's unit outline, or None for a circle. The shape's
    coverage is written into `mask` (height, width). Returns the tight
    integer box of the painted pixels.
    """
    left, top = top_left
    width, height = _outline_size(polygon, extent)
    x0, y0 = int(math.floor(left)), int(math.floor(top))
    x1 = min(int(math.ceil(left + width)), pixels.shape[1])
    y1 = min(int(math.ceil(top + height)), pixels.shape[0])

    # Rasterise only the object's own box, offset by its fractional position,
    # so scenes cost no more than single pictures.
    scale = SUPERSAMPLING
    raster = Image.new("L", ((x1 - x0) * scale, (y1 - y0) * scale), 0)
    draw = ImageDraw.Draw(raster)
    dx, dy = (left - x0) * scale, (top - y0) * scale
    if polygon is None:
        draw.ellipse([dx, dy, dx + extent * scale, dy + extent * scale], fill=255)
    else:
        points = _scaled_outline(polygon, extent * scale)
        draw.polygon([(float(x) + dx, float(y) + dy) for x, y in points], fill=255)
    alpha = np.asarray(raster.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), dtype=np.float32)[..., None] / 255.0

    rgb = np.clip(np.asarray(COLOUR_RGB[colour], np.float32) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)
    region = pixels[y0:y1, x0:x1]
    region *= 1.0 - alpha
    region += alpha * rgb
    mask[y0:y1, x0:x1] = alpha[..., 0]

    covered = alpha[..., 0] > 0.02
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def _place(
    rng: np.random.Generator,
    polygon: np.ndarray | None,
    size: tuple[int, int],
    occupied: list[tuple[int, int, int, int]],
) -> tuple[float, float, float]:
    """Choose an extent and top-left corner keeping `SCENE_GAP` pixels from every occupied box."""
    width, height = size
    low, high = SCENE_OBJECT_FRACTION
    extent = rng.uniform(low, high) * min(width, height)
    # Shrink after every 50 failed tries; three objects of the largest size
    # cannot always share a 256-pixel scene.
    for attempt in range(400):
        if attempt and attempt % 50 == 0:
            extent = max(low * min(width, height) * 0.6, extent * 0.85)
        box_width, box_height = _outline_size(polygon, extent)
        left = rng.uniform(1, width - box_width - 1)
        top = rng.uniform(1, height - box_height - 1)
        box = (left - SCENE_GAP, top - SCENE_GAP, left + box_width + SCENE_GAP, top + box_height + SCENE_GAP)
        if not any(_overlaps(box, other) for other in occupied):
            return extent, left, top
    raise ValueError(
        f"could not place {len(occupied) + 1} objects without overlap in a {width}x{height} scene; "
        "draw fewer objects or a larger scene"
    )


def _unit_outline(rng: np.random.Generator, shape: str) -> np.ndarray | None:
    """Return the shape's outline, rotated at random, as (n, 2) points; None for a circle."""
    if shape == "circle":
        return None
    if shape == "square":
        angles = np.deg2rad([45.0, 135.0, 225.0, 315.0])
        radii = np.ones(4)
    elif shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        radii = np.ones(3)
    else:
        angles = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RADIUS)
    angles = angles + rng.uniform(0, 2 * math.pi)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _scaled_outline(polygon: np.ndarray, extent: float) -> np.ndarray:
    """Scale and shift an outline so its box starts at (0, 0) and its longer side is `extent`."""
    low, high = polygon.min(axis=0), polygon.max(axis=0)
    return (polygon - low) * (extent / float((high - low).max()))


def _outline_size(polygon: np.ndarray | None, extent: float) -> tuple[float, float]:
    if polygon is None:
        return extent, extent
    span = polygon.max(axis=0) - polygon.min(axis=0)
    width, height = span * (extent / float(span.max()))
    return float(width), float(height)


def _background_pixels(rng: np.random.Generator, size: tuple[int, int], background: Background) -> np.ndarray:
    """Return (height, width, 3) float32 pixels, unclipped.

    Textures shift levels by up to 20 except grain, which is Gaussian with a
    standard deviation of at most 10 levels.
    """
    width, height = size
    base = np.asarray(background.rgb, np.float32) + rng.uniform(-BACKGROUND_JITTER, BACKGROUND_JITTER, 3).astype(np.float32)
    texture = background.texture
    if texture == "plain":
        return np.broadcast_to(base, (height, width, 3)).copy()

    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    if texture == "grain":
        shade = rng.standard_normal((height, width), dtype=np.float32) * np.float32(rng.uniform(4, 10))
    elif texture == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        ramp = xs * math.cos(angle) + ys * math.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        shade = (ramp - 0.5) * np.float32(rng.uniform(20, 40))
    elif texture == "mottled":
        cells = int(rng.integers(3, 7))
        coarse = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
        shade = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)) * np.float32(rng.uniform(10, 18))
    elif texture == "stripes":
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 16)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) * np.float32(2 * math.pi / period)
        shade = np.sign(np.sin(phase)) * np.float32(rng.uniform(8, 14))
    elif texture == "checker":
        cell = int(rng.integers(8, 20))
        shade = (((xs // cell) + (ys // cell)) % 2 * 2 - 1) * np.float32(rng.uniform(7, 12))
    elif texture == "dots":
        spacing = int(rng.integers(10, 18))
        radius = rng.uniform(1.5, 3.0)
        dx = (xs % spacing) - spacing / 2
        dy = (ys % spacing) - spacing / 2
        shade = np.where(dx * dx + dy * dy <= radius * radius, np.float32(-rng.uniform(12, 20)), np.float32(0.0))
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {', '.join(TEXTURES + HELD_OUT_TEXTURES)}")

    # Brighten rather than darken near-black backgrounds so texture stays visible.
    if base.mean() < 40:
        shade = np.abs(shade)
    return base + np.broadcast_to(shade, (height, width))[..., None]


# -- small helpers -----------------------------------------------------------------


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    np.clip(pixels, 0, 255, out=pixels)
    pixels += 0.5
    return pixels.astype(np.uint8)


def _check_colour_shape(colour: str, shape: str) -> None:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {', '.join(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _background_rgb(name: str) -> tuple[int, int, int]:
    if name in BACKGROUND_COLOURS:
        return BACKGROUND_COLOURS[name]
    if name in HELD_OUT_BACKGROUND_COLOURS:
        return HELD_OUT_BACKGROUND_COLOURS[name]
    known = ", ".join([*BACKGROUND_COLOURS, *HELD_OUT_BACKGROUND_COLOURS])
    raise ValueError(f"unknown background colour {name!r}; expected one of {known}")


def _contrast(first: tuple[int, int, int], second: tuple[int, int, int]) -> float:
    return float(np.linalg.norm(np.subtract(first, second, dtype=np.float64)))


def _overlaps(first: Sequence[float], second: Sequence[float]) -> bool:
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


def _article(phrase: str) -> str:
    return "an" if phrase[:1] in "aeiou" else "a"
