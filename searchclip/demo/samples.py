"""Write the sample_images folder: generated shape pictures in every common image format.

Rerun with `python -m searchclip.demo.samples` from the repository root; the
same files come out every time. File names name the colour and shape each
picture shows, so a search over the folder can be checked by eye. Besides plain pictures the
folder holds the cases an image reader must handle: subfolders, an EXIF
orientation tag, transparency, a grayscale file, a two-frame GIF, a large
JPEG and scenes with several objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .shapes import draw_object_picture, draw_scene, pick_background

log = logging.getLogger(__name__)

SEED = 7
DEFAULT_OUTPUT = Path("sample_images")
PICTURE_SIZE = 192  # pixels, square, for the single-object pictures

# EXIF tag 0x0112 value 6: the stored pixels must turn 90 degrees clockwise to
# be upright, as in a photo taken with the phone held upright.
EXIF_ORIENTATION_TAG = 0x0112
ROTATE_CLOCKWISE = 6


@dataclass(frozen=True)
class Sample:
    """One file of the folder: its path, what it shows and how it is written."""

    path: str
    colour: str
    shape: str
    kind: str = "plain"  # plain, exif, transparent, grayscale, animated or large

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


SAMPLES: tuple[Sample, ...] = (
    Sample("red_circle_1.jpg", "red", "circle"),
    Sample("red_circle_2.png", "red", "circle"),
    Sample("red_circle_3.webp", "red", "circle"),
    Sample("red_square.jpg", "red", "square"),
    Sample("red_star.png", "red", "star"),
    Sample("orange_circle.gif", "orange", "circle"),
    Sample("purple_circle.jpg", "purple", "circle"),
    Sample("blue_circle.bmp", "blue", "circle"),
    Sample("blue_square.png", "blue", "square"),
    Sample("green_triangle.jpg", "green", "triangle"),
    Sample("yellow_star.webp", "yellow", "star"),
    Sample("black_square.tiff", "black", "square"),
    Sample("white_triangle.png", "white", "triangle"),
    Sample("blue_star_exif_rotated.jpg", "blue", "star", kind="exif"),
    Sample("green_triangle_transparent.png", "green", "triangle", kind="transparent"),
    Sample("black_circle_grayscale.png", "black", "circle", kind="grayscale"),
    Sample("purple_star_animated.gif", "purple", "star", kind="animated"),
    Sample("yellow_star_large.jpg", "yellow", "star", kind="large"),
    Sample("more/orange_square.png", "orange", "square"),
    Sample("more/white_circle.webp", "white", "circle"),
    Sample("more/green_star.bmp", "green", "star"),
    Sample("more/nested/yellow_triangle.tiff", "yellow", "triangle"),
    Sample("more/nested/purple_square.gif", "purple", "square"),
)

# Scenes: a file name and the labels of its objects, which are placed at random.
SCENES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scenes/red_circle_blue_square_yellow_star.png", ("red circle", "blue square", "yellow star")),
    ("scenes/green_triangle_orange_star.jpg", ("green triangle", "orange star")),
)
SCENE_SIZE = (320, 256)
LARGE_SIZE = (1024, 768)


def write_samples(output: Path = DEFAULT_OUTPUT) -> list[Path]:
    """Write every sample and scene under `output` and return the paths written."""
    written = []
    for index, sample in enumerate(SAMPLES):
        rng = np.random.default_rng([SEED, index])
        path = output / sample.path
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_sample(rng, sample, path)
        written.append(path)

    for index, (name, labels) in enumerate(SCENES):
        rng = np.random.default_rng([SEED, 1000 + index])
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image, _ = draw_scene(rng, size=SCENE_SIZE, labels=labels)
        _save(image, path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m searchclip.demo.samples", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write to (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = write_samples(args.output)
    total = sum(path.stat().st_size for path in paths)
    log.info("wrote %d files, %.0f KB, under %s", len(paths), total / 1024, args.output)


def _write_sample(rng: np.random.Generator, sample: Sample, path: Path) -> None:
    # Pictures widened with more background need a plain one, without seams.
    background = pick_background(rng, visible=(sample.colour,))
    if sample.kind in ("large", "exif"):
        background = dataclasses.replace(background, texture="plain")

    if sample.kind == "large":
        # A wide photo-sized picture with the object in its middle square,
        # for readers that decode large JPEG files at reduced size.
        width, height = LARGE_SIZE
        square = draw_object_picture(rng, sample.colour, sample.shape, size=height, background=background)
        canvas = Image.new("RGB", LARGE_SIZE, square.image.getpixel((0, 0)))
        canvas.paste(square.image, ((width - height) // 2, 0))
        _save(canvas, path, quality=85)
        return

    picture = draw_object_picture(rng, sample.colour, sample.shape, size=PICTURE_SIZE, background=background)
    image = picture.image
    if sample.kind == "exif":
        # Upright, the object fills the left square and empty background the
        # right third, so a reader that ignores the tag shows it turned.
        upright = Image.new("RGB", (PICTURE_SIZE * 3 // 2, PICTURE_SIZE), image.getpixel((0, 0)))
        upright.paste(image, (0, 0))
        stored = upright.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise; the tag turns it back
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = ROTATE_CLOCKWISE
        stored.save(path, format="JPEG", quality=90, exif=exif.tobytes())
    elif sample.kind == "transparent":
        # The object alone, with the background fully transparent.
        rgba = image.convert("RGBA")
        rgba.putalpha(Image.fromarray(np.rint(picture.mask * 255).astype(np.uint8)))
        rgba.save(path)
    elif sample.kind == "grayscale":
        image.convert("L").save(path)
    elif sample.kind == "animated":
        # The first frame shows the object; a reader must use that one.
        second = draw_object_picture(rng, sample.colour, sample.shape, size=PICTURE_SIZE, background=pick_background(rng))
        image.save(path, save_all=True, append_images=[second.image], duration=500, loop=0)
    else:
        _save(image, path)


def _save(image: Image.Image, path: Path, quality: int = 90) -> None:
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        image.save(path, format="JPEG", quality=quality)
    elif suffix == ".webp":
        image.save(path, format="WEBP", quality=quality)
    elif suffix in (".tif", ".tiff"):
        image.save(path, format="TIFF", compression="tiff_deflate")
    else:
        image.save(path)


if __name__ == "__main__":
    main()
