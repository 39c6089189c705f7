"""Decoding real files of every format and mode into upright RGB pictures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from searchclip.errors import ImageError
from searchclip.images import DEFAULT_MAX_MEGAPIXELS, IMAGE_SUFFIXES, open_picture, to_rgb

RED = (230, 20, 20)
BLUE = (20, 40, 230)
GREEN = (20, 200, 40)
YELLOW = (240, 220, 20)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)

# Lossy formats (JPEG, WebP) move colours a little, most at edges between blocks.
TOLERANCE = 40


def two_tone(mode: str, left, right, size: tuple[int, int] = (48, 32)) -> Image.Image:
    """Return a picture whose left half is `left` and right half is `right`."""
    width, height = size
    image = Image.new(mode, size, left)
    image.paste(right, (width // 2, 0, width, height))
    return image


def quadrants(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Return a picture with red, green, blue and yellow quarters, clockwise from the top left."""
    width, height = size
    image = Image.new("RGB", size, RED)
    image.paste(GREEN, (width // 2, 0, width, height // 2))
    image.paste(YELLOW, (width // 2, height // 2, width, height))
    image.paste(BLUE, (0, height // 2, width // 2, height))
    return image


def assert_close(actual, expected, tolerance: int = TOLERANCE) -> None:
    assert len(actual) == 3, f"{actual} is not an RGB pixel"
    assert max(abs(a - e) for a, e in zip(actual, expected)) <= tolerance, f"{actual} is not close to {expected}"


def pixel(picture, x_fraction: float, y_fraction: float):
    width, height = picture.image.size
    return picture.image.getpixel((int(width * x_fraction), int(height * y_fraction)))


# (file name, Pillow format name to save with, mode, left colour, right colour,
#  expected RGB of the left and right halves, format name reported on reading)
FORMATS = [
    ("photo.jpg", "JPEG", "RGB", RED, BLUE, RED, BLUE, "JPEG"),
    ("photo.png", "PNG", "RGB", RED, BLUE, RED, BLUE, "PNG"),
    ("photo.webp", "WEBP", "RGB", RED, BLUE, RED, BLUE, "WEBP"),
    ("photo.gif", "GIF", "RGB", RED, BLUE, RED, BLUE, "GIF"),
    ("photo.bmp", "BMP", "RGB", RED, BLUE, RED, BLUE, "BMP"),
    ("photo.tiff", "TIFF", "RGB", RED, BLUE, RED, BLUE, "TIFF"),
    ("photo.jp2", "JPEG2000", "RGB", RED, BLUE, RED, BLUE, "JPEG2000"),
    ("photo.pbm", "PPM", "1", 0, 1, BLACK, WHITE, "PPM"),
    ("photo.pgm", "PPM", "L", 60, 200, (60, 60, 60), (200, 200, 200), "PPM"),
    ("photo.ppm", "PPM", "RGB", RED, BLUE, RED, BLUE, "PPM"),
    ("photo.pnm", "PPM", "RGB", RED, BLUE, RED, BLUE, "PPM"),
]


@pytest.mark.parametrize(
    "name, save_format, mode, left, right, expected_left, expected_right, read_format",
    FORMATS,
    ids=[case[0].split(".")[1] for case in FORMATS],
)
def test_format_decodes(tmp_path, name, save_format, mode, left, right, expected_left, expected_right, read_format):
    if save_format == "JPEG2000" and not features.check("jpg_2000"):
        pytest.skip("this Pillow was built without OpenJPEG, so it cannot read JPEG 2000")
    path = tmp_path / name
    two_tone(mode, left, right).save(path, format=save_format)

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.size == (48, 32)
    assert (picture.width, picture.height) == (48, 32)
    assert picture.format == read_format
    assert_close(pixel(picture, 0.25, 0.5), expected_left)
    assert_close(pixel(picture, 0.75, 0.5), expected_right)


def test_suffixes_cover_formats():
    for suffix in (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".ico"):
        assert suffix in IMAGE_SUFFIXES


def test_ico_largest_size(tmp_path):
    path = tmp_path / "icon.ico"
    Image.new("RGB", (64, 64), GREEN).save(path, sizes=[(16, 16), (32, 32), (64, 64)])

    picture = open_picture(path)

    assert picture.format == "ICO"
    assert picture.image.mode == "RGB"
    assert picture.image.size == (64, 64)
    assert (picture.width, picture.height) == (64, 64)
    assert_close(pixel(picture, 0.5, 0.5), GREEN, tolerance=0)


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "animation.gif"
    frames = [Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE), Image.new("RGB", (40, 30), GREEN)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as image:
        assert image.n_frames == 3

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.size == (40, 30)
    assert_close(pixel(picture, 0.5, 0.5), RED, tolerance=0)


def test_multipage_tiff_first_page(tmp_path):
    path = tmp_path / "scan.tiff"
    pages = [Image.new("RGB", (40, 30), RED), Image.new("RGB", (20, 50), BLUE)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with Image.open(path) as image:
        assert image.n_frames == 2

    picture = open_picture(path)

    assert picture.image.size == (40, 30)
    assert (picture.width, picture.height) == (40, 30)
    assert_close(pixel(picture, 0.5, 0.5), RED, tolerance=0)


# EXIF orientation -> the transpose that turns an upright picture into the stored one.
STORED_ROTATIONS = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # viewers rotate 90 degrees clockwise to show it
    8: Image.Transpose.ROTATE_270,  # viewers rotate 90 degrees counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(STORED_ROTATIONS))
def test_exif_orientation_upright(tmp_path, orientation):
    upright = quadrants((64, 48))
    stored = upright.transpose(STORED_ROTATIONS[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated-{orientation}.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)

    picture = open_picture(path)

    assert picture.image.size == (64, 48)
    assert (picture.width, picture.height) == (64, 48)
    assert_close(pixel(picture, 0.25, 0.25), RED)
    assert_close(pixel(picture, 0.75, 0.25), GREEN)
    assert_close(pixel(picture, 0.75, 0.75), YELLOW)
    assert_close(pixel(picture, 0.25, 0.75), BLUE)


def test_exif_orientation_swaps_size(tmp_path):
    stored = Image.new("RGB", (64, 48), RED)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, exif=exif.tobytes())

    picture = open_picture(path)

    assert picture.image.size == (48, 64)
    assert (picture.width, picture.height) == (48, 64)


def test_mode_palette(tmp_path):
    path = tmp_path / "palette.png"
    image = Image.new("P", (20, 10), 0)
    image.putpalette([*RED, *BLUE])
    image.paste(1, (10, 0, 20, 10))
    image.save(path)

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.getpixel((2, 5)) == RED
    assert picture.image.getpixel((15, 5)) == BLUE


@pytest.mark.parametrize("suffix", ["png", "gif"])
def test_mode_palette_transparency(tmp_path, suffix):
    path = tmp_path / f"palette.{suffix}"
    image = Image.new("P", (20, 10), 0)
    image.putpalette([*RED, *BLUE])
    image.paste(1, (10, 0, 20, 10))
    image.save(path, transparency=1)
    with Image.open(path) as reopened:
        assert reopened.mode == "P"

    picture = open_picture(path)

    assert picture.image.getpixel((2, 5)) == RED
    assert picture.image.getpixel((15, 5)) == WHITE


def test_mode_palette_alpha(tmp_path):
    # A palette PNG whose tRNS chunk gives every entry its own alpha.
    path = tmp_path / "palette-alpha.png"
    image = Image.new("P", (30, 10), 0)
    image.putpalette([*RED, *RED, *BLUE])
    image.paste(1, (10, 0, 20, 10))
    image.paste(2, (20, 0, 30, 10))
    image.save(path, transparency=bytes([255, 0, 128]))

    picture = open_picture(path)

    assert picture.image.getpixel((5, 5)) == RED
    assert picture.image.getpixel((15, 5)) == WHITE
    assert_close(picture.image.getpixel((25, 5)), (137, 147, 242), tolerance=2)


def test_mode_grey(tmp_path):
    path = tmp_path / "grey.png"
    two_tone("L", 30, 220, (20, 10)).save(path)

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.getpixel((2, 5)) == (30, 30, 30)
    assert picture.image.getpixel((15, 5)) == (220, 220, 220)


def test_mode_grey_alpha(tmp_path):
    path = tmp_path / "grey-alpha.png"
    two_tone("LA", (0, 255), (0, 0), (20, 10)).save(path)

    picture = open_picture(path)

    assert picture.image.getpixel((2, 5)) == BLACK
    assert picture.image.getpixel((15, 5)) == WHITE


def test_mode_grey_colour_key(tmp_path):
    path = tmp_path / "grey-key.png"
    two_tone("L", 30, 220, (20, 10)).save(path, transparency=220)

    picture = open_picture(path)

    assert picture.image.getpixel((2, 5)) == (30, 30, 30)
    assert picture.image.getpixel((15, 5)) == WHITE


def test_mode_rgb_colour_key(tmp_path):
    path = tmp_path / "rgb-key.png"
    two_tone("RGB", RED, BLUE, (20, 10)).save(path, transparency=BLUE)
    with Image.open(path) as reopened:
        assert reopened.mode == "RGB"
        assert reopened.info["transparency"] == BLUE

    picture = open_picture(path)

    assert picture.image.getpixel((2, 5)) == RED
    assert picture.image.getpixel((15, 5)) == WHITE


@pytest.mark.parametrize("suffix", ["png", "webp", "tiff"])
def test_mode_rgba_on_white(tmp_path, suffix):
    image = Image.new("RGBA", (30, 10), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (10, 0, 20, 10))
    image.paste((255, 0, 0, 128), (20, 0, 30, 10))
    path = tmp_path / f"alpha.{suffix}"
    image.save(path, **({"lossless": True} if suffix == "webp" else {}))

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.getpixel((5, 5)) == (255, 0, 0)
    # Fully transparent black must come out white, not black.
    assert picture.image.getpixel((15, 5)) == WHITE
    # Half-transparent red over white is pink, so red stays full while green and blue halve.
    assert_close(picture.image.getpixel((25, 5)), (255, 127, 127), tolerance=2)


@pytest.mark.parametrize("suffix", ["jpg", "tiff"])
def test_mode_cmyk(tmp_path, suffix):
    path = tmp_path / f"print.{suffix}"
    two_tone("CMYK", (255, 0, 0, 0), (0, 0, 0, 255), (32, 16)).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == "CMYK"

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert_close(picture.image.getpixel((4, 8)), (0, 255, 255), tolerance=8)  # cyan
    assert_close(picture.image.getpixel((28, 8)), BLACK, tolerance=8)


def test_mode_16_bit_grey(tmp_path):
    path = tmp_path / "deep.png"
    samples = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(samples).save(path)
    with Image.open(path) as reopened:
        assert reopened.mode.startswith("I")

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.getpixel((0, 0)) == BLACK
    # Clipping at 255 would turn mid-grey white.
    assert_close(picture.image.getpixel((1, 0)), (128, 128, 128), tolerance=1)
    assert picture.image.getpixel((2, 0)) == WHITE


def test_mode_bilevel(tmp_path):
    path = tmp_path / "fax.png"
    two_tone("1", 1, 0, (16, 8)).save(path)

    picture = open_picture(path)

    assert picture.image.mode == "RGB"
    assert picture.image.getpixel((2, 4)) == WHITE
    assert picture.image.getpixel((12, 4)) == BLACK


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L", "1", "CMYK", "I;16", "I", "F"])
def test_to_rgb_modes(mode):
    image = Image.new(mode, (4, 4))

    converted = to_rgb(image)

    assert converted.mode == "RGB"
    assert converted.size == (4, 4)


@pytest.fixture(scope="module")
def large_jpeg(tmp_path_factory) -> Path:
    """A 4000x3000 JPEG, the size of a 12 MP camera photo, with smooth colour gradients."""
    path = tmp_path_factory.mktemp("large") / "large.jpg"
    x = np.arange(4000) * 255 // 3999
    y = np.arange(3000) * 255 // 2999
    pixels = np.empty((3000, 4000, 3), dtype=np.uint8)
    pixels[..., 0] = x[np.newaxis, :]
    pixels[..., 1] = y[:, np.newaxis]
    pixels[..., 2] = (x[np.newaxis, :] + y[:, np.newaxis]) // 2
    Image.fromarray(pixels).save(path, quality=85)
    return path


def test_draft_reduces_large_jpeg(large_jpeg):
    picture = open_picture(large_jpeg, draft_size=224)

    assert (picture.width, picture.height) == (4000, 3000)
    assert min(picture.image.size) >= 224
    assert picture.image.size[0] < 4000
    assert picture.image.size[0] * 3 == picture.image.size[1] * 4


def test_draft_faster(large_jpeg):
    # Best of three, so that a busy machine slows neither side by chance.
    full = min(_seconds(lambda: open_picture(large_jpeg)) for _ in range(3))
    draft = min(_seconds(lambda: open_picture(large_jpeg, draft_size=224)) for _ in range(3))

    assert draft < full / 2, f"draft decode took {draft:.3f} s, full decode {full:.3f} s"


def test_draft_keeps_shorter_side(large_jpeg):
    # Quartering would leave a shorter side of 750 pixels, so only halving is allowed.
    picture = open_picture(large_jpeg, draft_size=1000)

    assert picture.image.size == (2000, 1500)
    assert (picture.width, picture.height) == (4000, 3000)


def test_draft_with_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (2000, 1000), RED).save(path, exif=exif.tobytes())

    picture = open_picture(path, draft_size=200)

    assert (picture.width, picture.height) == (1000, 2000)
    # Reduced by 4, not 8, so that the shorter side stays at least 200 pixels.
    assert picture.image.size == (250, 500)


def test_draft_ignores_other_formats(tmp_path):
    path = tmp_path / "large.png"
    Image.new("RGB", (1000, 800), RED).save(path)

    picture = open_picture(path, draft_size=100)

    assert picture.image.size == (1000, 800)


def test_megapixel_limit_message(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (2000, 1000), RED).save(path)

    with pytest.raises(ImageError) as caught:
        open_picture(path, max_megapixels=1.5)

    message = str(caught.value)
    assert str(path) in message
    assert "2000x1000 is 2.0 megapixels" in message
    assert "limit of 1.5" in message
    assert "--max-megapixels" in message


def test_megapixel_limit_just_over(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (1200, 1000), RED).save(path)

    with pytest.raises(ImageError) as caught:
        open_picture(path, max_megapixels=1)

    assert caught.value.reason == "1200x1000 is 1.2 megapixels, over the limit of 1; raise --max-megapixels to read it"


def test_default_megapixel_limit():
    assert DEFAULT_MAX_MEGAPIXELS >= 100


def test_error_missing_file(tmp_path):
    path = tmp_path / "gone.jpg"

    with pytest.raises(ImageError) as caught:
        open_picture(path)

    assert caught.value.path == path
    assert caught.value.reason == "file not found"
    assert str(caught.value) == f"{path}: file not found"


def test_error_folder(tmp_path):
    with pytest.raises(ImageError) as caught:
        open_picture(tmp_path)

    assert str(tmp_path) in str(caught.value)
    assert "folder" in caught.value.reason


def test_error_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("shopping list\n")

    with pytest.raises(ImageError) as caught:
        open_picture(path)

    assert str(caught.value) == f"{path}: not an image Pillow can read"


def test_error_truncated(tmp_path):
    path = tmp_path / "cut.jpg"
    quadrants((256, 256)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:1500])

    with pytest.raises(ImageError) as caught:
        open_picture(path)

    assert str(caught.value).startswith(f"{path}: ")
    assert "truncated" in caught.value.reason


def test_error_names_path_with_data(tmp_path):
    # With the bytes given, the path only names the file in messages.
    with pytest.raises(ImageError) as caught:
        open_picture(tmp_path / "in memory.jpg", data=b"\xff\xd8\xff\xe0 not really")

    assert str(caught.value).startswith(f"{tmp_path / 'in memory.jpg'}: ")


def test_data_matches_file(tmp_path):
    path = tmp_path / "photo.png"
    quadrants().save(path)

    from_file = open_picture(path)
    from_data = open_picture(path, data=path.read_bytes())

    assert np.array_equal(np.asarray(from_file.image), np.asarray(from_data.image))
    assert (from_data.width, from_data.height, from_data.format) == (64, 48, "PNG")


def _seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started
