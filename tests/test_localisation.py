"""Localisation and detection with the bundled demo model on generated scenes of shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from searchclip import localisation
from searchclip.demo import shapes
from searchclip.drawing import render_detections, render_heatmap
from searchclip.errors import ImageError, SearchclipError, UsageError
from searchclip.localisation import Detection, WindowSettings, box_iou, count_crops, detect, explain, locate
from searchclip.model import load_model

# The demo model is trained on scenes drawn from another seed, so these are
# scenes it has never seen.
SCENE_SEED = 7_031_977
LOCATE_SCENES = 40
DETECT_SCENES = 30
DISTRACTORS = 5
IOU_MATCH = 0.5



@pytest.fixture(scope="module")
def model():
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_model("demo", "cpu")


@pytest.fixture(scope="module")
def scene():
    return shapes.draw_scene(np.random.default_rng(SCENE_SEED), labels=["red circle", "blue square"])


def test_locate_hits_queried_object(model):
    rng = np.random.default_rng(SCENE_SEED)
    ious = []
    for _ in range(LOCATE_SCENES):
        image, objects = shapes.draw_scene(rng)
        target = objects[int(rng.integers(len(objects)))]
        result = locate(model, image, f"a {target.colour} {target.shape}")
        ious.append(box_iou(result.box, target.box))
    hit_rate = float(np.mean(np.array(ious) >= IOU_MATCH))
    assert hit_rate >= 0.9, f"IoU >= {IOU_MATCH} in {hit_rate:.0%} of scenes; IoUs {np.round(ious, 2).tolist()}"


def test_detect_precision_and_recall(model):
    rng = np.random.default_rng(SCENE_SEED + 1)
    true_positives = false_positives = false_negatives = 0
    for _ in range(DETECT_SCENES):
        image, objects = shapes.draw_scene(rng)
        present = [item.label for item in objects]
        absent = [label for label in shapes.LABELS if label not in present]
        labels = present + [str(label) for label in rng.choice(absent, DISTRACTORS, replace=False)]
        rng.shuffle(labels)

        matched: set[int] = set()
        for detection in detect(model, image, labels):
            index = _matching_object(detection, objects, matched)
            if index is None:
                false_positives += 1
            else:
                matched.add(index)
                true_positives += 1
        false_negatives += len(objects) - len(matched)

    precision = true_positives / max(1, true_positives + false_positives)
    recall = true_positives / max(1, true_positives + false_negatives)
    counts = f"{true_positives} true, {false_positives} false positives, {false_negatives} missed"
    assert precision >= 0.8, counts
    assert recall >= 0.8, counts


def test_locate_large_single_objects(model):
    """Objects that fill most of the picture get a box around all of them, not around a tip."""
    rng = np.random.default_rng(SCENE_SEED + 2)
    ious = []
    for index in range(32):
        colour, shape = shapes.split_label(shapes.LABELS[index])
        picture = shapes.draw_object_picture(rng, colour, shape, size=int(rng.integers(96, 300)))
        ious.append(box_iou(locate(model, picture.image, f"a {colour} {shape}").box, picture.item.box))
    hit_rate = float(np.mean(np.array(ious) >= IOU_MATCH))
    assert hit_rate >= 0.7, f"IoU >= {IOU_MATCH} in {hit_rate:.0%} of pictures; IoUs {np.round(ious, 2).tolist()}"


def test_detect_large_object_in_wide_picture(model):
    rng = np.random.default_rng(SCENE_SEED + 3)
    background = shapes.Background("gray", "plain")
    canvas = shapes.draw_background(rng, (400, 200), background)
    picture = shapes.draw_object_picture(rng, "red", "circle", size=200, background=background)
    canvas.paste(picture.image, (120, 0))
    x0, y0, x1, y1 = picture.item.box
    truth = (x0 + 120, y0, x1 + 120, y1)

    found = [d for d in detect(model, canvas, ["red circle", "blue square"]) if d.label == "red circle"]
    assert found, "the red circle was not detected"
    assert box_iou(found[0].box, truth) >= IOU_MATCH, (found[0].box, truth)


def test_sixteen_bit_image_scaled(model, scene):
    """A 16-bit grey PIL image is scaled to 8 bits as a file would be, not clipped to white."""
    image, objects = scene
    grey = image.convert("L")
    deep = Image.frombytes("I;16", grey.size, (np.asarray(grey, dtype="<u2") * 257).tobytes())
    assert deep.mode == "I;16"
    converted = localisation.load_image(deep)
    assert converted.mode == "RGB"
    assert converted.getextrema() == grey.convert("RGB").getextrema()


def test_detect_ignores_absent_labels(model, scene):
    image, _ = scene
    assert detect(model, image, ["green star", "yellow triangle"]) == []


def test_locate_result_in_picture_coordinates(model, scene):
    image, objects = scene
    result = locate(model, image, "a blue square")
    rows, columns = result.heatmap.shape
    assert result.picture_size == image.size
    assert result.heatmap.dtype == np.float32
    assert (rows, columns) == WindowSettings().grid_shape(*image.size)
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= image.width
    assert 0 <= y0 < y1 <= image.height
    assert -1.0 <= result.score <= 1.0


def test_locate_applies_exif_orientation(model, scene, tmp_path):
    image, objects = scene
    target = objects[0]
    # Orientation 6 means the stored pixels must turn 90 degrees clockwise to
    # be upright, so the stored pixels are the upright scene turned the other way.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)

    result = locate(model, path, f"a {target.colour} {target.shape}")
    assert result.picture_size == image.size
    assert box_iou(result.box, target.box) >= IOU_MATCH


def test_detect_boxes_clipped_to_picture(model):
    # Objects touching the picture edge give windows pinned to that edge.
    image, objects = shapes.draw_scene(np.random.default_rng(SCENE_SEED + 2), size=(256, 256), count=3)
    for detection in detect(model, image, list(shapes.LABELS), min_score=0.0):
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 < x1 <= image.width
        assert 0 <= y0 < y1 <= image.height
        assert 0.0 <= detection.score <= 1.0


def test_crops_embedded_in_batches(model, scene, monkeypatch):
    image, _ = scene
    batch_sizes = []
    embed_pixels = model.embed_pixels

    def counting(pixels):
        batch_sizes.append(len(pixels))
        return embed_pixels(pixels)

    monkeypatch.setattr(model, "embed_pixels", counting)
    settings = WindowSettings(grid=6, window_sizes=(2, 3), stride=1)
    locate(model, image, "a red circle", settings=settings, batch_size=16)

    picture_windows = settings.count_windows(*image.size)
    region_windows = localisation.REFINE_SETTINGS.count_windows(96, 96)
    assert sum(batch_sizes) == count_crops(*image.size, settings)
    # Batches of 16 for the picture's windows, then for the refinement
    # region's windows, then one crop for the final box, which both checks
    # the refined box and gives the score.
    assert len(batch_sizes) == math.ceil(picture_windows / 16) + math.ceil(region_windows / 16) + 1
    assert max(batch_sizes) == 16


def test_count_crops_counts_windows():
    settings = WindowSettings(grid=8, window_sizes=(2, 3, 4, 5))
    # An 8 x 10 grid fits windows of 2, 3, 4 and 5 cells 7x9, 6x8, 5x7 and
    # 4x6 times. Refinement has its own layout: windows of 2 to 12 cells on
    # a 12 x 12 grid fit 11x11, 10x10, ... 1x1 times.
    assert settings.grid_shape(320, 256) == (8, 10)
    assert count_crops(320, 256, settings, refine=False) == 63 + 48 + 35 + 24 + 1
    refinement = sum(side * side for side in range(1, 12))
    assert count_crops(320, 256, settings) == 63 + 48 + 35 + 24 + refinement + 1


def test_grid_shape_follows_orientation():
    settings = WindowSettings(grid=4, window_sizes=(1, 2))
    assert settings.grid_shape(400, 200) == (4, 8)
    assert settings.grid_shape(200, 400) == (8, 4)
    assert settings.grid_shape(300, 300) == (4, 4)


def test_stride_keeps_edge_windows():
    settings = WindowSettings(grid=5, window_sizes=(2,), stride=2)
    # Starts 0, 2 and the pinned 3 along both axes.
    assert settings.count_windows(100, 100) == 9


def test_render_heatmap_keeps_picture_size(model, scene):
    image, _ = scene
    result = locate(model, image, "a red circle")
    rendered = render_heatmap(image, result.heatmap, result.box)
    assert rendered.size == image.size
    assert rendered.mode == "RGB"


def test_render_detections_keeps_picture_size(scene):
    image, objects = scene
    detections = [Detection(item.label, item.box, 0.9) for item in objects]
    rendered = render_detections(image, detections)
    assert rendered.size == image.size
    assert np.asarray(rendered).tobytes() != np.asarray(image).tobytes()


def test_explain_writes_heatmap_for_picture_query(model, scene, tmp_path):
    image, objects = scene
    x0, y0, x1, y1 = objects[0].box
    query = model.embed_images([image.crop((x0 - 10, y0 - 10, x1 + 10, y1 + 10))])[0]
    out_path = tmp_path / "explained.png"

    result = explain(model, image, query, out_path)
    with Image.open(out_path) as written:
        assert written.size == image.size
    assert box_iou(result.box, objects[0].box) > 0.0


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "text",
    ["", "   "],
)
def test_locate_rejects_empty_text(model, scene, text):
    with pytest.raises(UsageError, match="empty text"):
        locate(model, scene[0], text)


def test_detect_rejects_empty_label_list(model, scene):
    with pytest.raises(UsageError, match="no labels"):
        detect(model, scene[0], [])


def test_detect_rejects_blank_label(model, scene):
    with pytest.raises(UsageError, match="empty label"):
        detect(model, scene[0], ["red circle", " "])


def test_window_larger_than_picture_rejected():
    with pytest.raises(UsageError, match="larger than the picture"):
        WindowSettings(grid=4, window_sizes=(2, 5))


def test_picture_smaller_than_grid_rejected(model):
    with pytest.raises(UsageError, match="smaller than the grid"):
        locate(model, Image.new("RGB", (6, 40)), "a red circle")


def test_unreadable_picture_rejected(model, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(ImageError, match="notes.jpg"):
        locate(model, path, "a red circle")


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"threshold": 0.0}, "threshold"),
        ({"min_score": 1.5}, "minimum score"),
    ],
)
def test_detect_rejects_invalid_numbers(model, scene, arguments, message):
    with pytest.raises(UsageError, match=message):
        detect(model, scene[0], ["red circle"], **arguments)


def test_query_of_other_dimension_rejected(model, scene):
    with pytest.raises(SearchclipError, match="dimensions"):
        localisation.locate_embedding(model, scene[0], np.ones(model.dimension + 1, np.float32))


def _matching_object(detection: Detection, objects, matched: set[int]) -> int | None:
    for index, item in enumerate(objects):
        if index not in matched and item.label == detection.label and box_iou(item.box, detection.box) >= IOU_MATCH:
            return index
    return None


def test_other_clip_models_work(tiny_model, scene):
    """A CLIP of another input size and dimension runs the same code; its random results only need to be well formed."""
    other = load_model(tiny_model, "cpu")
    image, _ = scene
    result = locate(other, image, "a red circle")
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 < x1 <= image.width
    assert 0 <= y0 < y1 <= image.height
    assert -1.0 <= result.score <= 1.0
    for detection in detect(other, image, ["red circle", "blue square"], min_score=0.0):
        assert 0 <= detection.box[0] < detection.box[2] <= image.width
        assert 0 <= detection.box[1] < detection.box[3] <= image.height
