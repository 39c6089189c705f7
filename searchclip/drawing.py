"""Drawing localisation results over pictures: score maps and labelled boxes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import SearchclipError, UsageError

Box = tuple[int, int, int, int]

# Share of the blended picture taken by the score colours, from 0 to 1.
HEATMAP_OPACITY = 0.5

# Colour stops from the lowest to the highest score: dark blue, cyan, yellow, red.
_COLOUR_STOPS = np.array(
    [[0.0, 0, 0, 130], [0.35, 0, 190, 255], [0.7, 255, 230, 0], [1.0, 220, 0, 0]],
    dtype=np.float32,
)
# Box colours per label, cycling when there are more labels than colours.
_BOX_COLOURS = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
)
_BOX_BORDER = (255, 255, 255)


def render_heatmap(
    image: Image.Image,
    heatmap: np.ndarray,
    box: Box | None = None,
    opacity: float = HEATMAP_OPACITY,
) -> Image.Image:
    """Blend a score map over a picture and draw `box` on it, at the picture's size.

    The map may have any shape; it is stretched over the whole picture and its
    range from minimum to maximum is spread over the colour scale.
    """
    image = image.convert("RGB")
    values = np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    values = (values - low) / (high - low) if high > low else np.zeros_like(values)
    stretched = np.asarray(
        Image.fromarray(values, mode="F").resize(image.size, Image.Resampling.BILINEAR), dtype=np.float32
    )
    colours = np.stack(
        [np.interp(stretched, _COLOUR_STOPS[:, 0], _COLOUR_STOPS[:, channel]) for channel in (1, 2, 3)], axis=-1
    )
    overlay = Image.fromarray(np.clip(colours, 0, 255).astype(np.uint8), mode="RGB")
    blended = Image.blend(image, overlay, opacity)
    if box is not None:
        _draw_box(ImageDraw.Draw(blended), box, (255, 255, 255), _line_width(image.size))
    return blended


def render_detections(image: Image.Image, detections: Sequence) -> Image.Image:
    """Draw every detection's box with its label and score, at the picture's size.

    `detections` are `localisation.Detection` records or anything with
    `label`, `box` and `score` attributes.
    """
    result = image.convert("RGB").copy()
    draw = ImageDraw.Draw(result)
    width = _line_width(result.size)
    font = _font(max(12, min(result.size) // 30))
    colours: dict[str, tuple[int, int, int]] = {}
    for detection in detections:
        colour = colours.setdefault(detection.label, _BOX_COLOURS[len(colours) % len(_BOX_COLOURS)])
        _draw_box(draw, detection.box, colour, width)
        caption = f"{detection.label} {detection.score:.2f}"
        x0, y0 = detection.box[0], detection.box[1]
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_height = bottom - top
        # The caption sits above the box, or inside it when the box touches the top edge.
        y = y0 - text_height - 2 * width if y0 >= text_height + 2 * width else y0 + width
        draw.rectangle((x0, y, x0 + right - left + 2 * width, y + text_height + 2 * width), fill=colour)
        draw.text((x0 + width - left, y + width - top), caption, fill=(255, 255, 255), font=font)
    return result


def check_output_path(path: str | os.PathLike) -> Path:
    """Check that an image can be written to `path` before any work goes into it.

    Raises:
        UsageError: the suffix names no format Pillow can write, or the
            folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() not in Image.registered_extensions():
        raise UsageError(f"{path}: unknown image format {path.suffix!r}; use a name ending in .png or .jpg")
    if not path.parent.is_dir():
        raise UsageError(f"{path}: folder {path.parent} not found; create it first or choose another path")
    return path


def save_image(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write a picture to `path` in the format its suffix names.

    Raises:
        UsageError: the suffix names no format Pillow can write.
        SearchclipError: the file cannot be written.
    """
    path = check_output_path(path)
    try:
        image.save(path)
    except OSError as error:
        raise SearchclipError(f"{path}: could not write the image ({error.strerror or error})") from None
    return path


def _draw_box(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int], width: int) -> None:
    # A thin light border around the coloured line keeps boxes visible on
    # backgrounds of the same colour.
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=_BOX_BORDER, width=width + 2)
    draw.rectangle((x0 + 1, y0 + 1, x1 - 2, y1 - 2), outline=colour, width=width)


def _line_width(size: tuple[int, int]) -> int:
    return max(2, min(size) // 150)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        # Pillow without FreeType has only its small bitmap font.
        return ImageFont.load_default()
