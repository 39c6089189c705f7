"""The generated shape pictures that the demo model and many tests rely on."""

from __future__ import annotations

import numpy as np
import pytest

from searchclip.demo.shapes import (
    BACKGROUND_COLOURS,
    COLOUR_RGB,
    COLOURS,
    HELD_OUT_BACKGROUND_COLOURS,
    HELD_OUT_TEXTURES,
    LABELS,
    MIN_CONTRAST,
    SCENE_GAP,
    SHAPES,
    TEXTURES,
    background_caption,
    caption,
    draw_object,
    draw_object_picture,
    draw_scene,
    draw_scene_picture,
    pick_background,
    split_label,
)


def test_labels_cover_colours_and_shapes():
    assert len(LABELS) == 32
    assert LABELS[0] == "red circle"
    assert {split_label(label) for label in LABELS} == {(c, s) for c in COLOURS for s in SHAPES}


def test_split_label_rejects_unknown():
    with pytest.raises(ValueError, match="unknown label"):
        split_label("pink circle")


def test_draw_object_is_deterministic():
    first = draw_object(np.random.default_rng(3), "red", "star")
    second = draw_object(np.random.default_rng(3), "red", "star")
    assert first.size == (128, 128)
    assert first.mode == "RGB"
    assert np.array_equal(np.asarray(first), np.asarray(second))


def test_draw_object_rejects_unknown_colour():
    with pytest.raises(ValueError, match="unknown colour"):
        draw_object(np.random.default_rng(0), "teal", "circle")


@pytest.mark.parametrize("label", LABELS)
def test_object_box_is_tight(label):
    picture = draw_object_picture(np.random.default_rng(5), *split_label(label), size=96)
    x0, y0, x1, y1 = picture.item.box
    covered = picture.mask > 0.02
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    assert (x0, y0, x1, y1) == (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    assert 0 <= x0 < x1 <= 96
    assert 0 <= y0 < y1 <= 96


def test_object_colour_contrasts_with_background():
    rng = np.random.default_rng(9)
    for label in LABELS * 3:
        colour, shape = split_label(label)
        picture = draw_object_picture(rng, colour, shape, size=64)
        distance = np.linalg.norm(np.subtract(COLOUR_RGB[colour], picture.background.rgb))
        assert distance >= MIN_CONTRAST, (label, picture.background)


def test_held_out_backgrounds():
    rng = np.random.default_rng(1)
    for _ in range(50):
        picture = draw_object_picture(rng, "red", "circle", held_out=True)
        assert picture.background.colour in HELD_OUT_BACKGROUND_COLOURS
        assert picture.background.texture in HELD_OUT_TEXTURES


def test_training_backgrounds():
    rng = np.random.default_rng(1)
    for _ in range(50):
        background = pick_background(rng)
        assert background.colour in BACKGROUND_COLOURS
        assert background.texture in TEXTURES


def test_held_out_palette_is_disjoint():
    assert not set(HELD_OUT_BACKGROUND_COLOURS) & set(BACKGROUND_COLOURS)
    assert not set(HELD_OUT_TEXTURES) & set(TEXTURES)


def test_scene_objects_do_not_overlap():
    rng = np.random.default_rng(2)
    for _ in range(30):
        image, objects = draw_scene(rng)
        assert image.size == (320, 256)
        assert 2 <= len(objects) <= 3
        assert len({item.label for item in objects}) == len(objects)
        for index, first in enumerate(objects):
            x0, y0, x1, y1 = first.box
            assert 0 <= x0 < x1 <= 320
            assert 0 <= y0 < y1 <= 256
            for second in objects[index + 1 :]:
                apart_x = first.box[2] + SCENE_GAP <= second.box[0] or second.box[2] + SCENE_GAP <= first.box[0]
                apart_y = first.box[3] + SCENE_GAP <= second.box[1] or second.box[3] + SCENE_GAP <= first.box[1]
                assert apart_x or apart_y, (first, second)


def test_scene_with_requested_labels():
    image, objects = draw_scene(np.random.default_rng(4), size=(400, 300), labels=["red circle", "blue star", "white square"])
    assert image.size == (400, 300)
    assert [item.label for item in objects] == ["red circle", "blue star", "white square"]


def test_scene_masks_match_boxes():
    scene = draw_scene_picture(np.random.default_rng(6), count=3)
    assert scene.masks.shape == (3, 256, 320)
    for item, mask in zip(scene.objects, scene.masks):
        x0, y0, x1, y1 = item.box
        inside = mask[y0:y1, x0:x1].sum()
        assert inside == pytest.approx(mask.sum())
        assert inside > 50


def test_scene_crop_shows_object_colour():
    image, objects = draw_scene(np.random.default_rng(8), labels=["red circle", "blue square"])
    red = np.asarray(image.crop(objects[0].box), dtype=np.int32)
    share = np.mean((red[..., 0] > 150) & (red[..., 1] < 90) & (red[..., 2] < 90))
    assert share > 0.6  # a circle fills pi/4 of its box


def test_scene_rejects_small_size():
    with pytest.raises(ValueError, match="too small"):
        draw_scene(np.random.default_rng(0), size=(100, 256))


def test_scene_rejects_count_mismatch():
    with pytest.raises(ValueError, match="differs"):
        draw_scene(np.random.default_rng(0), count=2, labels=["red circle"])


def test_captions_read_as_english():
    assert caption("red", "circle") == "a red circle"
    assert caption("orange", "star") == "an orange star"
    assert caption("blue", "star", size_word="small") == "a small blue star"
    assert caption("green", "square", background="gray") == "a green square on a gray background"
    assert background_caption("gray") == "a plain gray background"
    assert background_caption() == "a plain background"
