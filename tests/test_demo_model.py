"""Quality of the bundled demo model, its tokenizer and the sample_images folder.

Every picture here is drawn fresh from seeds that training never uses
(training seeds derive from searchclip.demo.train.SEED, 20240611), so the
scores are on pictures the model has not seen.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searchclip.demo.shapes import (
    BACKGROUND_LABEL,
    LABELS,
    draw_object,
    draw_scene,
    split_label,
)
from searchclip.images import open_picture
from searchclip.model import DEFAULT_TEMPLATES, DEMO_MODEL_DIR, load_model

SAMPLE_IMAGES = Path(__file__).resolve().parent.parent / "sample_images"
MAX_FOLDER_BYTES = 5 * 1024 * 1024
# Pictures per label in the test collection: 7 x 32 = 224 pictures.
PER_LABEL = 7
TEST_SEED = 424242


@pytest.fixture(scope="module")
def model():
    return load_model("demo", device="cpu")


@pytest.fixture(scope="module")
def label_features(model):
    return model.embed_labels(LABELS, DEFAULT_TEMPLATES)


@pytest.fixture(scope="module")
def collection(model):
    """Pictures drawn as in training, their label indices and their embeddings."""
    rng = np.random.default_rng(TEST_SEED)
    truth = np.repeat(np.arange(len(LABELS)), PER_LABEL)
    pictures = [draw_object(rng, *split_label(LABELS[i]), size=int(rng.integers(64, 257))) for i in truth]
    return truth, model.embed_images(pictures)


# -- files ---------------------------------------------------------------------------


def test_model_folder_files():
    names = {path.name for path in DEMO_MODEL_DIR.iterdir()}
    for required in ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert required in names, f"{required} is missing from {DEMO_MODEL_DIR}"
    assert "pytorch_model.bin" not in names


def test_model_folder_size():
    total = sum(path.stat().st_size for path in DEMO_MODEL_DIR.iterdir() if path.is_file())
    assert total <= MAX_FOLDER_BYTES, f"{DEMO_MODEL_DIR} holds {total} bytes"


def test_preprocessor_config_is_clip_form():
    config = json.loads((DEMO_MODEL_DIR / "preprocessor_config.json").read_text())
    assert config["size"] == {"shortest_edge": 64}
    assert config["crop_size"] == {"height": 64, "width": 64}
    assert config["resample"] == 3  # bicubic
    assert config["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert config["image_std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])


# -- tokenizer -----------------------------------------------------------------------

TOKENIZER_TEXTS = (
    "a red circle",
    "A Photo of a RED Circle.",
    "a xylophone next to a zebra",
    "ein gelber Stern über dem Würfel",
    "красный круг",
    "赤い丸",
    "a red circle 🔴 and 42 stars!",
    "",
)


def test_vocabulary_holds_byte_alphabet():
    vocab = json.loads((DEMO_MODEL_DIR / "vocab.json").read_text(encoding="utf-8"))
    single = [token for token in vocab if len(token) == 1]
    ending = [token for token in vocab if len(token) == 5 and token.endswith("</w>")]
    assert len(single) == 256
    assert len(ending) == 256
    assert "red</w>" in vocab
    assert "circle</w>" in vocab


def test_merges_file_format():
    lines = (DEMO_MODEL_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version")
    assert all(len(line.split(" ")) == 2 for line in lines[1:])


def test_tokenizer_classes_agree():
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    slow = CLIPTokenizer.from_pretrained(DEMO_MODEL_DIR)
    fast = CLIPTokenizerFast.from_pretrained(DEMO_MODEL_DIR)
    for text in TOKENIZER_TEXTS:
        assert slow(text)["input_ids"] == fast(text)["input_ids"], text


def test_tokenizer_out_of_vocabulary_text():
    from transformers import CLIPTokenizerFast

    tokenizer = CLIPTokenizerFast.from_pretrained(DEMO_MODEL_DIR)
    for text in TOKENIZER_TEXTS:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id, text
        assert ids[-1] == tokenizer.eos_token_id, text
        # The unknown token is the end token, so it must appear only at the end.
        assert tokenizer.eos_token_id not in ids[1:-1], text
        assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", ""), text


def test_tokenizer_caption_words_are_single_tokens():
    from transformers import CLIPTokenizerFast

    tokenizer = CLIPTokenizerFast.from_pretrained(DEMO_MODEL_DIR)
    assert len(tokenizer("a red circle")["input_ids"]) == 5


def test_long_text_is_truncated(model):
    features = model.embed_texts(["a red circle " * 40])
    assert features.shape == (1, model.dimension)
    assert np.isfinite(features).all()


# -- quality bars --------------------------------------------------------------------


def test_zero_shot_accuracy(collection, label_features):
    """Top-1 accuracy over the 32 labels, with the default prompt templates, is at least 95 %."""
    truth, features = collection
    predicted = (features @ label_features.T).argmax(axis=1)
    accuracy = float(np.mean(predicted == truth))
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}"


def test_text_to_image_recall_at_5(model, collection):
    """Mean recall@5 of "a {colour} {shape}" queries over 224 pictures is at least 0.9.

    Recall@5 of one query is the number of its label's pictures among the 5
    best-scoring pictures, divided by min(5, pictures of that label), which is
    5 here because every label has 7 pictures.
    """
    truth, features = collection
    queries = model.embed_texts([f"a {label}" for label in LABELS])
    recalls = []
    for index, query in enumerate(queries):
        top = np.argsort(-(features @ query))[:5]
        relevant = int(np.sum(truth == index))
        recalls.append(np.sum(truth[top] == index) / min(5, relevant))
    recall = float(np.mean(recalls))
    assert recall >= 0.9, f"recall@5 {recall:.3f}"


def test_image_to_image_nearest_neighbour(collection):
    """For at least 90 % of pictures, the nearest other picture shows the same colour and shape."""
    truth, features = collection
    similarity = features @ features.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = similarity.argmax(axis=1)
    share = float(np.mean(truth[nearest] == truth))
    assert share >= 0.9, f"same-label nearest neighbour for {share:.3f}"


def test_robustness_to_held_out_variations(model, label_features):
    """Accuracy is at least 85 % on pictures with held-out variations.

    Held out from training: background colours (lavender, mint, peach, tan,
    slate) and background textures (stripes, checkerboard, dots); see
    `searchclip.demo.shapes.HELD_OUT_BACKGROUND_COLOURS` and `HELD_OUT_TEXTURES`.
    """
    rng = np.random.default_rng(TEST_SEED + 1)
    truth = np.repeat(np.arange(len(LABELS)), PER_LABEL)
    pictures = [draw_object(rng, *split_label(LABELS[i]), size=int(rng.integers(64, 257)), held_out=True) for i in truth]
    predicted = (model.embed_images(pictures) @ label_features.T).argmax(axis=1)
    accuracy = float(np.mean(predicted == truth))
    assert accuracy >= 0.85, f"accuracy {accuracy:.3f}"


# -- crops of scenes, as the localisation code cuts them --------------------------------------


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(TEST_SEED + 2)
    return [draw_scene(rng, size=(320, 256)) for _ in range(40)]


def test_tight_scene_crops_are_classified(model, scenes):
    """Square windows with 10 % margin around scene objects are classified at least 90 % right."""
    label_features = model.embed_labels([*LABELS, BACKGROUND_LABEL], DEFAULT_TEMPLATES)
    crops, truth = [], []
    for image, objects in scenes:
        for item in objects:
            crops.append(image.crop(_square_around(item.box, 1.1, image.size)))
            truth.append(LABELS.index(item.label))
    predicted = (model.embed_images(crops) @ label_features.T).argmax(axis=1)
    accuracy = float(np.mean(predicted == np.asarray(truth)))
    assert len(crops) >= 80
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} on {len(crops)} crops"


def test_background_crops_score_background_prompt(model, scenes):
    """On windows without objects, the background label beats all 32 labels at least 90 % of the time."""
    label_features = model.embed_labels([*LABELS, BACKGROUND_LABEL], DEFAULT_TEMPLATES)
    rng = np.random.default_rng(TEST_SEED + 3)
    crops = []
    for image, objects in scenes:
        window = _empty_window(rng, [item.box for item in objects], image.size)
        if window is not None:
            crops.append(image.crop(window))
    predicted = (model.embed_images(crops) @ label_features.T).argmax(axis=1)
    share = float(np.mean(predicted == len(LABELS)))
    assert len(crops) >= 30
    assert share >= 0.9, f"background wins on {share:.3f} of {len(crops)} crops"


def _square_around(box, margin: float, size) -> tuple[int, int, int, int]:
    """Return a square window `margin` times the box's longer side, centred on it and kept inside the scene."""
    x0, y0, x1, y1 = box
    side = min(int(round(max(x1 - x0, y1 - y0) * margin)), *size)
    left = min(max(0, (x0 + x1 - side) // 2), size[0] - side)
    top = min(max(0, (y0 + y1 - side) // 2), size[1] - side)
    return (left, top, left + side, top + side)


def _empty_window(rng, boxes, size, gap: int = 4):
    for _ in range(50):
        side = int(rng.integers(48, 97))
        left = int(rng.integers(0, size[0] - side + 1))
        top = int(rng.integers(0, size[1] - side + 1))
        window = (left - gap, top - gap, left + side + gap, top + side + gap)
        if not any(b[0] < window[2] and window[0] < b[2] and b[1] < window[3] and window[1] < b[3] for b in boxes):
            return (left, top, left + side, top + side)
    return None


# -- sample_images -------------------------------------------------------------------


def _sample_files() -> list[Path]:
    return sorted(path for path in SAMPLE_IMAGES.rglob("*") if path.is_file())


def test_sample_images_exist():
    files = _sample_files()
    assert 20 <= len(files) <= 30, f"{len(files)} files"
    total = sum(path.stat().st_size for path in files)
    assert total < MAX_FOLDER_BYTES, f"{total} bytes"


def test_sample_images_formats():
    formats = Counter(Image.open(path).format for path in _sample_files())
    for expected in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"):
        assert formats[expected] >= 1, f"no {expected} file in {SAMPLE_IMAGES}"


def test_sample_images_subfolders():
    nested = [path for path in _sample_files() if path.parent != SAMPLE_IMAGES]
    assert len(nested) >= 3
    assert any(path.parent.name == "scenes" for path in nested)


def test_sample_images_exif_orientation():
    """The EXIF sample is stored turned; applying its tag shows the object at the left."""
    path = SAMPLE_IMAGES / "blue_star_exif_rotated.jpg"
    with Image.open(path) as raw:
        assert raw.getexif().get(0x0112) == 6
        stored_width, stored_height = raw.size
    picture = open_picture(path)
    assert picture.image.size == (stored_height, stored_width)
    assert picture.image.width > picture.image.height

    # Upright, the blue object lies in the left two thirds and the right third is empty.
    pixels = np.asarray(picture.image, dtype=np.int32)
    blue = (pixels[..., 2] - pixels[..., 0]) > 100
    split = picture.image.width * 2 // 3
    assert blue[:, :split].sum() > 500
    assert blue[:, split:].sum() <= 0.01 * blue[:, :split].sum()


def test_sample_images_red_circles_first(model):
    """For "a red circle", every red-circle picture ranks above every picture without one.

    Scenes that contain a red circle among other objects may rank anywhere.
    """
    files = _sample_files()
    features = model.embed_images([open_picture(path).image for path in files])
    query = model.embed_texts(["a red circle"])[0]
    ranked = [files[i] for i in np.argsort(-(features @ query))]

    red_circles = [path for path in ranked if path.name.startswith("red_circle") and path.parent.name != "scenes"]
    others = [path for path in ranked if "red_circle" not in path.name]
    assert len(red_circles) >= 3
    worst_red = max(ranked.index(path) for path in red_circles)
    best_other = min(ranked.index(path) for path in others)
    assert worst_red < best_other, [path.name for path in ranked[:6]]


def test_sample_images_labelled_by_name(model):
    """Zero-shot labels match the colour and shape in the file name for at least 90 % of single-object samples."""
    label_features = model.embed_labels(LABELS, DEFAULT_TEMPLATES)
    files = [path for path in _sample_files() if path.parent.name != "scenes"]
    features = model.embed_images([open_picture(path).image for path in files])
    predicted = [LABELS[i] for i in (features @ label_features.T).argmax(axis=1)]
    expected = [" ".join(path.stem.split("_")[:2]) for path in files]
    right = sum(p == e for p, e in zip(predicted, expected))
    assert right >= 0.9 * len(files), list(zip(expected, predicted))
