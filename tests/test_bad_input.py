"""Bad files and folders never stop indexing: each is skipped with one warning line.

Each kind of bad input is indexed through the Python API next to a good file.
One run of the real command over a folder that contains every kind at once
checks the output a user gets: one warning line per skipped file, the summary
and the exit code.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import make_photo, run_searchclip
from searchclip.errors import UsageError
from searchclip.indexing import IndexReport, index_paths
from searchclip.storage import Index
from searchclip.walking import display_path

SUMMARY = re.compile(r"indexed (\d+), copies (\d+), unchanged (\d+), moved (\d+), removed (\d+), skipped (\d+)")


def index_folder(folder: Path, index_dir: Path, model: str, **options) -> IndexReport:
    return index_paths([folder], index_dir, model=model, workers=2, **options)


def indexed_paths(index_dir: Path) -> set[str]:
    index = Index.open(index_dir)
    try:
        return {record.path for record in index.records_under(os.sep)}
    finally:
        index.close()


def skipped_reasons(report: IndexReport) -> dict[str, list[str]]:
    """Map each skipped path to its reasons. A path skipped twice has two."""
    reasons: dict[str, list[str]] = {}
    for skipped in report.skipped:
        reasons.setdefault(skipped.path, []).append(skipped.reason)
    return reasons


def assert_only_skipped(report: IndexReport, path: Path, reason_part: str) -> None:
    reasons = skipped_reasons(report)
    assert list(reasons) == [str(path)], f"skipped {reasons}"
    assert len(reasons[str(path)]) == 1
    assert reason_part in reasons[str(path)][0]


def write_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """Write a valid PNG whose header claims `width` x `height` pixels, in under 100 bytes."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    # The IHDR chunk follows the 8-byte signature: length, type, then width and height.
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def write_truncated(path: Path, image_format: str) -> Path:
    """Write a picture with detail and keep only the first half of its bytes."""
    buffer = io.BytesIO()
    pixels = random.Random(0).randbytes(96 * 64 * 3)
    Image.frombytes("RGB", (96, 64), pixels).save(buffer, format=image_format)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def write_random(path: Path, size: int = 4096) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(1).randbytes(size))
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """A photo folder that contains one good picture, `good.jpg`."""
    make_photo(tmp_path / "photos" / "good.jpg", "green")
    return tmp_path / "photos"


@pytest.fixture
def index_dir(tmp_path) -> Path:
    return tmp_path / "index"


def test_zero_byte_file(folder, index_dir, tiny_model):
    (folder / "empty.jpg").touch()

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "empty.jpg", "empty file (0 bytes)")


def test_truncated_jpeg(folder, index_dir, tiny_model):
    write_truncated(folder / "cut.jpg", "JPEG")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "cut.jpg", "truncated")
    assert indexed_paths(index_dir) == {str(folder / "good.jpg")}


def test_truncated_png(folder, index_dir, tiny_model):
    write_truncated(folder / "cut.png", "PNG")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "cut.png", "truncated")


def test_corrupt_data(folder, index_dir, tiny_model):
    write_random(folder / "noise.jpg")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "noise.jpg", "not an image")


def test_corrupt_jpeg_body(folder, index_dir, tiny_model):
    # A real JPEG header followed by random bytes in place of the scan data.
    path = make_photo(folder / "scrambled.jpg", "red", size=(96, 64))
    data = path.read_bytes()
    path.write_bytes(data[:200] + random.Random(2).randbytes(len(data) - 200))

    report = index_folder(folder, index_dir, tiny_model)

    # libjpeg may decode a scrambled scan to noise or reject it, and either way the run goes on.
    assert report.indexed + len(report.skipped) == 2
    assert list(skipped_reasons(report)) in ([], [str(path)])
    assert str(folder / "good.jpg") in indexed_paths(index_dir)


def test_text_with_image_suffix(folder, index_dir, tiny_model):
    (folder / "notes.png").write_text("not a picture\n" * 20)

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "notes.png", "not an image Pillow can read")


def test_png_named_jpg(folder, index_dir, tiny_model):
    make_photo(folder / "really-a-png.jpg", "blue", format="PNG")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 2
    assert report.skipped == []
    index = Index.open(index_dir)
    try:
        record = index.record_by_path(str(folder / "really-a-png.jpg"))
    finally:
        index.close()
    assert record is not None
    assert record.format == "PNG"


def test_broken_symlink(folder, index_dir, tiny_model):
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "gone.jpg", "broken symbolic link")


def test_symlink_cycle(folder, index_dir, tiny_model):
    make_photo(folder / "sub" / "blue.jpg", "blue")
    (folder / "self").symlink_to(folder)
    (folder / "sub" / "parent").symlink_to(folder)

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 2
    assert report.copied == 0
    assert report.skipped == []
    assert indexed_paths(index_dir) == {str(folder / "good.jpg"), str(folder / "sub" / "blue.jpg")}


def test_symlink_to_file_loop(folder, index_dir, tiny_model):
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / "loop.jpg", "cannot read file")


def test_decompression_bomb(folder, index_dir, tiny_model):
    bomb = write_bomb(folder / "bomb.png")
    assert bomb.stat().st_size < 100

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    # Decoding this file would fail as truncated, so a megapixel reason shows that
    # the limit was checked on the header alone.
    assert_only_skipped(report, bomb, "100000x100000 is 10000.0 megapixels")
    reason = report.skipped[0].reason
    assert "limit of 150" in reason
    assert "--max-megapixels" in reason


def test_max_megapixels_small(folder, index_dir, tiny_model):
    report = index_folder(folder, index_dir, tiny_model, max_megapixels=0.001)

    assert report.indexed == 0
    assert_only_skipped(report, folder / "good.jpg", "64x48 is 0.0031 megapixels")
    reason = report.skipped[0].reason
    assert "limit of 0.001" in reason
    assert "--max-megapixels" in reason


NAMES = ["two words.jpg", "line\nbreak.jpg", "tab\there.jpg", "café 写真.png", "smile 🙂.jpg", " leading space.jpg"]


def test_unusual_names(folder, index_dir, tiny_model):
    for number, name in enumerate(NAMES):
        make_photo(folder / name, "blue", size=(40 + number, 30))

    report = index_folder(folder, index_dir, tiny_model)

    assert report.skipped == []
    assert report.indexed == 1 + len(NAMES)
    assert indexed_paths(index_dir) == {str(folder / name) for name in ["good.jpg", *NAMES]}


def test_name_not_utf8(folder, index_dir, tiny_model):
    name = os.fsdecode(b"caf\xe9.jpg")
    make_photo(folder / name, "blue")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert_only_skipped(report, folder / name, "not valid UTF-8")
    assert display_path(str(folder / name)).isprintable()


def test_missing_root(tmp_path, index_dir, tiny_model):
    missing = tmp_path / "no such folder"

    with pytest.raises(UsageError) as caught:
        index_paths([missing], index_dir, model=tiny_model)

    assert str(caught.value) == f"path not found: {missing}; check the folder or file name"
    assert not index_dir.exists()


def test_hidden_skipped_by_default(folder, index_dir, tiny_model):
    make_photo(folder / ".thumbnails" / "small.jpg", "blue")
    make_photo(folder / ".hidden.jpg", "red")

    report = index_folder(folder, index_dir, tiny_model)

    assert report.indexed == 1
    assert report.skipped == []
    assert indexed_paths(index_dir) == {str(folder / "good.jpg")}


def test_hidden_included(folder, index_dir, tiny_model):
    make_photo(folder / ".thumbnails" / "small.jpg", "blue")
    make_photo(folder / ".hidden.jpg", "red")

    report = index_folder(folder, index_dir, tiny_model, include_hidden=True)

    assert report.indexed == 3
    assert indexed_paths(index_dir) == {
        str(folder / "good.jpg"), str(folder / ".thumbnails" / "small.jpg"), str(folder / ".hidden.jpg"),
    }


def test_exclude_globs(folder, index_dir, tiny_model):
    make_photo(folder / "raw" / "frame.jpg", "blue")
    write_random(folder / "raw" / "broken.jpg")
    make_photo(folder / "icon.png", "red")
    make_photo(folder / "keep" / "icon.jpg", "yellow")

    report = index_folder(folder, index_dir, tiny_model, exclude=["raw", "*.png"])

    assert report.skipped == []
    assert indexed_paths(index_dir) == {str(folder / "good.jpg"), str(folder / "keep" / "icon.jpg")}


def test_exclude_full_path(folder, index_dir, tiny_model):
    make_photo(folder / "a" / "photo.jpg", "blue")
    make_photo(folder / "b" / "photo.jpg", "red")

    report = index_folder(folder, index_dir, tiny_model, exclude=[str(folder / "a" / "*")])

    assert report.indexed == 2
    assert indexed_paths(index_dir) == {str(folder / "good.jpg"), str(folder / "b" / "photo.jpg")}


def test_previous_images_kept(folder, index_dir, tiny_model):
    make_photo(folder / "sub" / "blue.png", "blue")
    make_photo(folder / "changed.jpg", "red")
    first = index_folder(folder, index_dir, tiny_model)
    assert first.indexed == 3
    before = indexed_paths(index_dir)

    (folder / "empty.jpg").touch()
    write_truncated(folder / "cut.jpg", "JPEG")
    write_random(folder / "noise.png")
    write_bomb(folder / "bomb.png")
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")
    # A file indexed before that is now corrupt keeps its earlier entry.
    write_truncated(folder / "changed.jpg", "JPEG")
    second = index_folder(folder, index_dir, tiny_model)

    assert second.indexed == 0
    assert second.unchanged == 2
    assert second.removed == 0
    assert len(second.skipped) == 6
    assert indexed_paths(index_dir) == before


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_one_warning_per_skip(folder, index_dir, tiny_model, caplog):
    (folder / "empty.jpg").touch()
    write_random(folder / "noise.jpg")
    write_bomb(folder / "bomb.png")

    # A handler on the logger itself receives its records even where the command
    # line, run in this process by another test, stopped their propagation.
    collect = _Collect()
    logger = logging.getLogger("searchclip.indexing")
    logger.addHandler(collect)
    try:
        with caplog.at_level(logging.WARNING, logger="searchclip.indexing"):
            report = index_folder(folder, index_dir, tiny_model)
    finally:
        logger.removeHandler(collect)

    warnings = collect.messages
    assert len(warnings) == 3
    for skipped in report.skipped:
        lines = [line for line in warnings if skipped.path in line]
        assert lines == [f"skipped {skipped.path}: {skipped.reason}"]


# --- the real command over a folder that contains every kind of bad input -----------

# Mode 000 does not stop root from reading. The command then runs as root without
# the capabilities that bypass file modes (CAP_DAC_OVERRIDE=1, CAP_DAC_READ_SEARCH=2),
# so the kernel checks mode 000 as it would for any user. Dropping them from
# the bounding set before exec keeps them out of the new program unless the
# inheritable set contains them, so `command_run` probes whether a read fails.
DROP_FILE_OVERRIDES = """
import ctypes, os, sys
PR_CAPBSET_DROP = 24
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):
    if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
        sys.exit(f"cannot drop capability {capability}: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def run_without_root_overrides(*args: str) -> subprocess.CompletedProcess:
    """Run Python with `args` so that file modes apply to it, even when the tests run as root."""
    prefix = [sys.executable]
    if os.geteuid() == 0:
        prefix = [sys.executable, "-c", DROP_FILE_OVERRIDES]
    return subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=300)


@dataclass
class CommandRun:
    result: subprocess.CompletedProcess
    folder: Path
    index_dir: Path
    modes_enforced: bool  # whether mode 000 stopped the command from reading
    expected_skips: dict[str, str]  # displayed path -> part of the reason

    @property
    def warnings(self) -> list[str]:
        return [line for line in self.result.stderr.splitlines() if line.startswith("warning: ")]


@pytest.fixture(scope="module")
def command_run(tmp_path_factory, tiny_model) -> CommandRun:
    """Index a folder of good pictures, add every kind of bad input, and run `searchclip index` over it."""
    base = tmp_path_factory.mktemp("command")
    folder = base / "photos"
    index_dir = base / "index"
    make_photo(folder / "good.jpg", "green", size=(64, 48))
    make_photo(folder / "locked.jpg", "red", size=(65, 48))
    make_photo(folder / "locked folder" / "kept.jpg", "blue", size=(66, 48))
    index_folder(folder, index_dir, tiny_model)

    make_photo(folder / "two words.jpg", "yellow", size=(67, 48))
    make_photo(folder / "café 写真.png", "red", size=(68, 48))
    make_photo(folder / "line\nbreak.jpg", "blue", size=(69, 48))
    make_photo(folder / "really-a-png.jpg", "green", size=(70, 48), format="PNG")
    make_photo(folder / ".hidden" / "secret.jpg", "red", size=(71, 48))
    write_random(folder / "raw" / "broken.jpg")
    (folder / "self").symlink_to(folder)

    bad = {
        "bad\nname.jpg": "not an image",
        "empty.jpg": "empty file (0 bytes)",
        "cut.jpg": "truncated",
        "cut.png": "truncated",
        "noise.jpg": "not an image",
        "notes.png": "not an image",
        "gone.jpg": "broken symbolic link",
        "bomb.png": "over the limit of 1; raise --max-megapixels",
        "large.jpg": "1200x1000 is 1.2 megapixels, over the limit of 1; raise --max-megapixels",
        "unreadable.jpg": "cannot read file (Permission denied)",
        "locked.jpg": "cannot read file (Permission denied)",
        "locked folder": "cannot list folder (Permission denied)",
    }
    write_random(folder / "bad\nname.jpg")
    (folder / "empty.jpg").touch()
    write_truncated(folder / "cut.jpg", "JPEG")
    write_truncated(folder / "cut.png", "PNG")
    write_random(folder / "noise.jpg")
    (folder / "notes.png").write_text("not a picture\n")
    (folder / "gone.jpg").symlink_to(folder / "deleted.jpg")
    write_bomb(folder / "bomb.png")
    Image.new("RGB", (1200, 1000), (200, 100, 50)).save(folder / "large.jpg")
    make_photo(folder / "unreadable.jpg", "yellow", size=(72, 48))

    locked = [folder / "unreadable.jpg", folder / "locked.jpg", folder / "locked folder"]
    # A new mtime makes the indexed file count as changed, so the run must read it.
    os.utime(folder / "locked.jpg", (1_700_000_000, 1_700_000_000))
    for path in locked:
        path.chmod(0)
    try:
        probe = run_without_root_overrides("-c", "import sys; open(sys.argv[1], 'rb')", str(folder / "unreadable.jpg"))
        modes_enforced = "PermissionError" in probe.stderr
        result = run_without_root_overrides(
            "-m", "searchclip", "index", str(folder), "--index", str(index_dir), "--model", tiny_model,
            "--exclude", "raw", "--max-megapixels", "1",
        )
    finally:
        for path in locked:
            path.chmod(0o755)

    if not modes_enforced:
        for name in ("unreadable.jpg", "locked.jpg", "locked folder"):
            del bad[name]
    expected = {display_path(str(folder / name)): reason for name, reason in bad.items()}
    return CommandRun(result, folder, index_dir, modes_enforced, expected)


def test_command_exits_zero(command_run):
    assert "Traceback" not in command_run.result.stderr
    assert command_run.result.returncode == 0, command_run.result.stderr


def test_command_one_warning_per_file(command_run):
    warnings = command_run.warnings
    for path, reason in command_run.expected_skips.items():
        lines = [line for line in warnings if line.startswith(f"warning: skipped {path}: ")]
        assert len(lines) == 1, f"{path!r} in {warnings}"
        assert reason in lines[0]
    assert len(warnings) == len(command_run.expected_skips), "\n".join(warnings)


def test_command_lines_whole(command_run):
    # A newline in a file name would start a line with a fragment of that name.
    known = ("index: ", "warning: ", "indexing: ", "indexed ")
    for line in command_run.result.stderr.splitlines():
        assert line.startswith(known), f"unexpected line {line!r}"
    assert display_path(str(command_run.folder / "bad\nname.jpg")).endswith("bad\\nname.jpg")


def test_command_summary(command_run):
    last = command_run.result.stderr.splitlines()[-1]
    match = SUMMARY.fullmatch(last)
    assert match, f"last line {last!r}"
    indexed, copies, unchanged, moved, _removed, skipped = map(int, match.groups())
    # The new files are two words, café, line break and the PNG named .jpg, plus
    # unreadable.jpg where file modes cannot stop the command.
    assert indexed == 4 + (0 if command_run.modes_enforced else 1)
    assert copies == 0
    assert moved == 0
    assert unchanged == (1 if command_run.modes_enforced else 3)
    assert skipped == len(command_run.expected_skips)


def test_command_indexes_good_files(command_run):
    folder = command_run.folder
    paths = indexed_paths(command_run.index_dir)

    for name in ["good.jpg", "two words.jpg", "café 写真.png", "line\nbreak.jpg", "really-a-png.jpg"]:
        assert str(folder / name) in paths
    assert str(folder / ".hidden" / "secret.jpg") not in paths
    assert not any("/self/" in path for path in paths)


def test_command_unreadable_file(command_run):
    if not command_run.modes_enforced:
        pytest.skip("file mode 000 does not stop reading here, even without root's overrides")
    paths = indexed_paths(command_run.index_dir)

    assert str(command_run.folder / "unreadable.jpg") not in paths
    # Indexed before it became unreadable, so its entry stays.
    assert str(command_run.folder / "locked.jpg") in paths


def test_command_unlistable_folder(command_run):
    if not command_run.modes_enforced:
        pytest.skip("file mode 000 does not stop reading here, even without root's overrides")
    paths = indexed_paths(command_run.index_dir)

    assert str(command_run.folder / "locked folder" / "kept.jpg") in paths


def test_command_missing_root(tmp_path, tiny_model):
    missing = tmp_path / "no such folder"

    result = run_searchclip("index", str(missing), "--index", str(tmp_path / "index"), "--model", tiny_model)

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: path not found: {missing}; check the folder or file name"]
