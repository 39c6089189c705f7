"""The `locate` and `detect` commands, run as a user runs them, with the demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from searchclip import cli_localisation
from searchclip.demo import shapes
from searchclip.localisation import box_iou

SCENE_SEED = 5_550_123



@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    cli_localisation.register(app)
    return app


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    image, objects = shapes.draw_scene(
        np.random.default_rng(SCENE_SEED), size=(320, 256), labels=["red circle", "blue star", "green square"]
    )
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    return path, objects


def run(app: typer.Typer, *arguments: str):
    return CliRunner().invoke(app, [str(argument) for argument in arguments])


def test_locate_prints_box_and_score(app, scene):
    path, objects = scene
    result = run(app, "locate", path, "a blue star", "--model", "demo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("box ")
    assert "score" in result.stdout


def test_locate_json(app, scene):
    path, objects = scene
    result = run(app, "locate", path, "a blue star", "--model", "demo", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["picture_size"] == [320, 256]
    assert record["map_size"] == [8, 10]
    assert box_iou(tuple(record["box"]), objects[1].box) >= 0.5
    assert -1.0 <= record["score"] <= 1.0


def test_locate_heatmap_has_picture_size(app, scene, tmp_path):
    path, _ = scene
    out_path = tmp_path / "map.png"
    result = run(app, "locate", path, "a red circle", "--model", "demo", "--device", "cpu", "--heatmap", out_path)
    assert result.exit_code == 0, result.output
    with Image.open(out_path) as written:
        assert written.size == (320, 256)


def test_detect_json_lines(app, scene):
    path, objects = scene
    labels = "red circle,blue star,green square,yellow triangle,purple circle"
    result = run(app, "detect", path, "--labels", labels, "--model", "demo", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    found = {record["label"] for record in records}
    assert found == {"red circle", "blue star", "green square"}
    for record in records:
        truth = next(item for item in objects if item.label == record["label"])
        assert box_iou(tuple(record["box"]), truth.box) >= 0.5


def test_detect_out_has_picture_size(app, scene, tmp_path):
    path, _ = scene
    out_path = tmp_path / "boxes.jpg"
    result = run(app, "detect", path, "--labels", "red circle,blue star", "--model", "demo", "--device", "cpu", "--out", out_path)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    with Image.open(out_path) as written:
        assert written.size == (320, 256)


def test_detect_says_when_nothing_found(app, scene):
    path, _ = scene
    result = run(app, "detect", path, "--labels", "purple triangle", "--model", "demo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "no box scored at least 0.5" in result.stderr


def test_detect_min_score_one_prints_nothing(app, scene):
    path, _ = scene
    result = run(app, "detect", path, "--labels", "red circle", "--model", "demo", "--device", "cpu", "--min-score", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""


def test_help_states_cost_and_units(app):
    for command in ("locate", "detect"):
        result = run(app, command, "--help")
        assert result.exit_code == 0
        text = " ".join(result.stdout.split())
        assert "crops" in text
        assert "in cells" in text


@pytest.mark.parametrize(
    "arguments, exit_code, message",
    [
        (["locate", "{missing}", "a red circle"], 1, "file not found"),
        (["locate", "{text_file}", "a red circle"], 1, "not an image"),
        (["locate", "{scene}", "  "], 2, "empty text"),
        (["locate", "{scene}", "a red circle", "--windows", "2,9"], 2, "larger than the picture"),
        (["locate", "{scene}", "a red circle", "--windows", "two"], 2, "--windows"),
        (["locate", "{scene}", "a red circle", "--heatmap", "{tmp}/map.unknown"], 2, "unknown image format"),
        (["detect", "{scene}", "--labels", ""], 2, "no labels"),
        (["detect", "{scene}", "--labels", "red circle,,blue star"], 2, "empty label"),
        (["detect", "{scene}", "--labels", "red circle", "--min-score", "2"], 2, "minimum score"),
        (["detect", "{scene}", "--labels", "red circle", "--out", "{tmp}/missing/boxes.png"], 2, "folder"),
        # The output path is checked before the picture is even read.
        (["locate", "{missing}", "a red circle", "--heatmap", "{tmp}/missing/map.png"], 2, "not found; create it"),
    ],
)
def test_user_errors_print_one_line(app, scene, tmp_path, arguments, exit_code, message):
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    values = {"missing": tmp_path / "missing.png", "text_file": text_file, "scene": scene[0], "tmp": tmp_path}
    filled = [argument.format(**values) for argument in arguments]

    result = run(app, *filled, "--model", "demo", "--device", "cpu")
    assert result.exit_code == exit_code, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_main_app_has_commands():
    from searchclip.cli import app as main_app

    result = CliRunner().invoke(main_app, ["locate", "--help"])
    assert result.exit_code == 0
    assert "--heatmap" in result.stdout


def test_write_explanations_names_files_by_rank(scene, tmp_path):
    from searchclip.model import load_model

    model = load_model("demo", "cpu")
    path, _ = scene
    query = model.embed_texts(["a red circle"])[0]
    written = cli_localisation.write_explanations(model, query, [str(path), str(tmp_path / "gone.png")], tmp_path / "why")

    assert [item.name for item in written] == ["01-scene.png"]
    with Image.open(written[0]) as image:
        assert image.size == (320, 256)


def test_search_explain_writes_heatmaps(scene, tmp_path):
    from conftest import invoke

    path, _ = scene
    index_dir = tmp_path / "index"
    indexed = invoke("index", str(path.parent), "--model", "demo", "--index", str(index_dir), "--quiet")
    assert indexed.returncode == 0, indexed.stderr

    outside = tmp_path / "why"
    result = invoke("search", "a blue star", "-k", "1", "--index", str(index_dir), "--explain", str(outside))
    assert result.returncode == 0, result.stderr
    assert "inside the indexed folder" not in result.stderr
    with Image.open(outside / "01-scene.png") as image:
        assert image.size == (320, 256)

    empty = invoke("search", "a blue star", "--index", str(index_dir), "--explain", "")
    assert empty.returncode == 2
    assert "--explain needs a folder" in empty.stderr

    inside = path.parent / "why"
    result = invoke("search", "a blue star", "-k", "1", "--index", str(index_dir), "--explain", str(inside))
    assert result.returncode == 0, result.stderr
    assert f"inside the indexed folder {path.parent}" in result.stderr
    assert (inside / "01-scene.png").is_file()


def test_grid_alone_drops_larger_default_windows(app, scene):
    path, _ = scene
    result = run(app, "locate", path, "a red circle", "--grid", "4", "--model", "demo", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["map_size"] == [4, 5]

    explicit = run(app, "locate", path, "a red circle", "--grid", "4", "--windows", "2,6", "--model", "demo", "--device", "cpu")
    assert explicit.exit_code == 2
    assert "larger than" in explicit.stderr


def test_empty_inputs_named(app, tmp_path):
    empty_file = tmp_path / "empty.png"
    empty_file.touch()
    result = run(app, "locate", empty_file, "a red circle", "--model", "demo", "--device", "cpu")
    assert result.exit_code == 1
    assert "empty file (0 bytes)" in result.stderr

    from searchclip.localisation import locate
    from searchclip.model import load_model
    from searchclip.errors import UsageError

    with pytest.raises(UsageError, match="0x0 pixels is empty"):
        locate(load_model("demo", "cpu"), Image.new("RGB", (0, 0)), "a red circle")
