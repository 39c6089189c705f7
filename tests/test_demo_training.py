"""The training script of the demo model and the examples it trains on."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from searchclip.demo import dataset
from searchclip.demo.dataset import BACKGROUND_CLASS, make_examples
from searchclip.demo.shapes import draw_scene
from searchclip.model import DEMO_MODEL_DIR, load_model


def test_short_training_run_writes_loadable_model(tmp_path):
    """A run of a few steps writes a folder that loads as any CLIP folder does."""
    output = tmp_path / "model"
    result = subprocess.run(
        [sys.executable, "-m", "searchclip.demo.train", "--output", str(output), "--steps", "3", "--examples", "96"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert result.returncode == 0, result.stderr[-2000:]

    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"):
        assert (output / name).is_file(), name
    model = load_model(str(output), device="cpu")
    features = model.embed_texts(["a red circle"])
    assert features.shape == (1, model.dimension)
    assert np.isclose(np.linalg.norm(features), 1.0, atol=1e-5)


def test_training_tokenizer_matches_committed(tmp_path):
    """The script learns exactly the committed vocabulary and merges."""
    from searchclip.demo.tokenizer import build_tokenizer, save_tokenizer
    from searchclip.demo.train import CONTEXT_LENGTH

    tokenizer = build_tokenizer(tmp_path, dataset.caption_corpus(), CONTEXT_LENGTH)
    save_tokenizer(tokenizer, tmp_path)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (DEMO_MODEL_DIR / name).read_bytes(), name


def test_examples_are_deterministic():
    first = make_examples(11, 40, 64, 16)
    second = make_examples(11, 40, 64, 16)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_examples_include_background():
    _, patch_classes, examples = make_examples(12, 300, 64, 16)
    background = [i for i, example in enumerate(examples) if example.class_index == BACKGROUND_CLASS]
    assert 0.1 * len(examples) <= len(background) <= 0.4 * len(examples)
    objects = [i for i, example in enumerate(examples) if example.class_index != BACKGROUND_CLASS]
    # Every object example has at least one patch of its own class.
    for i in objects:
        assert (patch_classes[i] == examples[i].class_index).any(), i


def test_part_window_cuts_through_object():
    rng = np.random.default_rng(13)
    found = 0
    for _ in range(30):
        image, objects = draw_scene(rng, size=(320, 256))
        boxes = [item.box for item in objects]
        window = dataset._part_window(rng, boxes, 0, image.size)
        if window is None:
            continue
        found += 1
        assert window[2] - window[0] == window[3] - window[1]
        assert window[0] >= 0
        assert window[1] >= 0
        assert window[2] <= image.width
        assert window[3] <= image.height
        inside = dataset._inside_fraction(boxes[0], window)
        assert dataset.MAX_SLIVER < inside <= dataset.MAX_PART
        for box in boxes[1:]:
            assert dataset._inside_fraction(box, window) <= dataset.MAX_SLIVER
    assert found >= 20
