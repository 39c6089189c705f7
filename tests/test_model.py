"""Model loading, preprocessing parity with CLIPProcessor, and hub failures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from conftest import run_searchclip
from searchclip.errors import ModelError
from searchclip.images import open_picture
from searchclip.model import load_model

# Largest allowed difference between searchclip's embedding of a file and
# the one from CLIPProcessor + CLIPModel.get_image_features on the same file,
# as 1 - cosine similarity. Full decodes match to float rounding; JPEG draft
# decoding of large photos moves embeddings by well under this.
PARITY_TOLERANCE = 2e-3
EXACT_TOLERANCE = 1e-5


def photo_like(size: tuple[int, int], seed: int) -> Image.Image:
    """A picture with gradients, shapes and noise, so resampling differences show."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    pixels = np.stack([255 * x * np.ones_like(y), 255 * y * np.ones_like(x), 128 + 100 * np.sin(8 * x + 5 * y)], axis=-1)
    pixels += rng.normal(0, 12, pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - width // 5)), int(rng.integers(0, height - height // 5))
        x1, y1 = x0 + int(rng.integers(width // 20, width // 5)), y0 + int(rng.integers(height // 20, height // 5))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image.filter(ImageFilter.GaussianBlur(1))


def reference_embedding(model, image: Image.Image) -> np.ndarray:
    inputs = model.processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        output = model.model.get_image_features(pixel_values=inputs["pixel_values"])
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    features = features[0].numpy()
    return features / np.linalg.norm(features)


def model_names(tiny_model: str) -> list[str]:
    return [tiny_model, "demo"]


@pytest.mark.parametrize("size", [(640, 480), (333, 500), (4000, 3000)])
def test_embeddings_match_clip_processor(tmp_path, tiny_model, size):
    path = tmp_path / "photo.jpg"
    photo_like(size, seed=size[0]).save(path, quality=92)
    for name in model_names(tiny_model):
        model = load_model(name)
        with Image.open(path) as original:
            expected = reference_embedding(model, original.convert("RGB"))
        full = model.embed_images([open_picture(path).image])[0]
        assert 1 - float(full @ expected) < EXACT_TOLERANCE, name

        drafted = open_picture(path, draft_size=model.draft_size)
        fast = model.embed_images([drafted.image])[0]
        assert 1 - float(fast @ expected) < PARITY_TOLERANCE, name
        assert (drafted.width, drafted.height) == size


def test_png_matches_clip_processor(tmp_path, tiny_model):
    path = tmp_path / "photo.png"
    photo_like((500, 300), seed=3).save(path)
    model = load_model(tiny_model)
    with Image.open(path) as original:
        expected = reference_embedding(model, original.convert("RGB"))
    got = model.embed_images([open_picture(path, draft_size=model.draft_size).image])[0]
    assert 1 - float(got @ expected) < EXACT_TOLERANCE


def test_uncached_model_fails_fast():
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        load_model("someone/not-a-cached-clip-model")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "someone/not-a-cached-clip-model" in message
    assert "could not be downloaded" in message
    assert "--model demo" in message


def test_uncached_model_cli_message(tmp_path, photos):
    # Without HF_HUB_OFFLINE, the reachability probe meets a closed local port.
    started = time.monotonic()
    result = run_searchclip("index", str(photos), "--index", str(tmp_path / "i"), env={"HF_HUB_OFFLINE": ""})
    assert result.returncode == 1
    assert "openai/clip-vit-base-patch32" in result.stderr
    assert "could not be downloaded" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # "index: ..." and the error
    assert time.monotonic() - started < 30  # most of it is importing torch


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a CLIP model folder"):
        load_model(str(tmp_path / "empty"))


def test_texts_embed_to_unit_vectors(tiny_model):
    model = load_model(tiny_model)
    vectors = model.embed_texts(["a red circle", "naïve café ☕", "x" * 500])
    assert vectors.shape == (3, model.dimension)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_fingerprint_changes_with_weights(tmp_path, tiny_model):
    from tiny_model import build_tiny_clip

    other = build_tiny_clip(tmp_path / "other", seed=1)
    assert load_model(tiny_model).fingerprint != load_model(str(other)).fingerprint
    assert load_model(tiny_model).fingerprint == load_model(tiny_model).fingerprint


def test_extreme_aspect_ratio_stays_small(tiny_model):
    model = load_model(tiny_model)
    for size in ((200_000, 1), (2, 90_000)):
        pixels = model.preprocess(Image.new("RGB", size, (200, 10, 10)))
        assert pixels.shape == (3, 32, 32)
