"""The `searchclip` command: argument parsing and output over the Python API."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import __version__
from .errors import SearchclipError, UsageError
from .images import DEFAULT_MAX_MEGAPIXELS
from .model import DEFAULT_MODEL, DEFAULT_TEMPLATES
from .storage import default_index_dir
from .walking import display_path

app = typer.Typer(
    help="Local image search with CLIP: index photo folders, search by text or image, label and locate objects.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("searchclip")

INDEX_HELP = "Index folder. Default: $SEARCHCLIP_INDEX, else indexes/default under the current folder."
MODEL_HELP = (
    f"Hugging Face CLIP model id, a folder saved with save_pretrained, or 'demo' for the bundled model. "
    f"Default: the index's model; for a new index {DEFAULT_MODEL}."
)
DEVICE_HELP = "Torch device: cpu, cuda or cuda:N. Default: cuda when available, else cpu."
MEGAPIXELS_HELP = "Largest picture to decode, in megapixels; larger files are skipped to protect memory."

IndexOption = typer.Option(None, "--index", help=INDEX_HELP, show_default=False)
ModelOption = typer.Option(None, "--model", help=MODEL_HELP, show_default=False)
DeviceOption = typer.Option(None, "--device", help=DEVICE_HELP, show_default=False)
MegapixelsOption = typer.Option(DEFAULT_MAX_MEGAPIXELS, "--max-megapixels", help=MEGAPIXELS_HELP)
TemplateOption = typer.Option(
    None, "--template", help="Prompt template with {} for the label; repeat to average several. "
    f"Default: {' | '.join(DEFAULT_TEMPLATES)}", show_default=False,
)


def main() -> None:
    """Entry point of the console script."""
    # Die quietly like other Unix tools when a pipe reader such as `head`
    # exits early, instead of reporting a broken pipe.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()


def user_errors(command: Callable) -> Callable:
    """Print a `SearchclipError` as one line on stderr and exit with its code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SearchclipError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; what was committed is kept, and the next run resumes", err=True)
            raise typer.Exit(130) from None

    return wrapper


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send library logs to stderr: warnings by default, info with -v, errors only with --quiet."""
    level = logging.INFO
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger("searchclip")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Only searchclip's own info lines are wanted by default; libraries stay at warnings.
    for name in ("searchclip.model", "searchclip.storage"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = {logging.WARNING: "warning: ", logging.ERROR: "error: "}.get(record.levelno, "")
        return prefix + record.getMessage()


def resolve_index(index: Optional[Path]) -> Path:
    return index.expanduser() if index is not None else default_index_dir()


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    configure_logging()


@app.command("index")
@user_errors
def index_command(
    paths: List[Path] = typer.Argument(None, help="Folders and image files to index. Default: the ones indexed before.", show_default=False),
    index: Optional[Path] = IndexOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
    exclude: List[str] = typer.Option(None, "--exclude", help="Glob of file or folder names to leave out, e.g. '*.gif' or 'raw'; repeatable.", show_default=False),
    include_hidden: bool = typer.Option(False, "--include-hidden", help="Also walk folders and files whose names start with a dot."),
    max_megapixels: float = MegapixelsOption,
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per model forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Threads that read and decode files. Default: one per CPU.", show_default=False),
    commit_every: int = typer.Option(
        256, "--commit-every", min=1,
        help="Fewest images embedded between two crash-safe commits; an interrupted run redoes at most one "
        "commit. Commits are also spaced so that rewriting the vectors file takes under a tenth of the run.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors; no progress, warnings or summary."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also log moves, model loading and commits."),
) -> None:
    """Add image files and folders to an index, or bring it up to date.

    Unchanged files are skipped; changed ones are embedded again; deleted ones
    are removed; moved and copied files reuse their stored vectors.

    Examples:

        searchclip index ~/Pictures

        searchclip index sample_images --model demo --index /tmp/demo-index
    """
    from .indexing import index_paths

    configure_logging(verbose, quiet)
    folder = resolve_index(index)
    if not quiet:
        typer.echo(f"index: {folder}", err=True)
    from .progress import Progress

    progress = Progress("indexing", enabled=not quiet)
    try:
        report = index_paths(
            [str(p) for p in paths or []], folder, model=model, device=device, exclude=exclude or [],
            include_hidden=include_hidden, max_megapixels=max_megapixels, batch_size=batch_size,
            workers=workers, commit_size=commit_every, progress=progress,
        )
    finally:
        progress.close()
    if not quiet:
        typer.echo(
            f"indexed {report.indexed}, copies {report.copied}, unchanged {report.unchanged}, "
            f"moved {report.moved}, removed {report.removed}, skipped {len(report.skipped)}",
            err=True,
        )


@app.command("search")
@user_errors
def search_command(
    query: Optional[str] = typer.Argument(None, help="Text to search for; may be 'WEIGHT:TEXT'.", show_default=False),
    text: List[str] = typer.Option(None, "--text", "-t", help="Another text query part, 'TEXT' or 'WEIGHT:TEXT'; repeatable.", show_default=False),
    image: List[str] = typer.Option(None, "--image", "-i", help="Image file to search by, 'PATH' or 'WEIGHT:PATH'; need not be indexed; repeatable.", show_default=False),
    negative: List[str] = typer.Option(None, "--not", help="Text whose concept is subtracted, 'TEXT' or 'WEIGHT:TEXT'; repeatable.", show_default=False),
    k: int = typer.Option(10, "-k", "--top", help="Number of results."),
    under: Optional[Path] = typer.Option(None, "--under", help="Only images whose path lies under this folder.", show_default=False),
    min_score: Optional[float] = typer.Option(None, "--min-score", help="Only results with at least this cosine similarity (-1 to 1).", show_default=False),
    label: Optional[str] = typer.Option(None, "--label", help="Only images that `searchclip label` gave this label.", show_default=False),
    paths_only: bool = typer.Option(False, "--paths", help="Print only paths, one a line."),
    null: bool = typer.Option(False, "--null", "-0", help="Print only paths, each ended by a NUL byte instead of a newline, for xargs -0; safe for names that contain newlines."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object a line with path, score, id, width and height."),
    explain: Optional[str] = typer.Option(None, "--explain", help="Write a heatmap PNG for each result into this folder, showing which region matched.", show_default=False),
    index: Optional[Path] = IndexOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Search an index by text, by image, or by a weighted mix of both.

    Examples:

        searchclip search "a dog on a beach"

        searchclip search --image photo.jpg -k 5

        searchclip search "dog" --not "beach" --json
    """
    from .search import Searcher, parse_weighted

    if as_json and (paths_only or null):
        raise UsageError("--json cannot be combined with --paths or --null; choose one output format")
    # A Path option would turn an empty value into ".", the current folder.
    if explain is not None and not explain.strip():
        raise UsageError("--explain needs a folder; give the folder to write the heatmaps to")
    terms = ([parse_weighted(query)] if query is not None else []) + [parse_weighted(t) for t in text or []]
    terms += [parse_weighted(p, is_image=True) for p in image or []]
    negatives = [parse_weighted(n) for n in negative or []]
    if not terms:
        raise UsageError('empty query; give a text, --text or --image, e.g. searchclip search "a red car"')

    searcher = Searcher(resolve_index(index), model, device)
    try:
        vector = searcher.embed_query(terms, negatives)
        results = searcher.search_vector(vector, k, under, min_score, label)
        roots = searcher.index.roots()
    finally:
        searcher.close()

    if explain is not None:
        from .cli_localisation import write_explanations

        write_explanations(searcher.model, vector, [r.path for r in results], Path(explain).expanduser(), roots)

    if as_json:
        for r in results:
            typer.echo(json.dumps({"path": r.path, "score": round(r.score, 6), "id": r.id, "width": r.width, "height": r.height}, ensure_ascii=False))
    elif null:
        for r in results:
            typer.echo(r.path + "\0", nl=False)
    elif paths_only:
        for r in results:
            typer.echo(r.path)
    elif not results:
        typer.echo("no results", err=True)
    else:
        typer.echo(f"{'score':>7}  path")
        for r in results:
            typer.echo(f"{r.score:7.4f}  {display_path(r.path)}")


@app.command("classify")
@user_errors
def classify_command(
    photo: Path = typer.Argument(..., help="Image file to classify; it need not be indexed."),
    labels: str = typer.Option(..., "--labels", "-l", help="Comma-separated labels, e.g. 'cat,dog,car'."),
    template: List[str] = TemplateOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object a line with label and probability."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Hugging Face CLIP model id, a save_pretrained folder, or 'demo'."),
    device: Optional[str] = DeviceOption,
    max_megapixels: float = MegapixelsOption,
) -> None:
    """Classify one image among labels, without an index: best label first.

    Probabilities are a softmax over the labels at the model's logit scale.

    Example:

        searchclip classify photo.jpg --labels "cat,dog,car"
    """
    from .labels import check_labels, classify, parse_labels
    from .model import load_model

    names = parse_labels(labels)
    templates = list(template) if template else list(DEFAULT_TEMPLATES)
    check_labels(names, templates)
    scores = classify(load_model(model, device), photo, names, templates, max_megapixels)
    for score in scores:
        if as_json:
            typer.echo(json.dumps({"label": score.label, "probability": round(score.probability, 6)}, ensure_ascii=False))
        else:
            typer.echo(f"{score.probability:7.2%}  {score.label}")


@app.command("label")
@user_errors
def label_command(
    labels: Optional[str] = typer.Option(None, "--labels", "-l", help="Comma-separated labels, e.g. 'cat,dog,car'.", show_default=False),
    labels_file: Optional[Path] = typer.Option(None, "--labels-file", help="Text file with one label a line.", show_default=False),
    multi: bool = typer.Option(False, "--multi", help="Keep every label at or above --threshold instead of only the best."),
    threshold: float = typer.Option(0.5, "--threshold", help="Smallest probability kept with --multi (0 to 1)."),
    template: List[str] = TemplateOption,
    index: Optional[Path] = IndexOption,
    model: Optional[str] = ModelOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Label every image of an index and store the labels for `search --label` and `info`.

    Example:

        searchclip label --labels "cat,dog,car"
    """
    from .labels import label_index, parse_labels, read_labels_file

    if (labels is None) == (labels_file is None):
        raise UsageError("give exactly one of --labels and --labels-file")
    names = parse_labels(labels) if labels is not None else read_labels_file(labels_file)
    folder = resolve_index(index)
    typer.echo(f"index: {folder}", err=True)
    templates = list(template) if template else list(DEFAULT_TEMPLATES)
    report = label_index(folder, names, multi, threshold, templates, model, device)
    typer.echo(f"labelled {report.images} images", err=True)
    for name in names:
        typer.echo(f"{report.counts.get(name, 0):6d}  {name}")


@app.command("info")
@user_errors
def info_command(
    index: Optional[Path] = IndexOption,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show an index's model, size, labels, roots and last update."""
    from dataclasses import asdict

    from .maintenance import describe

    summary = describe(resolve_index(index))
    if as_json:
        typer.echo(json.dumps(asdict(summary), ensure_ascii=False))
        return
    typer.echo(f"index:        {summary.folder}")
    typer.echo(f"model:        {summary.model_id} (fingerprint {summary.fingerprint})")
    typer.echo(f"dimension:    {summary.dimension}")
    typer.echo(f"images:       {summary.images}")
    typer.echo(f"disk size:    {summary.disk_bytes / 1e6:.1f} MB")
    typer.echo(f"created:      {summary.created}")
    typer.echo(f"last update:  {summary.updated}")
    typer.echo("roots:" + ("" if summary.roots else "        (none)"))
    for root in summary.roots:
        typer.echo(f"  {display_path(root)}")
    typer.echo("labels:" + ("" if summary.labels else "       (none; run searchclip label)"))
    for name, count in summary.labels.items():
        typer.echo(f"  {count:6d}  {name}")


@app.command("repair")
@user_errors
def repair_command(
    index: Optional[Path] = IndexOption,
    device: Optional[str] = DeviceOption,
    max_megapixels: float = MegapixelsOption,
) -> None:
    """Make an index's FAISS file and SQLite rows agree again.

    Images without a vector are embedded again from their files; vectors
    without an image are dropped; a lost vectors.faiss is rebuilt.
    """
    from .maintenance import repair

    folder = resolve_index(index)
    typer.echo(f"index: {folder}", err=True)
    report = repair(folder, device, max_megapixels)
    typer.echo(
        f"re-embedded {report.re_embedded}, dropped {report.dropped_rows} images without files, "
        f"dropped {report.dropped_vectors} vectors without images"
    )


from . import cli_localisation  # noqa: E402  (registers onto `app`, so it comes after it)

cli_localisation.register(app)
