"""The `locate` and `detect` commands, and heatmaps for `search --explain`.

The main app adds the commands with `register(app)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import typer

from . import drawing, localisation
from .errors import ImageError, SearchclipError, UsageError
from .localisation import (
    DEFAULT_GRID,
    DEFAULT_MIN_SCORE,
    DEFAULT_NMS_IOU,
    DEFAULT_STRIDE,
    DEFAULT_THRESHOLD,
    DEFAULT_DETECT_WINDOW_SIZES,
    DEFAULT_WINDOW_SIZES,
    MAX_CANDIDATES_PER_LABEL,
    WindowSettings,
    count_crops,
)
from .model import DEFAULT_MODEL, DEMO_MODEL, ClipModel, load_model

_DEFAULT_WINDOWS = ",".join(str(size) for size in DEFAULT_WINDOW_SIZES)
_DEFAULT_DETECT_WINDOWS = ",".join(str(size) for size in DEFAULT_DETECT_WINDOW_SIZES)

MODEL_HELP = f"CLIP model: a Hugging Face hub id, a folder saved with save_pretrained, or {DEMO_MODEL} for the bundled demo model."
DEVICE_HELP = "Torch device to run the model on: cpu, cuda or cuda:N; auto picks cuda when available."
GRID_HELP = "Cells along the picture's shorter side; windows are placed on this grid. Crops grow with its square."
WINDOWS_HELP = "Window sides in cells, comma-separated; each size slides over the whole grid."
STRIDE_HELP = "Step between neighbouring windows, in cells."
THRESHOLD_HELP = (
    "Fraction (0 to 1] of the score map's range, from its minimum to its peak, that a cell needs to be "
    "inside the first box, before refinement."
)
REFINE_HELP = (
    "Search a square region twice the size of each first box again, with finer windows, for tighter edges. "
    "--no-refine skips it and its crops."
)


def register(app: typer.Typer) -> None:
    """Add the `locate` and `detect` commands to a typer app."""
    app.command("locate", help=_locate_help())(locate)
    app.command("detect", help=_detect_help())(detect)


def locate(
    photo: Path = typer.Argument(..., help="Picture to search in.", show_default=False),
    text: str = typer.Argument(..., help='What to find, for example "an electric violin".', show_default=False),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the picture with the score map blended over it and the box drawn to this file (.png or .jpg), at the picture's size.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with box, score, picture size and map size."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    grid: int = typer.Option(DEFAULT_GRID, "--grid", help=GRID_HELP),
    windows: str = typer.Option(_DEFAULT_WINDOWS, "--windows", help=WINDOWS_HELP),
    stride: int = typer.Option(DEFAULT_STRIDE, "--stride", help=STRIDE_HELP),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help=THRESHOLD_HELP),
    refine: bool = typer.Option(True, "--refine/--no-refine", help=REFINE_HELP),
) -> None:
    with _user_errors():
        settings = _settings(grid, windows, stride, _DEFAULT_WINDOWS)
        if heatmap is not None:
            drawing.check_output_path(heatmap)
        image = localisation.load_image(photo)
        clip = load_model(model, device)
        result = localisation.locate(clip, image, text, settings=settings, threshold=threshold, refine=refine)
        if heatmap is not None:
            drawing.save_image(drawing.render_heatmap(image, result.heatmap, result.box), heatmap)

    x0, y0, x1, y1 = result.box
    if as_json:
        rows, columns = result.heatmap.shape
        record = {
            "photo": str(photo),
            "text": text,
            "box": [x0, y0, x1, y1],
            "score": round(result.score, 6),
            "picture_size": list(result.picture_size),
            "map_size": [rows, columns],
        }
        typer.echo(json.dumps(record, ensure_ascii=False))
    else:
        typer.echo(f"box {x0},{y0},{x1},{y1}  score {result.score:.4f}")


def detect(
    photo: Path = typer.Argument(..., help="Picture to search in.", show_default=False),
    labels: str = typer.Option(..., "--labels", help='What to find, comma-separated, for example "cat,dog,bicycle".', show_default=False),
    min_score: float = typer.Option(DEFAULT_MIN_SCORE, "--min-score", help="Lowest probability (0 to 1) that a box shows its label rather than another label or the background."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the picture with labelled boxes to this file (.png or .jpg), at the picture's size.", show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per detection, one a line."),
    nms_iou: float = typer.Option(DEFAULT_NMS_IOU, "--nms-iou", help="Intersection over union (0 to 1) above which the weaker of two boxes of one label is dropped."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help=MODEL_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    grid: int = typer.Option(DEFAULT_GRID, "--grid", help=GRID_HELP),
    windows: str = typer.Option(_DEFAULT_DETECT_WINDOWS, "--windows", help=WINDOWS_HELP),
    stride: int = typer.Option(DEFAULT_STRIDE, "--stride", help=STRIDE_HELP),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, "--threshold", help=THRESHOLD_HELP),
    refine: bool = typer.Option(True, "--refine/--no-refine", help=REFINE_HELP),
) -> None:
    with _user_errors():
        settings = _settings(grid, windows, stride, _DEFAULT_DETECT_WINDOWS)
        names = [label.strip() for label in labels.split(",")] if labels.strip() else []
        if out is not None:
            drawing.check_output_path(out)
        image = localisation.load_image(photo)
        clip = load_model(model, device)
        detections = localisation.detect(
            clip, image, names, settings=settings, min_score=min_score,
            nms_iou=nms_iou, threshold=threshold, refine=refine,
        )
        if out is not None:
            drawing.save_image(drawing.render_detections(image, detections), out)

    if not detections:
        typer.echo(f"no box scored at least {min_score} for any of the labels", err=True)
    for detection in detections:
        x0, y0, x1, y1 = detection.box
        if as_json:
            record = {"photo": str(photo), "label": detection.label, "box": [x0, y0, x1, y1], "score": round(detection.score, 6)}
            typer.echo(json.dumps(record, ensure_ascii=False))
        else:
            typer.echo(f"{detection.label}\tbox {x0},{y0},{x1},{y1}  score {detection.score:.4f}")


def write_explanations(
    model: ClipModel, query: np.ndarray, paths: Sequence[str], folder: Path, indexed_roots: Sequence[str] = ()
) -> list[Path]:
    """Write one heatmap per search result into `folder`, named by rank and file name.

    A result whose file can no longer be read is reported on stderr and
    skipped, so one moved photo does not lose the other explanations. A
    warning is printed when `folder` lies inside one of `indexed_roots`,
    because the next index run would then index the heatmaps as photos.

    Raises:
        SearchclipError: `folder` cannot be created.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SearchclipError(f"--explain {folder}: could not create the folder ({error.strerror or error})") from None

    resolved = folder.resolve()
    for root in indexed_roots:
        if resolved == Path(root) or Path(root) in resolved.parents:
            typer.echo(
                f"warning: {folder} is inside the indexed folder {root}, so the next index run will index "
                f"these heatmaps too; write them elsewhere or add --exclude {resolved.name!r} when indexing",
                err=True,
            )
            break

    written = []
    for rank, path in enumerate(paths, start=1):
        out_path = folder / f"{rank:02d}-{Path(path).stem}.png"
        try:
            localisation.explain(model, path, query, out_path)
        except ImageError as error:
            typer.echo(f"warning: no explanation for result {rank}: {error}", err=True)
            continue
        written.append(out_path)
    typer.echo(f"wrote {len(written)} explanation heatmaps to {folder}", err=True)
    return written


class _user_errors:
    """Print a `SearchclipError` as one `error:` line on stderr and exit with its code."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, SearchclipError):
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code)
        return False


def _settings(grid: int, windows: str, stride: int, default_windows: str) -> WindowSettings:
    try:
        sizes = tuple(int(part) for part in windows.split(","))
    except ValueError:
        raise UsageError(
            f"--windows {windows!r} is invalid; give window sides in cells, comma-separated, for example 1,2,3"
        ) from None
    if windows == default_windows and grid >= 1:
        # Default sizes larger than a smaller --grid are dropped, so --grid
        # alone works; sizes the user gave are checked as given.
        sizes = tuple(size for size in sizes if size <= grid)
    return WindowSettings(grid=grid, window_sizes=sizes, stride=stride)


def _locate_help() -> str:
    square = count_crops(1000, 1000)
    wide = count_crops(1500, 1000)
    refinement = square - count_crops(1000, 1000, refine=False)
    return (
        "Find where TEXT appears in PHOTO and print its box in pixels (x0,y0,x1,y1, ends exclusive) "
        "and the cosine similarity of that box to TEXT.\n\n"
        'Example: searchclip locate violin.jpg "an electric violin" --heatmap map.png\n\n'
        f"Cost: each crop is one picture through the vision model. With the default windows a square "
        f"picture takes {square} crops and a 3:2 one {wide}; refinement accounts for {refinement} of them."
    )


def _detect_help() -> str:
    settings = WindowSettings(window_sizes=DEFAULT_DETECT_WINDOW_SIZES)
    windows = count_crops(1000, 1000, settings, refine=False) - 1
    refinement = count_crops(1000, 1000, settings) - windows - 1
    return (
        "Find every region of PHOTO that shows one of --labels and print one line per box: label, "
        "box in pixels (x0,y0,x1,y1, ends exclusive) and probability.\n\n"
        'Example: searchclip detect street.jpg --labels "cat,dog,bicycle" --out boxes.png\n\n'
        f"Cost: each crop is one picture through the vision model. With the default windows a square "
        f"picture takes {windows} crops, plus one per candidate box (at most {MAX_CANDIDATES_PER_LABEL} "
        f"per label), plus {refinement + 1} per detection to refine and re-score it."
    )
