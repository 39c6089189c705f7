"""Shared fixtures: a tiny random CLIP, picture folders and CLI runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tiny_model import build_tiny_clip

ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the model hub: a closed local port stands in for it.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("SEARCHCLIP_INDEX", None)
# Idle OpenMP threads sleep instead of spinning. With the default, torch in
# this process and in the CLI subprocesses that tests start slowed each other
# down on a 2-core machine (a localisation test took 48 s instead of 31 s
# beside one busy process). torch reads it when it is first imported, later.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a random CLIP: fast, for tests where meaning does not matter."""
    return str(build_tiny_clip(tmp_path_factory.mktemp("tiny-clip")))


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (240, 220, 20)}


def make_photo(path: Path, colour: str = "red", size: tuple[int, int] = (64, 48), format: str | None = None) -> Path:
    """Write a small picture: a coloured square on grey, so copies of one colour are byte-identical."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (128, 128, 128))
    w, h = size
    image.paste(COLOURS.get(colour, (0, 0, 0)), (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    image.save(path, format=format)
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of eight distinct small photos, two in a subfolder."""
    folder = tmp_path / "photos"
    for i, colour in enumerate(COLOURS):
        make_photo(folder / f"{colour}.jpg", colour, size=(64 + i, 48))
        make_photo(folder / f"{colour}.png", colour, size=(48, 64 + i))
    make_photo(folder / "sub" / "deep red.jpg", "red", size=(80, 60))
    make_photo(folder / "sub" / "deep blue.png", "blue", size=(60, 80))
    return folder


def run_searchclip(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the `searchclip` command in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "searchclip", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


class Invocation:
    """Outcome of `invoke`, shaped like `subprocess.CompletedProcess`."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def invoke(*args: str, env: dict | None = None) -> Invocation:
    """Run the `searchclip` command in this process: fast, since loaded models are reused."""
    from typer.testing import CliRunner

    from searchclip.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Invocation(result.exit_code, result.stdout, result.stderr)
