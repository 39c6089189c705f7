"""Reading image files into RGB pictures the way every command needs them.

Handles EXIF orientation, every Pillow mode, transparency, first frames of
animations and multi-page files, and pictures too large to decode safely.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

# Largest picture decoded by default, in megapixels. A 150 MP RGB picture
# needs about 450 MB decoded, so a single file stays far from exhausting
# memory while the largest camera sensors sold today (about 100-150 MP) pass.
DEFAULT_MAX_MEGAPIXELS = 150.0

# searchclip applies its own megapixel limit before decoding, so Pillow's
# global bomb check (a warning at 89 MP, an error at 179 MP) is switched off.
Image.MAX_IMAGE_PIXELS = None
# A truncated file is an error, never a half-grey picture embedded silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Suffixes tried when walking folders. Pillow identifies files by content,
# so a picture with a wrong suffix among these still decodes.
IMAGE_SUFFIXES = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".dib",
        ".tif", ".tiff", ".jp2", ".j2k", ".jpx", ".jpf", ".pbm", ".pgm", ".ppm",
        ".pnm", ".ico",
    }
)

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Picture:
    """A decoded picture: RGB pixels upright, with the file's own facts."""

    image: Image.Image
    width: int  # upright size in pixels, before any draft reduction
    height: int
    format: str


def open_picture(
    path: str | os.PathLike,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    draft_size: int | None = None,
    data: bytes | None = None,
) -> Picture:
    """Decode an image file into an upright RGB picture.

    Args:
        path: the file to read, or only its name for messages when `data` is given.
        max_megapixels: larger pictures raise `ImageError` before decoding.
        draft_size: when set, JPEG files are decoded at the smallest
            power-of-two reduction whose shorter side stays at least this
            many pixels, which is several times faster for large photos.
        data: the file's bytes, already read by the caller.

    Raises:
        ImageError: the file is missing, unreadable, not an image, truncated
            or too large.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns about odd-but-readable files (EXIF, palettes);
            # such files are still indexed, so the warnings are noise.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data) if data is not None else path) as image:
                return _decode(image, path, max_megapixels, draft_size)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except IsADirectoryError:
        raise ImageError(path, "is a folder, not an image") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except UnidentifiedImageError:
        empty = data == b"" if data is not None else path.is_file() and path.stat().st_size == 0
        raise ImageError(path, "empty file (0 bytes)" if empty else "not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        # Pillow reports truncated and corrupt data as OSError or SyntaxError.
        reason = str(error) or type(error).__name__
        raise ImageError(path, f"corrupt or truncated image ({reason})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a picture of any Pillow mode to RGB, compositing transparency on white."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(image)
    if image.mode == "P":
        # Palette transparency may be a single index or per-entry alpha.
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
    elif image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    elif image.mode in ("L", "1", "RGB") and "transparency" in image.info:
        # A PNG tRNS chunk makes every pixel of one key value transparent.
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def _decode(image: Image.Image, path: Path, max_megapixels: float, draft_size: int | None) -> Picture:
    file_format = image.format or "UNKNOWN"
    width, height = image.size
    megapixels = width * height / 1e6
    if megapixels > max_megapixels:
        raise ImageError(
            path,
            f"{width}x{height} is {_megapixels_text(megapixels)} megapixels, over the limit of "
            f"{max_megapixels:g}; raise --max-megapixels to read it",
        )

    # Multi-frame files (GIF, TIFF, ICO) open on their first frame already;
    # ICO opens on its largest size, which is the one worth embedding.
    if draft_size and file_format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        image.draft("RGB", (draft_size, draft_size))
    image.load()

    orientation = image.getexif().get(0x0112, 1)
    upright = ImageOps.exif_transpose(image) if orientation != 1 else image
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return Picture(image=to_rgb(upright), width=width, height=height, format=file_format)


def _megapixels_text(megapixels: float) -> str:
    # Whole numbers would print 1.2 MP as 1, which reads as within a limit of 1.
    return f"{megapixels:.1f}" if megapixels >= 1 else f"{megapixels:.2g}"


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    # Pillow's own convert("RGB") clips 16-bit values at 255, which turns most
    # 16-bit photos white; scale the full range down to 8 bits instead.
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and 0 <= pixels.min() and pixels.max() <= 65535):
        # 16-bit samples, whether Pillow opened them as I;16 or as I.
        scaled = pixels / 257.0
    else:
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    return gray.convert("RGB")
